package procx

import (
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func TestCmdlineAndAlive(t *testing.T) {
	c := exec.Command("sleep", "30")
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	pid := c.Process.Pid
	// Between fork and exec the child's command line is empty: wait for
	// the exec, as a pid file's reader would only see it after.
	got, err := Cmdline(pid)
	for i := 0; i < 200 && err == nil && !strings.Contains(got, "sleep"); i++ {
		time.Sleep(5 * time.Millisecond)
		got, err = Cmdline(pid)
	}
	if err != nil || !strings.Contains(got, "sleep\x0030") {
		t.Fatalf("%q %v", got, err)
	}
	if !Alive(pid) {
		t.Fatal("a running process is not alive")
	}
	c.Process.Kill()
	// Not yet reaped: a zombie, which is not alive either.
	for i := 0; i < 100 && Alive(pid); i++ {
		exec.Command("true").Run()
	}
	if Alive(pid) {
		t.Error("a killed, unreaped process counts as alive")
	}
	c.Wait()
	if Alive(pid) || Alive(0) || Alive(-1) {
		t.Error("a gone pid is alive")
	}
	if self, err := Cmdline(os.Getpid()); err != nil || self == "" {
		t.Errorf("own command line: %q %v", self, err)
	}
}

func TestParseProcargs(t *testing.T) {
	raw := []byte{3, 0, 0, 0}
	raw = append(raw, "/opt/homebrew/bin/qemu-system-aarch64\x00\x00\x00\x00qemu-system-aarch64\x00-drive\x00file=/Users/me/.fleet/m/disk.qcow2\x00HOME=/Users/me\x00"...)
	if got := parseProcargs(raw); got != "qemu-system-aarch64\x00-drive\x00file=/Users/me/.fleet/m/disk.qcow2" {
		t.Fatalf("%q", got)
	}
	for _, bad := range [][]byte{nil, {1, 0}, {9, 0, 0, 0, 'x'}, {200, 0, 0, 0, 0, 'a', 0}} {
		parseProcargs(bad) // must not panic
	}
}
