package fleet

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/agentfleet/agentfleet/internal/execx"
	"github.com/agentfleet/agentfleet/internal/layout"
	"github.com/agentfleet/agentfleet/internal/termsafe"
)

// A boot whose sshd failed is said from the serial console, within the
// boot timeout, instead of being waited out: systemd prints the failure
// there (the images boot without "quiet").

// sshdFailed matches systemd's console line for an sshd that did not start.
var sshdFailed = regexp.MustCompile(`Failed to start (ssh|sshd|openssh-server)\.service|(ssh|sshd)\.service: (Failed with result|Start request repeated too quickly)`)

// ansiCSI is a terminal control sequence: systemd colours unit names on
// the console.
var ansiCSI = regexp.MustCompile(`\x1b\[[0-9;?]*[ -/]*[@-~]`)

// sshdGrace is how long SSH may still come up after the console said
// sshd failed (systemd restarts it a few times on failure).
const sshdGrace = 20 * time.Second

// consoleWatch reads what a booting machine's console adds, bounded per
// read, and remembers when it first said sshd failed.
type consoleWatch struct {
	path     string
	offset   int64
	carry    []byte // an unfinished last line
	failedAt time.Time
}

func newConsoleWatch(dir string) *consoleWatch {
	return &consoleWatch{path: filepath.Join(dir, layout.SerialFile)}
}

// maxConsoleRead bounds one poll: a guest flooding its console costs the
// watcher at most this per second.
const maxConsoleRead = 1 << 20

// poll reads what was added since the last call.
func (w *consoleWatch) poll(now time.Time) {
	f, err := os.Open(w.path)
	if err != nil {
		return
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() < w.offset {
		w.offset, w.carry = 0, nil // the log was rotated
	}
	if _, err := f.Seek(w.offset, io.SeekStart); err != nil {
		return
	}
	b, _ := io.ReadAll(io.LimitReader(f, maxConsoleRead))
	w.offset += int64(len(b))
	b = append(w.carry, b...)
	last := bytes.LastIndexByte(b, '\n')
	if last < 0 {
		w.carry = append(w.carry[:0], b[max(0, len(b)-4096):]...)
		return
	}
	if w.failedAt.IsZero() && sshdFailed.Match(ansiCSI.ReplaceAll(b[:last], nil)) {
		w.failedAt = now
	}
	w.carry = append([]byte(nil), b[last+1:]...)
	if len(w.carry) > 4096 {
		w.carry = w.carry[len(w.carry)-4096:]
	}
}

// sshdDead reports whether the console said sshd failed longer than the
// grace ago.
func (w *consoleWatch) sshdDead(now time.Time) bool {
	return !w.failedAt.IsZero() && now.Sub(w.failedAt) >= sshdGrace
}

// consoleTail is the last lines of a machine's console, cleaned for a
// terminal, read from at most the file's last 64 KiB.
func consoleTail(dir string, lines int) string {
	f, err := os.Open(filepath.Join(dir, layout.SerialFile))
	if err != nil {
		return ""
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > 64<<10 {
		f.Seek(fi.Size()-64<<10, io.SeekStart)
	}
	b, _ := io.ReadAll(io.LimitReader(f, 64<<10))
	// Consoles end lines with \r\n and colour unit names: both would only
	// be escaped. What else the guest wrote is made harmless below.
	t := execx.Tail(ansiCSI.ReplaceAll(bytes.ReplaceAll(b, []byte("\r"), nil), nil), lines)
	return termsafe.Text(t)
}

// errSSHDFailed: the console said the guest's sshd did not start.
var errSSHDFailed = errors.New("its sshd failed to start (the serial console says so)")

// sshdFailedError is a boot whose sshd did not start, with the console's
// last lines.
func sshdFailedError(m *Machine) error {
	tail := consoleTail(m.Dir, 15)
	if tail == "" {
		return fmt.Errorf("%s booted, but %w", m.Name, errSSHDFailed)
	}
	return fmt.Errorf("%s booted, but %w; the console's last lines:\n%s", m.Name, errSSHDFailed, indent(tail, "  "))
}

func indent(s, by string) string {
	return by + strings.ReplaceAll(s, "\n", "\n"+by)
}
