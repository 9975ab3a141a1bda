package fleet

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sync"

	"github.com/agentfleet/agentfleet/internal/execx"
	"github.com/agentfleet/agentfleet/internal/sshx"
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
func (c *Controller) Exec(ctx context.Context, ms []*Machine, argv []string, stdin io.Reader, stdout, stderr io.Writer, prefix bool) []ExecResult {
	cmd := execx.ShellJoin(argv)
	results := make([]ExecResult, len(ms))
	var wg sync.WaitGroup
	var outMu sync.Mutex
	for i, m := range ms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = ExecResult{Machine: m.Name, ExitCode: -1}
			cl, err := c.Connect(ctx, m)
			if err != nil {
				results[i].Err = err
				return
			}
			o, e := stdout, stderr
			var po, pe *prefixWriter
			if prefix {
				po = &prefixWriter{w: stdout, mu: &outMu, prefix: m.Name + ": "}
				pe = &prefixWriter{w: stderr, mu: &outMu, prefix: m.Name + ": "}
				o, e = po, pe
			}
			in := stdin
			if len(ms) > 1 {
				in = nil // one stdin cannot feed several machines
			}
			code, err := sshx.Run(ctx, cl, cmd, in, o, e)
			if prefix {
				po.Flush()
				pe.Flush()
			}
			results[i].ExitCode, results[i].Err = code, err
		}()
	}
	wg.Wait()
	return results
}

// prefixWriter writes whole lines with a prefix; writers sharing mu never
// interleave within a line.
type prefixWriter struct {
	w      io.Writer
	mu     *sync.Mutex
	prefix string
	buf    bytes.Buffer
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.buf.Write(b)
	for {
		line, err := p.buf.ReadBytes('\n')
		if err != nil {
			p.buf.Write(line) // incomplete line: keep for later
			return len(b), nil
		}
		p.mu.Lock()
		fmt.Fprintf(p.w, "%s%s", p.prefix, line)
		p.mu.Unlock()
	}
}

// Flush writes a trailing partial line.
func (p *prefixWriter) Flush() {
	if p.buf.Len() == 0 {
		return
	}
	p.mu.Lock()
	fmt.Fprintf(p.w, "%s%s\n", p.prefix, p.buf.Bytes())
	p.mu.Unlock()
	p.buf.Reset()
}
