package qemu

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/agentfleet/agentfleet/internal/layout"
)

// A cold boot starts paused, so the console logger misses nothing; a
// restore is continued by its migration instead.
func TestPausedOnlyForAColdBoot(t *testing.T) {
	m := MachineArgs{Name: "p", Arch: "amd64", Accel: AccelTCG, CPUs: 1, MemoryMiB: 512, Paused: true}
	if !slices.Contains(SystemArgs(m), "-S") {
		t.Error("a cold boot with a console logger does not start paused")
	}
	m.Incoming = true
	if slices.Contains(SystemArgs(m), "-S") {
		t.Error("a restore starts paused too: it would never run")
	}
	m.Paused, m.Incoming = false, false
	if slices.Contains(SystemArgs(m), "-S") {
		t.Error("-S without a logger")
	}
}

// A guest flooding its console costs the host at most two files of
// ConsoleMax; the previous boot's console is kept as serial.log.1.
func TestConsoleLoggerCapsAndRotates(t *testing.T) {
	dir := t.TempDir()
	sock, log := filepath.Join(dir, "c.sock"), filepath.Join(dir, "serial.log")
	os.WriteFile(log, []byte("the previous boot\n"), 0o600)
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	done := make(chan error, 1)
	ready := make(chan struct{})
	go func() { done <- ServeConsole(context.Background(), sock, log, 64<<10, func() { close(ready) }) }()
	qemu, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	<-ready
	if b, _ := os.ReadFile(log + ".1"); string(b) != "the previous boot\n" {
		t.Fatalf("the previous boot's console: %q", b)
	}
	chunk := bytes.Repeat([]byte("flood "), 1000)
	for i := 0; i < 200; i++ { // 1.2 MB against a 64 KiB cap
		if _, err := qemu.Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
	qemu.Write([]byte("\nthe last line\n"))
	qemu.Close() // QEMU exited
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the logger did not exit with QEMU")
	}
	cur, _ := os.Stat(log)
	old, _ := os.Stat(log + ".1")
	if cur == nil || old == nil || cur.Size() > 64<<10 || old.Size() != 64<<10 {
		t.Fatalf("sizes: %v %v", cur, old)
	}
	if b, _ := os.ReadFile(log); !bytes.HasSuffix(b, []byte("the last line\n")) {
		t.Fatalf("the newest output is not in serial.log: ...%q", b[max(0, len(b)-40):])
	}
	if m, _ := filepath.Glob(log + "*"); len(m) != 2 {
		t.Fatalf("files: %v", m)
	}
}

// A stop or destroy leaves no console logger behind, even one that has
// not yet seen QEMU close its socket.
func TestStopConsoleLoggerLeavesNoProcess(t *testing.T) {
	dir := t.TempDir()
	p := exec.Command("sh", "-c", "sleep 30", ConsoleCommand, consoleServe, filepath.Join(dir, "c.sock"), filepath.Join(dir, layout.SerialFile))
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { p.Wait(); close(done) }()
	time.Sleep(100 * time.Millisecond) // its exec done
	stopConsoleLogger(t.TempDir())     // another machine's: untouched
	select {
	case <-done:
		t.Fatal("another machine's logger was killed")
	default:
	}
	stopConsoleLogger(dir)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		p.Process.Kill()
		t.Fatal("the logger still runs")
	}
}
