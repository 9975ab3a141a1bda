package fleet

import (
	"strings"
	"testing"
)

// The warning about what a setup left names a few paths, cleaned of
// terminal control bytes, and says how many more there are.
func TestUntrackedListIsShortAndClean(t *testing.T) {
	for _, c := range []struct {
		paths []string
		cut   bool
		want  string
	}{
		{[]string{".venv/"}, false, ".venv/"},
		{[]string{"a", "b", "c", "d", "e", "f", "g"}, false, "a, b, c, d, e and 2 more"},
		{[]string{"a", "b"}, true, "a, b and more"},
	} {
		if got := untrackedList(c.paths, c.cut); got != c.want {
			t.Errorf("untrackedList(%q, %v) = %q, want %q", c.paths, c.cut, got, c.want)
		}
	}
	// A name cannot start a line of its own (a forged message under fleet's).
	if got := untrackedList([]string{"x\x1b]0;pwned\a\u202e.log", "y\nfleet: all clear"}, false); strings.ContainsAny(got, "\x1b\a\u202e\n\r") {
		t.Errorf("raw control bytes in %q", got)
	}
}
