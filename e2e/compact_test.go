//go:build linux

package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// A warm clone running an agent that counts a line a second is compacted
// into a fresh QEMU: it gives back most of its own host memory, and goes
// on where it was (the same boot, the same agent process, its files, no
// line lost or doubled), reached on the same port with the same pinned
// host key, and the template's files are unchanged. An open connection
// through its network leaves it as it is.
func TestCompact(t *testing.T) {
	requireE2E(t)
	parallelVM(t)
	t.Cleanup(func() { dumpConsoles(t) })
	project := t.TempDir()
	os.WriteFile(filepath.Join(project, "fleet.hcl"), []byte(`
agent = "ticker"
profile "ticker" {
  command = ["sh", "-c", "i=0; while [ $i -lt 90 ]; do i=$((i+1)); echo tick-$i; echo $i >> /tmp/count; sleep 1; done"]
}
`), 0o644)
	run := func(timeout time.Duration, args ...string) result {
		return fleetIn(t, "cp", timeout, nil, args...)
	}
	t.Cleanup(func() { run(5*time.Minute, "destroy", "--all", "--force") })
	r := fleet(t, bootDeadline, "image", "warm", "debian-12")
	if r.code != 0 {
		t.Fatalf("image warm: %s", r.stderr)
	}
	tplDir := strings.TrimSpace(r.stdout)
	before := templateSums(t, tplDir)

	if r := run(bootDeadline, "spawn", "1", "--sync", "none", "--project", project, "--task", "tick"); r.code != 0 {
		t.Fatalf("spawn: %s", r.stderr)
	}
	dir := filepath.Join(fleetHome, "fleets", "cp", "machines", "cp-1")
	deadline := time.Now().Add(3 * time.Minute)
	for !strings.Contains(run(time.Minute, "logs", "cp-1").stdout, "tick-5\n") {
		if time.Now().After(deadline) {
			t.Fatal("the ticker never reached tick-5")
		}
		time.Sleep(time.Second)
	}
	facts := func() map[string]string {
		out := run(time.Minute, "exec", "cp-1", "--", "sh", "-c",
			"echo bootid=$(cat /proc/sys/kernel/random/boot_id); echo ticker=$(pgrep -f 'echo tick-' | head -1); echo marker=$(cat /tmp/marker 2>/dev/null)").stdout
		f := map[string]string{}
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			if k, v, ok := strings.Cut(l, "="); ok {
				f[k] = v
			}
		}
		return f
	}
	if r := run(time.Minute, "exec", "cp-1", "--", "sh", "-c", "head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \\n' > /tmp/marker"); r.code != 0 {
		t.Fatalf("exec: %s", r.stderr)
	}
	was := facts()
	if was["ticker"] == "" || was["marker"] == "" {
		t.Fatalf("the machine's facts before: %v", was)
	}
	oldRow := ls(t, "cp")["cp-1"]

	t.Run("an open connection leaves it as it is", func(t *testing.T) {
		c, err := net.Dial("tcp", oldRow.Address)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		buf := make([]byte, 4)
		if _, err := c.Read(buf); err != nil { // sshd's banner: the guest has the connection
			t.Fatalf("no SSH banner: %v", err)
		}
		r := run(2*time.Minute, "compact", "cp-1", "--json")
		if r.code != 0 {
			t.Fatalf("compact with a connection open: %d %s", r.code, r.stderr)
		}
		if !strings.Contains(r.stderr, "left as it is") || !strings.Contains(r.stdout, "connections open") {
			t.Errorf("compact with a connection open did not say it left the machine:\n%s\n%s", r.stdout, r.stderr)
		}
		if row := ls(t, "cp")["cp-1"]; row.PID != oldRow.PID {
			t.Errorf("the QEMU changed (%d to %d) with a connection open", oldRow.PID, row.PID)
		}
	})

	c := compactWhenIdle(t, run, "cp-1")
	if c.Skipped != "" {
		t.Fatalf("compact skipped the machine: %s", c.Skipped)
	}
	t.Logf("compact: %+v", c)
	fmt.Printf("e2e: compact of a 2 GiB warm clone running an agent: stood still %d ms; its own host memory %d MiB, was %d MiB (%d MiB of guest RAM carried)\n",
		c.PausedMS, c.UniqueAfter>>20, c.UniqueBefore>>20, c.KeptBytes>>20)
	if c.PausedMS <= 0 || c.PausedMS > 10000 {
		t.Errorf("stood still %d ms", c.PausedMS)
	}
	if c.UniqueAfter == 0 || c.UniqueAfter*3 > c.UniqueBefore*2 {
		t.Errorf("its own memory went from %d to %d MiB: not a third less", c.UniqueBefore>>20, c.UniqueAfter>>20)
	}
	if c.KeptBytes <= 0 || c.KeptBytes > 512<<20 {
		t.Errorf("%d bytes of guest RAM carried: not the pages it wrote", c.KeptBytes)
	}
	row := ls(t, "cp")["cp-1"]
	if row.PID == oldRow.PID || row.Address != oldRow.Address || row.State != "running" {
		t.Errorf("after compact: %+v, before %+v (want a new process on the same port)", row, oldRow)
	}
	if q := qemuFor(dir); strings.Count(q, "\n") != 0 || !strings.HasPrefix(q, strconv.Itoa(row.PID)+" ") {
		t.Errorf("QEMU processes of the machine after compact (want only %d):\n%s", row.PID, q)
	}
	if now := facts(); now["bootid"] != was["bootid"] || now["ticker"] != was["ticker"] || now["marker"] != was["marker"] {
		t.Errorf("the machine did not go on where it was: before %v, after %v", was, now)
	}

	t.Run("again, and the agent finishes with no line lost", func(t *testing.T) {
		if c := compactWhenIdle(t, run, "cp-1"); c.Skipped != "" {
			t.Errorf("a second compact: %s", c.Skipped)
		}
		r := run(5*time.Minute, "wait", "cp-1")
		if r.code != 0 {
			t.Errorf("wait: %d %s %s", r.code, r.stdout, r.stderr)
		}
		logs := run(time.Minute, "logs", "cp-1").stdout
		count := run(time.Minute, "exec", "cp-1", "--", "cat", "/tmp/count").stdout
		for _, text := range []struct{ name, body, prefix string }{{"log", logs, "tick-"}, {"count file", count, ""}} {
			next := 1
			for _, l := range strings.Split(text.body, "\n") {
				if n, ok := strings.CutPrefix(l, text.prefix); ok && n != "" {
					if n != strconv.Itoa(next) {
						t.Fatalf("%s: %q where %d was due: a line was lost or doubled\n%s", text.name, l, next, text.body)
					}
					next++
				}
			}
			if next != 91 {
				t.Errorf("%s: %d lines, want 90", text.name, next-1)
			}
		}
	})

	t.Run("suspend and resume work on the new process", func(t *testing.T) {
		if r := run(5*time.Minute, "suspend", "cp-1"); r.code != 0 {
			t.Fatalf("suspend: %s", r.stderr)
		}
		if q := qemuFor(dir); q != "" {
			t.Errorf("QEMU still runs after suspend: %s", q)
		}
		if r := run(5*time.Minute, "resume", "cp-1"); r.code != 0 {
			t.Fatalf("resume: %s", r.stderr)
		}
		if now := facts(); now["marker"] != was["marker"] || now["bootid"] != was["bootid"] {
			t.Errorf("after suspend and resume: %v, want %v", now, was)
		}
		if r := run(time.Minute, "compact", "cp-1"); r.code == 0 || !strings.Contains(r.stderr, "not mapped from a template") {
			t.Errorf("compact of a machine resumed from its own state: %d %s", r.code, r.stderr)
		}
	})
	if after := templateSums(t, tplDir); after != before {
		t.Errorf("the template's files changed:\nbefore %s\nafter  %s", before, after)
	}
}

// compacted is one machine's line of fleet compact --json.
type compacted struct {
	Name         string `json:"name"`
	Skipped      string `json:"skipped"`
	PausedMS     int64  `json:"paused_ms"`
	UniqueBefore uint64 `json:"unique_before_bytes"`
	UniqueAfter  uint64 `json:"unique_after_bytes"`
	KeptBytes    int64  `json:"kept_bytes"`
}

// compactWhenIdle compacts name, again while it is skipped for an open
// connection: the last fleet command's SSH connection lingers in the
// guest's network for a moment after it closed.
func compactWhenIdle(t *testing.T, run func(time.Duration, ...string) result, name string) compacted {
	t.Helper()
	for i := 0; ; i++ {
		r := run(3*time.Minute, "compact", name, "--json")
		if r.code != 0 {
			t.Fatalf("compact: %d %s", r.code, r.stderr)
		}
		var res []compacted
		if err := json.Unmarshal([]byte(r.stdout), &res); err != nil || len(res) != 1 {
			t.Fatalf("compact --json: %v %q", err, r.stdout)
		}
		if !strings.Contains(res[0].Skipped, "connections open") || i == 20 {
			return res[0]
		}
		time.Sleep(2 * time.Second)
	}
}
