package fleet

import (
	"bytes"
	"fmt"
	"io"
	"sync"

	"github.com/agentfleet/agentfleet/internal/bounded"
)

// Writers that pass a guest's output on a line at a time: each line
// prefixed with its machine, cut at bounded.Line and marked.

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
