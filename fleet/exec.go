package fleet

import (
	"context"
	"io"
	"sync"

	"github.com/agentfleet/agentfleet/internal/execx"
	"github.com/agentfleet/agentfleet/internal/guest"
)

// ExecResult is one machine's outcome of Exec.
type ExecResult struct {
	Machine  string
	ExitCode int
	Err      error // the command could not run (machine down, connection lost)
}

// Exec runs argv on each machine over its kept connection, in parallel.
// Arguments are shell-quoted, so each arrives in the guest exactly as
// given. With prefix, every output line is prefixed with the machine name.
func (ses Sessions) Exec(ctx context.Context, ms []*Machine, argv []string, stdin io.Reader, stdout, stderr io.Writer, prefix bool) []ExecResult {
	cmd := execx.ShellJoin(argv)
	results := make([]ExecResult, len(ms))
	var wg sync.WaitGroup
	var outMu sync.Mutex
	for i, m := range ms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = ExecResult{Machine: m.Name, ExitCode: -1}
			r, err := ses.c.Guests().guestRunner(ctx, m)
			if err != nil {
				results[i].Err = err
				return
			}
			o, e := stdout, stderr
			var po, pe *prefixWriter
			if prefix {
				po = newPrefixWriter(stdout, &outMu, m.Name+": ")
				pe = newPrefixWriter(stderr, &outMu, m.Name+": ")
				o, e = po, pe
			}
			in := stdin
			if len(ms) > 1 {
				in = nil // one stdin cannot feed several machines
			}
			err = r.Run(ctx, guest.Cmd{Step: "exec", Script: cmd, Stdin: in, Stdout: o, Stderr: e})
			if prefix {
				po.Flush()
				pe.Flush()
			}
			// A non-zero exit is the command's answer, not a failure to run it.
			if results[i].ExitCode = guest.ExitCode(err); results[i].ExitCode < 0 {
				results[i].Err = err
			}
		}()
	}
	wg.Wait()
	return results
}

// ExitStatus is the process exit status that reports a guest command's
// code: 0 only for 0, the code itself from 1 to 255, and 255 for a code
// no process can exit with (negative, or over 255: 256 would read as 0).
func ExitStatus(code int) int {
	if code < 0 || code > 255 {
		return 255
	}
	return code
}

// WorstExit is the exit status for many machines' results: the highest
// ExitStatus of them, 255 for one that could not run, 0 only when every
// command exited 0.
func WorstExit(rs []ExecResult) int {
	worst := 0
	for _, r := range rs {
		code := ExitStatus(r.ExitCode)
		if r.Err != nil {
			code = 255
		}
		worst = max(worst, code)
	}
	return worst
}
