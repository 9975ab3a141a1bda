//go:build linux

package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// An agent that prints a line every second is suspended and resumed: its
// output goes on with no line lost, the clock is set, and fleet wait gets
// its exit code. A damaged state keeps the disk; QEMU killed during a
// restore leaves nothing half-made.
func TestSuspendResume(t *testing.T) {
	requireE2E(t)
	parallelVM(t)
	t.Cleanup(func() { dumpConsoles(t) })
	project := t.TempDir()
	os.WriteFile(filepath.Join(project, "fleet.hcl"), []byte(`
agent = "ticker"
profile "ticker" {
  command = ["sh", "-c", "i=0; while [ $i -lt 45 ]; do i=$((i+1)); echo tick-$i; sleep 1; done; exit 7"]
}
`), 0o644)
	run := func(timeout time.Duration, args ...string) result {
		return fleetIn(t, "sr", timeout, nil, args...)
	}
	t.Cleanup(func() { run(5*time.Minute, "destroy", "--all", "--force") })
	dir := filepath.Join(fleetHome, "fleets", "sr", "machines", "sr-1")
	state := filepath.Join(dir, "suspend.state")
	if r := run(bootDeadline, "spawn", "1", "--sync", "none", "--project", project, "--task", "tick"); r.code != 0 {
		t.Fatalf("spawn: %s", r.stderr)
	}
	deadline := time.Now().Add(3 * time.Minute)
	for !strings.Contains(run(time.Minute, "logs", "sr-1").stdout, "tick-5\n") {
		if time.Now().After(deadline) {
			t.Fatal("the ticker never reached tick-5")
		}
		time.Sleep(time.Second)
	}

	t0 := time.Now()
	if r := run(5*time.Minute, "suspend", "sr-1"); r.code != 0 {
		t.Fatalf("suspend: %s", r.stderr)
	}
	suspendTook := time.Since(t0)
	fi, err := os.Stat(state)
	if err != nil {
		t.Fatalf("no saved state: %v", err)
	}
	if q := qemuFor(dir); q != "" {
		t.Errorf("QEMU still runs after suspend (its RAM is not freed): %s", q)
	}
	if s := ls(t, "sr")["sr-1"].State; s != "suspended" {
		t.Errorf("ls after suspend: %q", s)
	}
	if r := run(time.Minute, "exec", "sr-1", "--", "true"); r.code == 0 || !strings.Contains(r.stderr, "sr-1 is suspended") || !strings.Contains(r.stderr, "fleet resume sr-1") {
		t.Errorf("exec on a suspended machine: %d %s", r.code, r.stderr)
	}
	time.Sleep(5 * time.Second) // the guest's clock stands still meanwhile
	t0 = time.Now()
	if r := run(5*time.Minute, "resume", "sr-1"); r.code != 0 {
		t.Fatalf("resume: %s", r.stderr)
	}
	resumeTook := time.Since(t0)
	fmt.Printf("e2e: suspend of a 2 GiB warm clone running an agent: %s (%d MiB saved); resume: %s\n", suspendTook.Round(10*time.Millisecond), fi.Size()>>20, resumeTook.Round(10*time.Millisecond))
	if _, err := os.Stat(state); err == nil {
		t.Error("the state file outlived the resume (the disk has moved on from it)")
	}
	out := run(time.Minute, "exec", "sr-1", "--", "date", "+%s").stdout
	if guest, _ := strconv.ParseInt(strings.TrimSpace(out), 10, 64); guest < time.Now().Unix()-5 || guest > time.Now().Unix()+5 {
		t.Errorf("guest clock %s, host %d: not set after resume", out, time.Now().Unix())
	}
	r := run(5*time.Minute, "wait", "sr-1")
	if r.code != 1 || !strings.Contains(r.stdout, "failed (exit 7)") {
		t.Errorf("wait after resume: %d %s", r.code, r.stdout)
	}
	logs := run(time.Minute, "logs", "sr-1").stdout
	next := 1
	for _, l := range strings.Split(logs, "\n") {
		if n, ok := strings.CutPrefix(l, "tick-"); ok {
			if n != strconv.Itoa(next) {
				t.Fatalf("line tick-%s where tick-%d was due: a line was lost or doubled\n%s", n, next, logs)
			}
			next++
		}
	}
	if next != 46 {
		t.Errorf("the ticker printed %d lines, want 45:\n%s", next-1, logs)
	}

	t.Run("a damaged state keeps the disk and says how to go on", func(t *testing.T) {
		if r := run(5*time.Minute, "suspend", "sr-1"); r.code != 0 {
			t.Fatalf("suspend: %s", r.stderr)
		}
		b, _ := os.ReadFile(state)
		os.WriteFile(state, b[:len(b)/3], 0o600)
		r := run(5*time.Minute, "start", "sr-1")
		if r.code == 0 || !strings.Contains(r.stderr, "saved state") || !strings.Contains(r.stderr, "--discard-memory") {
			t.Errorf("start with a damaged state: %d %s", r.code, r.stderr)
		}
		if _, err := os.Stat(filepath.Join(dir, "disk.qcow2")); err != nil {
			t.Errorf("the disk is gone: %v", err)
		}
		if q := qemuFor(dir); q != "" {
			t.Errorf("a half-restored QEMU is left: %s", q)
		}
		if s := ls(t, "sr")["sr-1"].State; s != "suspended" {
			t.Errorf("after a failed resume: %q", s)
		}
		if r := run(bootDeadline, "start", "--discard-memory", "sr-1"); r.code != 0 {
			t.Fatalf("start --discard-memory: %s", r.stderr)
		}
		if r := run(time.Minute, "exec", "sr-1", "--", "true"); r.code != 0 {
			t.Errorf("after booting from the disk: %s", r.stderr)
		}
	})

	t.Run("QEMU killed during a restore: a clear error, nothing half-made", func(t *testing.T) {
		if r := run(5*time.Minute, "suspend", "sr-1"); r.code != 0 {
			t.Fatalf("suspend: %s", r.stderr)
		}
		pidFile := filepath.Join(dir, "qemu.pid")
		done := make(chan result, 1)
		go func() { done <- run(5*time.Minute, "resume", "sr-1") }()
		killed := false
		for i := 0; i < 3000 && !killed; i++ {
			if b, err := os.ReadFile(pidFile); err == nil {
				if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 0 {
					killed = syscall.Kill(pid, syscall.SIGKILL) == nil
				}
			}
			time.Sleep(10 * time.Millisecond)
		}
		r := <-done
		if !killed {
			t.Fatal("QEMU never started")
		}
		if r.code == 0 {
			t.Fatalf("resume succeeded although its QEMU was killed: %s", r.stderr)
		}
		if !strings.Contains(r.stderr, "sr-1") || !(strings.Contains(r.stderr, "saved state") || strings.Contains(r.stderr, "dead")) {
			t.Errorf("the error does not say what happened: %s", r.stderr)
		}
		if q := qemuFor(dir); q != "" {
			t.Errorf("QEMU left: %s", q)
		}
		if out, _ := exec.Command("pgrep", "-f", "__proxyd "+dir).Output(); len(out) > 0 {
			t.Errorf("a proxy server is left: %s", out)
		}
		// Whatever the kill interrupted, start brings the machine back.
		if r := run(bootDeadline, "start", "sr-1"); r.code != 0 {
			t.Fatalf("start after the killed restore: %s", r.stderr)
		}
		if r := run(time.Minute, "exec", "sr-1", "--", "true"); r.code != 0 {
			t.Errorf("after start: %s", r.stderr)
		}
	})
}
