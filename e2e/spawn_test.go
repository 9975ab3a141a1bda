//go:build linux

package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// qemuFor lists the qemu processes whose command line names dir.
func qemuFor(dir string) string {
	out, _ := exec.Command("pgrep", "-af", "qemu-system.*"+dir).Output()
	return strings.TrimSpace(string(out))
}

// interruptOnceRunning starts fleet with args, waits (up to wait) until
// running says the work is under way, sends SIGINT a moment later and
// requires a non-zero exit within 3 minutes. It returns fleet's stderr.
func interruptOnceRunning(t *testing.T, wait time.Duration, env []string, running func() bool, args ...string) *bytes.Buffer {
	t.Helper()
	cmd := exec.Command(fleetBin, args...)
	cmd.Env = env
	stderr := new(bytes.Buffer)
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(wait)
	for !running() {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("fleet %v: qemu never started: %s", args, stderr)
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(2 * time.Second)
	cmd.Process.Signal(syscall.SIGINT)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatalf("interrupted fleet %v exited 0: %s", args, stderr)
		}
	case <-time.After(3 * time.Minute):
		cmd.Process.Kill()
		t.Fatalf("fleet %v did not stop within 3 minutes of Ctrl-C: %s", args, stderr)
	}
	return stderr
}

// Ctrl-C in the middle of a spawn cancels it, removes every machine it
// made and exits non-zero, leaving no qemu process and no machine folder.
func TestSpawnInterruptedRollsBack(t *testing.T) {
	requireE2E(t)
	defer dumpConsoles(t)
	fleetDir := filepath.Join(fleetHome, "fleets", "ctrlc")
	// Interrupt once both guests are booting: the rollback has real VMs
	// to remove, not just files.
	var during string // fleet ls while the spawn is under way
	stderr := interruptOnceRunning(t, time.Minute, fleetEnv(), func() bool {
		if strings.Count(qemuFor(fleetDir), "\n") < 1 {
			return false
		}
		during = mustFleet(t, time.Minute, "ls", "--name", "ctrlc")
		return true
	}, "spawn", "2", "--name", "ctrlc", "--memory", "512M", "--cold")
	for _, n := range []string{"ctrlc-1", "ctrlc-2"} {
		if !strings.Contains(during, n) || !(strings.Contains(during, "booting") || strings.Contains(during, "creating")) {
			t.Errorf("fleet ls during the spawn does not show %s being made:\n%s", n, during)
		}
	}
	t.Logf("stderr:\n%s", stderr.String())
	if !strings.Contains(stderr.String(), "cancel") {
		t.Errorf("the error should say the spawn was cancelled: %q", stderr.String())
	}
	if p := qemuFor(fleetDir); p != "" {
		t.Fatalf("qemu left running after Ctrl-C:\n%s", p)
	}
	if machines, _ := filepath.Glob(filepath.Join(fleetDir, "machines", "*")); len(machines) > 0 {
		t.Fatalf("machine folders left: %v", machines)
	}
	if out := mustFleet(t, time.Minute, "ls", "--name", "ctrlc", "--json"); strings.Contains(out, "ctrlc-") {
		t.Fatalf("state still lists machines (or the finished spawn's progress): %s", out)
	}
}

// Two spawns into one fleet at once: the fleet lock serializes them, both
// succeed, names do not collide and the state lists both machines.
func TestConcurrentSpawnsIntoOneFleet(t *testing.T) {
	requireE2E(t)
	defer dumpConsoles(t)
	defer fleet(t, 5*time.Minute, "destroy", "--all", "--force", "--name", "conc")
	var wg sync.WaitGroup
	results := make([]result, 2)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = fleet(t, 2*bootDeadline, "spawn", "1", "--name", "conc")
		}()
	}
	wg.Wait()
	for i, r := range results {
		if r.code != 0 {
			t.Fatalf("spawn %d failed: %s", i, r.stderr)
		}
	}
	if !strings.Contains(results[0].stderr+results[1].stderr, "waiting for another fleet command") {
		t.Errorf("the second spawn should say it waits for the first")
	}
	out := mustFleet(t, 2*time.Minute, "exec", "--all", "--name", "conc", "--", "hostname")
	if !strings.Contains(out, "conc-1") || !strings.Contains(out, "conc-2") {
		t.Fatalf("want conc-1 and conc-2 answering, got %q", out)
	}
	if _, err := os.Stat(filepath.Join(fleetHome, "fleets", "conc", "machines", "conc-3")); err == nil {
		t.Fatal("a third machine appeared")
	}
}
