package builder

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"sync"
)

// scriptOutput is where a provision script's output goes: each line is
// shown indented under the script's name, and the last lines are kept so
// a failure can quote them.
type scriptOutput struct {
	out  io.Writer
	mu   sync.Mutex
	buf  bytes.Buffer
	tail []string
}

const tailLines = 15

func (u *scriptOutput) Write(b []byte) (int, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.buf.Write(b)
	for {
		i := bytes.IndexByte(u.buf.Bytes(), '\n')
		if i < 0 {
			return len(b), nil
		}
		u.line(strings.TrimRight(string(u.buf.Next(i+1)), "\r\n"))
	}
}

// Flush shows a last line that had no newline.
func (u *scriptOutput) Flush() {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.buf.Len() > 0 {
		u.line(u.buf.String())
		u.buf.Reset()
	}
}

func (u *scriptOutput) line(s string) {
	if u.out != nil {
		fmt.Fprintf(u.out, "    | %s\n", s)
	}
	u.tail = append(u.tail, s)
	if len(u.tail) > tailLines {
		u.tail = u.tail[len(u.tail)-tailLines:]
	}
}

// Tail returns the last lines of output.
func (u *scriptOutput) Tail() string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return strings.Join(u.tail, "\n")
}
