package fleet

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agentfleet/agentfleet/internal/layout"
)

func TestConsoleWatchSeesAFailedSSHD(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, layout.SerialFile)
	f, _ := os.Create(log)
	defer f.Close()
	w := newConsoleWatch(dir)
	t0 := time.Now()
	f.WriteString("[  OK  ] Started systemd-journald.service\r\n[FAILED] Failed to sta")
	w.poll(t0)
	if !w.failedAt.IsZero() {
		t.Fatal("half a line matched")
	}
	f.WriteString("rt \x1b[0;1;39mssh.service\x1b[0m - OpenBSD Secure Shell server.\r\n\x1b]0;pwned\x07\x1b[2Jevil\r\n")
	w.poll(t0.Add(time.Second))
	if w.sshdDead(t0.Add(time.Second)) {
		t.Fatal("sshd given no grace to restart")
	}
	if !w.sshdDead(t0.Add(time.Second + sshdGrace)) {
		t.Fatal("a failed sshd was not noticed")
	}
	err := sshdFailedError(&Machine{Name: "p-1", Dir: dir})
	if !errors.Is(err, errSSHDFailed) || !strings.Contains(err.Error(), "Failed to start ssh.service") {
		t.Fatalf("error = %v", err)
	}
	if strings.ContainsAny(err.Error(), "\x1b\x07\r") {
		t.Fatalf("the console's bytes reached the error raw: %q", err.Error())
	}
}

func TestConsoleWatchIgnoresOtherFailuresAndStaysBounded(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, layout.SerialFile)
	os.WriteFile(log, []byte("[FAILED] Failed to start docker.service\nsshd: listening\n"), 0o644)
	w := newConsoleWatch(dir)
	w.poll(time.Now())
	if !w.failedAt.IsZero() {
		t.Fatal("another unit's failure was taken for sshd's")
	}
	// A flood with no newline: each poll reads a bounded amount and
	// carries at most a short tail.
	f, _ := os.OpenFile(log, os.O_APPEND|os.O_WRONLY, 0)
	chunk := bytes.Repeat([]byte("A"), 1<<20)
	for i := 0; i < 8; i++ {
		f.Write(chunk)
		w.poll(time.Now())
		if len(w.carry) > 4096 {
			t.Fatalf("carry grew to %d bytes", len(w.carry))
		}
	}
	f.Close()
	// A rotated (shorter) log is read from its start.
	os.WriteFile(log, []byte("ssh.service: Start request repeated too quickly.\n"), 0o644)
	w.poll(time.Now())
	if w.failedAt.IsZero() {
		t.Fatal("a rotated log was not read again from its start")
	}
}
