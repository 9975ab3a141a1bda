package main

import (
	"io"
	"os"

	"github.com/agentfleet/agentfleet/internal/termsafe"
	"golang.org/x/term"
)

// isTerminal reports whether w is a terminal (a variable so tests can
// pretend).
var isTerminal = func(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// forPerson is where guest bytes go on their way to w: cleaned by
// termsafe when w is a terminal, as they are when it is a pipe or a file
// (logs --raw | jq gets the guest's bytes). Call flush when done.
func forPerson(w io.Writer) (out io.Writer, flush func()) {
	if !isTerminal(w) {
		return w, func() {}
	}
	tw := termsafe.NewWriter(w)
	return tw, func() { _ = tw.Flush() }
}

// exitStatus is the status the process exits with for an error that
// carries code: an error never exits 0, and a code no process can exit
// with (negative, or over 255, where 256 would read as 0) is 255.
func exitStatus(code int) int {
	switch {
	case code == 0:
		return 1
	case code < 0 || code > 255:
		return 255
	}
	return code
}
