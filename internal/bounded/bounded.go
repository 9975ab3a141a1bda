// Package bounded holds what the host reads from a guest within fixed
// limits: a guest that answers with a gigabyte costs the host at most the
// limit, and the caller learns that the answer was cut.
package bounded

import (
	"errors"
	"fmt"
	"sync"
)

// Buffer keeps the first Max bytes written to it and counts the rest. It
// never fails a write, so a command's exit status is still read after
// its output overflowed. Safe for concurrent writers (stdout and stderr).
type Buffer struct {
	Max     int
	mu      sync.Mutex
	buf     []byte
	dropped int64
}

// NewBuffer returns a Buffer that keeps at most max bytes.
func NewBuffer(max int) *Buffer { return &Buffer{Max: max} }

// ErrTooLong says an answer was larger than the host reads.
var ErrTooLong = errors.New("answer too long")

// Write implements io.Writer.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	room := b.Max - len(b.buf)
	if room > len(p) {
		room = len(p)
	}
	if room > 0 {
		b.buf = append(b.buf, p[:room]...)
	}
	b.dropped += int64(len(p) - max(room, 0))
	return len(p), nil
}

// Bytes is what was kept.
func (b *Buffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]byte(nil), b.buf...)
}

// String is what was kept.
func (b *Buffer) String() string { return string(b.Bytes()) }

// Truncated reports whether anything was dropped.
func (b *Buffer) Truncated() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.dropped > 0
}

// Err is nil when everything fit, else an ErrTooLong that says by how much.
func (b *Buffer) Err() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.dropped == 0 {
		return nil
	}
	return fmt.Errorf("%w: more than %d bytes (%d more were dropped)", ErrTooLong, b.Max, b.dropped)
}

// Tail keeps the last Max bytes written to it: for stderr, whose end
// says what went wrong.
type Tail struct {
	Max     int
	mu      sync.Mutex
	buf     []byte
	dropped int64
}

// NewTail returns a Tail that keeps the last max bytes.
func NewTail(max int) *Tail { return &Tail{Max: max} }

// Write implements io.Writer.
func (t *Tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := len(p)
	if len(p) >= t.Max {
		t.dropped += int64(len(t.buf) + len(p) - t.Max)
		t.buf = append(t.buf[:0], p[len(p)-t.Max:]...)
		return n, nil
	}
	if over := len(t.buf) + len(p) - t.Max; over > 0 {
		t.dropped += int64(over)
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	t.buf = append(t.buf, p...)
	return n, nil
}

// Bytes is what was kept.
func (t *Tail) Bytes() []byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]byte(nil), t.buf...)
}

// String is what was kept.
func (t *Tail) String() string { return string(t.Bytes()) }

// Truncated reports whether the start was dropped.
func (t *Tail) Truncated() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.dropped > 0
}

// Default limits for guest answers.
const (
	// Answer is the most a small structured answer (a status file, a
	// state line, ls output) may be.
	Answer = 1 << 20
	// Stderr is how much of a guest command's stderr an error keeps.
	Stderr = 16 << 10
	// Line is the longest log line the host holds at once.
	Line = 1 << 20
)
