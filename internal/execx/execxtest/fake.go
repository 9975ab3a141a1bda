// Package execxtest provides a recording fake of execx.Runner for unit
// tests of code that shells out.
package execxtest

import (
	"context"
	"strings"
	"sync"

	"github.com/agentfleet/agentfleet/internal/execx"
)

// Fake records every command and answers through Handle (nil: every
// command succeeds with no output). Missing lists programs that are "not
// installed": running them fails as execx.Local would.
type Fake struct {
	Handle  func(c execx.Cmd) ([]byte, error)
	Missing []string

	mu    sync.Mutex
	calls []execx.Cmd
}

func (f *Fake) Run(ctx context.Context, c execx.Cmd) ([]byte, error) {
	f.mu.Lock()
	f.calls = append(f.calls, c)
	f.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	for _, m := range f.Missing {
		if m == c.Name {
			return nil, &execx.NotFoundError{Name: c.Name}
		}
	}
	if f.Handle == nil {
		return nil, nil
	}
	return f.Handle(c)
}

// Calls returns each command run so far as "name arg arg...".
func (f *Fake) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]string, len(f.calls))
	for i, c := range f.calls {
		out[i] = strings.TrimSpace(c.Name + " " + strings.Join(c.Args, " "))
	}
	return out
}
