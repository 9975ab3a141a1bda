package fleet

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sync"

	"github.com/agentfleet/agentfleet/internal/bounded"
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
			r, err := c.guestRunner(ctx, m)
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

// prefixWriter writes whole lines with a prefix; writers sharing mu never
// interleave within a line. It holds at most bounded.Line bytes of a
// line: the rest of a longer one is dropped and the line marked.
type prefixWriter struct {
	w      io.Writer
	mu     *sync.Mutex
	prefix string
	lines  *lineWriter
}

func newPrefixWriter(w io.Writer, mu *sync.Mutex, prefix string) *prefixWriter {
	p := &prefixWriter{w: w, mu: mu, prefix: prefix}
	p.lines = newLineWriter(bounded.Line, func(line []byte, cut int64) {
		p.mu.Lock()
		fmt.Fprintf(p.w, "%s%s%s\n", p.prefix, line, cutMark(cut))
		p.mu.Unlock()
	})
	return p
}

func (p *prefixWriter) Write(b []byte) (int, error) { return p.lines.Write(b) }

// Flush writes a trailing partial line.
func (p *prefixWriter) Flush() { p.lines.Flush() }

// lineWriter splits a stream into lines (without their newline) for
// emit, holding at most max bytes of one: a guest that sends a gigabyte
// with no newline costs the host max bytes, not a gigabyte. cut is how
// many bytes of the line were dropped. emit must not keep line.
type lineWriter struct {
	max  int
	emit func(line []byte, cut int64)
	buf  []byte
	cut  int64
}

func newLineWriter(max int, emit func(line []byte, cut int64)) *lineWriter {
	return &lineWriter{max: max, emit: emit}
}

func (l *lineWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		part := p
		if i >= 0 {
			part = p[:i]
		}
		keep := min(len(part), l.max-len(l.buf))
		l.buf = append(l.buf, part[:keep]...)
		l.cut += int64(len(part) - keep)
		if i < 0 {
			break
		}
		l.emit(l.buf, l.cut)
		l.buf, l.cut = l.buf[:0], 0
		p = p[i+1:]
	}
	return n, nil
}

// Flush emits a trailing partial line.
func (l *lineWriter) Flush() {
	if len(l.buf) > 0 || l.cut > 0 {
		l.emit(l.buf, l.cut)
		l.buf, l.cut = l.buf[:0], 0
	}
}

// cutMark says a line was cut ("" when it was not).
func cutMark(cut int64) string {
	if cut == 0 {
		return ""
	}
	return fmt.Sprintf(" …[fleet: line cut, %d more bytes dropped]", cut)
}

// lockedWriter serializes writes from several streams onto one writer.
type lockedWriter struct {
	w  io.Writer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
