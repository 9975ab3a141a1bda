package fleet

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/agentfleet/agentfleet/internal/layout"
)

// A fork of a fork links to its parent's capture, which links to the
// template: all of it stays while a grandchild runs, even with its source
// and parent gone, and each capture goes with the last disk that links
// to it.
func TestForkCapturesStayWhileAnyDiskLinksToThem(t *testing.T) {
	l := Layout{Root: t.TempDir()}
	forks := l.ForksDir("f")
	tpl := filepath.Join(l.Root, "images", "x", "v", "warm", "k", "disk.qcow2")
	mk := func(id, backing string) string {
		d := filepath.Join(forks, id)
		os.MkdirAll(d, 0o700)
		os.WriteFile(filepath.Join(d, layout.ForkBackingFile), []byte(backing+"\n"), 0o600)
		return filepath.Join(d, "disk.qcow2")
	}
	first := mk("a", tpl)
	second := mk("b", first)
	mk("c", tpl) // nobody links to it
	if got, want := diskChain(second), []string{second, first, tpl}; !reflect.DeepEqual(got, want) {
		t.Errorf("chain %v, want %v", got, want)
	}
	if got := diskChain(tpl); !reflect.DeepEqual(got, []string{tpl}) {
		t.Errorf("a template's chain: %v", got)
	}
	// A backing file outside a forks folder is not followed.
	os.WriteFile(filepath.Join(filepath.Dir(tpl), layout.ForkBackingFile), []byte("/etc/passwd\n"), 0o600)
	if got := diskChain(tpl); len(got) != 1 {
		t.Errorf("followed a backing file outside a forks folder: %v", got)
	}
	s := &State{Machines: []*Machine{{Name: "f-9", BaseImage: second}}}
	if err := pruneForkCaptures(l, "f", s); err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]bool{"a": true, "b": true, "c": false} {
		if _, err := os.Stat(filepath.Join(forks, id)); (err == nil) != want {
			t.Errorf("capture %s kept: %v, want %v", id, err == nil, want)
		}
	}
	if err := pruneForkCaptures(l, "f", &State{}); err != nil {
		t.Fatal(err)
	}
	if e, _ := os.ReadDir(forks); len(e) != 0 {
		t.Errorf("left %v", e)
	}
}
