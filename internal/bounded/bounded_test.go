package bounded

import (
	"bytes"
	"errors"
	"strings"
	"sync"
	"testing"
)

func TestBufferKeepsTheHeadAndCountsTheRest(t *testing.T) {
	b := NewBuffer(10)
	for i := 0; i < 1000; i++ {
		if n, err := b.Write([]byte("0123456789abcdef")); n != 16 || err != nil {
			t.Fatalf("Write = %d, %v: a full buffer must not fail the command", n, err)
		}
	}
	if b.String() != "0123456789" || !b.Truncated() {
		t.Fatalf("kept %q, truncated %v", b.String(), b.Truncated())
	}
	if err := b.Err(); !errors.Is(err, ErrTooLong) || !strings.Contains(err.Error(), "15990 more") {
		t.Fatalf("Err = %v", err)
	}
	small := NewBuffer(10)
	small.Write([]byte("12345"))
	if small.Err() != nil || small.Truncated() {
		t.Fatal("an answer that fits is not cut")
	}
}

func TestTailKeepsTheEnd(t *testing.T) {
	tl := NewTail(8)
	tl.Write([]byte("abc"))
	tl.Write([]byte("defgh"))
	if tl.String() != "abcdefgh" || tl.Truncated() {
		t.Fatalf("%q", tl.String())
	}
	tl.Write([]byte("ij"))
	if tl.String() != "cdefghij" || !tl.Truncated() {
		t.Fatalf("%q", tl.String())
	}
	tl.Write(bytes.Repeat([]byte("z"), 100))
	tl.Write([]byte("END"))
	if tl.String() != "zzzzzEND" {
		t.Fatalf("%q", tl.String())
	}
}

// A flood from two writers at once stays within the limit.
func TestConcurrentFloodStaysBounded(t *testing.T) {
	b, tl := NewBuffer(1<<10), NewTail(1<<10)
	var wg sync.WaitGroup
	chunk := bytes.Repeat([]byte("x"), 4096)
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 2000; i++ {
				b.Write(chunk)
				tl.Write(chunk)
			}
		}()
	}
	wg.Wait()
	if len(b.Bytes()) != 1<<10 || len(tl.Bytes()) != 1<<10 || cap(tl.buf) > 8<<10 {
		t.Fatalf("kept %d and %d bytes (tail capacity %d)", len(b.Bytes()), len(tl.Bytes()), cap(tl.buf))
	}
}
