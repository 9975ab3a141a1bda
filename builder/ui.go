package builder

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
)

// scriptUi is the packersdk.Ui a provision script's output streams
// through: each line is shown indented under the script's name, and the
// last lines are kept so a failure can quote them.
type scriptUi struct {
	out  io.Writer
	mu   sync.Mutex
	tail []string
}

const tailLines = 15

func (u *scriptUi) line(s string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.out != nil {
		fmt.Fprintf(u.out, "    | %s\n", s)
	}
	u.tail = append(u.tail, s)
	if len(u.tail) > tailLines {
		u.tail = u.tail[len(u.tail)-tailLines:]
	}
}

// Tail returns the last lines of output.
func (u *scriptUi) Tail() string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return strings.Join(u.tail, "\n")
}

func (u *scriptUi) Ask(string) (string, error) {
	return "", errors.New("a provision script cannot ask")
}
func (u *scriptUi) Askf(string, ...any) (string, error) {
	return "", errors.New("a provision script cannot ask")
}
func (u *scriptUi) Say(s string)              { u.line(s) }
func (u *scriptUi) Sayf(f string, a ...any)   { u.line(fmt.Sprintf(f, a...)) }
func (u *scriptUi) Message(s string)          { u.line(s) }
func (u *scriptUi) Error(s string)            { u.line(s) }
func (u *scriptUi) Errorf(f string, a ...any) { u.line(fmt.Sprintf(f, a...)) }
func (u *scriptUi) Machine(string, ...string) {}
func (u *scriptUi) TrackProgress(_ string, _, _ int64, stream io.ReadCloser) io.ReadCloser {
	return stream
}
