package fleet

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/agentfleet/agentfleet/internal/guest"
)

// A guest command's error is one line that names the machine once, the
// step, the exit status and the end of stderr, however it is wrapped on
// its way to the user.
func TestGuestErrorsNameTheMachineOnce(t *testing.T) {
	c, m, g := newHostileFleet(t)
	ctx := context.Background()
	g.set(func(_ string, _, errw io.Writer) uint32 { fmt.Fprint(errw, "tmux: no server\n"); return 1 })
	err := c.Sessions().KillSession(ctx, m)
	if want := "h-1: kill the agent: exit 1: tmux: no server"; err == nil || err.Error() != want {
		t.Fatalf("kill: %v, want %q", err, want)
	}
	for _, wrapped := range []error{Named(m.Name, err), Named(m.Name, fmt.Errorf("bring in /src: %w", err))} {
		if strings.Count(wrapped.Error(), "h-1") != 1 {
			t.Fatalf("the machine is named more than once: %q", wrapped)
		}
	}
	if got := Named("h-2", err).Error(); !strings.HasPrefix(got, "h-2: h-1: ") {
		t.Fatalf("another machine's error is not named: %q", got)
	}
	if !guest.IsExit(err, 1) || guest.ExitCode(Named(m.Name, err)) != 1 {
		t.Fatalf("the exit status is lost: %v", err)
	}
	// Exit 3 of the logs script is "no session", said as such.
	g.set(func(string, io.Writer, io.Writer) uint32 { return 3 })
	if err := c.Sessions().Logs(ctx, []*Machine{m}, false, true, false, io.Discard); err == nil || err.Error() != "h-1: no session has run on this machine" {
		t.Fatalf("logs with no session: %v", err)
	}
	if err := c.Sessions().KillSession(ctx, m); err == nil || err.Error() != "h-1 has no agent session" {
		t.Fatalf("kill with no session: %v", err)
	}
}

// exec keeps a command's exit status apart from a failure to run it.
func TestExecExitStatusIsTheCommands(t *testing.T) {
	c, m, g := newHostileFleet(t)
	g.set(func(cmd string, out, errw io.Writer) uint32 {
		fmt.Fprint(out, cmd)
		fmt.Fprint(errw, "oops\n")
		return 7
	})
	var out, errOut bytes.Buffer
	rs := c.Sessions().Exec(context.Background(), []*Machine{m}, []string{"sh", "-c", "exit 7"}, nil, &out, &errOut, false)
	if rs[0].ExitCode != 7 || rs[0].Err != nil || WorstExit(rs) != 7 {
		t.Fatalf("exec of exit 7: %+v", rs[0])
	}
	if out.String() != "sh -c 'exit 7'" || errOut.String() != "oops\n" {
		t.Fatalf("exec's streams: %q %q", out.String(), errOut.String())
	}
	// A command that cannot be run has no status of its own.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	rs = c.Sessions().Exec(ctx, []*Machine{m}, []string{"true"}, nil, &out, &errOut, false)
	if rs[0].ExitCode != -1 || rs[0].Err == nil || WorstExit(rs) != 255 {
		t.Fatalf("exec that could not run: %+v", rs[0])
	}
}
