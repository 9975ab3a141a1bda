//go:build linux

package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// A full host disk pauses QEMU (werror=enospc). FLEET_HOME on a small
// tmpfs: a spawn that fills it fails fast with the reason and leaves
// nothing; a running machine that fills it shows as paused, answers at
// once, and continues with fleet start once there is space.
// fillRoom is the tmpfs a running machine fills: a cold boot's overlay
// and logs take a few MiB of it, and the guest's write of fillMiB cannot
// fit in the rest. Small, because every MiB the guest writes is slow under
// TCG (1,500 MiB took minutes).
const (
	fillRoom = "300m"
	fillMiB  = 450
)

func TestDiskFull(t *testing.T) {
	requireE2E(t)
	parallelVM(t)
	home := t.TempDir()
	remount := func(size string) {
		t.Helper()
		if out, err := exec.Command("mount", "-o", "remount,size="+size, home).CombinedOutput(); err != nil {
			t.Fatalf("remount %s: %v %s", size, err, out)
		}
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1536k", "fleet-e2e-full", home).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs here: %v %s", err, out)
	}
	// The images stay on the real disk; only machines live on the tmpfs.
	if err := os.Symlink(filepath.Join(fleetHome, "images"), filepath.Join(home, "images")); err != nil {
		t.Fatal(err)
	}
	env := []string{"FLEET_HOME=" + home}
	run := func(timeout time.Duration, args ...string) result {
		return fleetIn(t, "full", timeout, env, args...)
	}
	t.Cleanup(func() {
		run(5*time.Minute, "destroy", "--all", "--force")
		exec.Command("umount", "-l", home).Run()
	})
	// Before the destroy above: the machines' consoles live on the tmpfs.
	t.Cleanup(func() { dumpConsolesIn(t, home) })
	// --cold: this is about what a boot writes (a warm restore writes little).
	spawn := []string{"spawn", "1", "--memory", "1G", "--sync", "none", "--egress", "open", "--credentials", "none", "--cold"}
	qemuLeft := func() string {
		out, _ := exec.Command("pgrep", "-af", "qemu-system.*"+home).Output()
		return strings.TrimSpace(string(out))
	}

	t.Run("a spawn that fills the disk fails fast, names it, and rolls back", func(t *testing.T) {
		t0 := time.Now()
		r := run(bootDeadline, spawn...)
		took := time.Since(t0)
		t.Logf("spawn on a 1.5 MiB FLEET_HOME: exit %d after %s", r.code, took.Round(time.Second))
		if r.code == 0 {
			t.Fatal("a spawn on a 1.5 MiB FLEET_HOME succeeded")
		}
		if !strings.Contains(r.stderr, "disk full") && !strings.Contains(r.stderr, "No space left on device") {
			t.Errorf("the full file system is not named: %s", r.stderr)
		}
		if took > 5*time.Minute {
			t.Errorf("spawn took %s to fail: it waited out the boot timeout", took)
		}
		if q := qemuLeft(); q != "" {
			t.Errorf("QEMU left running: %s", q)
		}
		if out := run(time.Minute, "ls", "--json").stdout; strings.Contains(out, "full-1") {
			t.Errorf("the failed machine is listed: %s", out)
		}
	})

	t.Run("a running machine that fills the disk is paused, then continues", func(t *testing.T) {
		remount(fillRoom)
		if r := run(bootDeadline, spawn...); r.code != 0 {
			t.Fatalf("spawn with room: %s", r.stderr)
		}
		run(time.Minute, "exec", "full-1", "--", "sh", "-c", "nohup dd if=/dev/zero of=/var/tmp/fill bs=1M count="+strconv.Itoa(fillMiB)+" conv=fsync >/dev/null 2>&1 &")
		state := func() string {
			var rows []struct {
				Name, State string
			}
			json.Unmarshal([]byte(run(time.Minute, "ls", "--json").stdout), &rows)
			for _, row := range rows {
				if row.Name == "full-1" {
					return row.State
				}
			}
			return ""
		}
		deadline := time.Now().Add(8 * time.Minute)
		for state() != "paused: disk full" {
			if time.Now().After(deadline) {
				t.Fatalf("never shown as paused: disk full (state %q)", state())
			}
			time.Sleep(3 * time.Second)
		}
		t0 := time.Now()
		r := run(time.Minute, "exec", "full-1", "--", "true")
		if r.code == 0 || time.Since(t0) > 5*time.Second || !strings.Contains(r.stderr, "full-1 is paused: disk full") || !strings.Contains(r.stderr, "fleet start full-1") {
			t.Errorf("exec on a paused machine: exit %d after %s: %s", r.code, time.Since(t0).Round(10*time.Millisecond), r.stderr)
		}
		remount("4g")
		if r := run(bootDeadline, "start", "full-1"); r.code != 0 {
			t.Fatalf("start after freeing space: %s", r.stderr)
		}
		if s := state(); s != "running" {
			t.Errorf("after start: %q", s)
		}
		// The write that stopped it went on: dd finishes its fillMiB.
		deadline = time.Now().Add(8 * time.Minute)
		for {
			out := run(time.Minute, "exec", "full-1", "--", "sh", "-c", "pgrep -x dd >/dev/null && echo busy; stat -c %s /var/tmp/fill").stdout
			if !strings.Contains(out, "busy") {
				if !strings.Contains(out, strconv.Itoa(fillMiB<<20)) {
					t.Errorf("the guest's write did not complete: %s", out)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("dd still running: %s", out)
			}
			time.Sleep(3 * time.Second)
		}
	})
}
