//go:build linux

package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// A running machine with a stand-in agent (a counter appended every
// second) forks into 3: each child's counter goes on from the moment of
// the fork, the source's without a break longer than its pause; the
// children have their own randomness, host key, machine-id, hostname and
// token; each child's commit comes back on its own branch, which starts
// at the fork point (the source's uncommitted work as one labelled
// commit); a file written in one child is in no other machine.
func TestFork(t *testing.T) {
	requireE2E(t)
	parallelVM(t)
	t.Cleanup(func() { dumpConsoles(t) })
	repo := t.TempDir()
	sh(t, repo, `git init -q -b main && echo one > a.txt && git add -A && git commit -q -m first`)
	run := func(timeout time.Duration, args ...string) result { return fleetIn(t, "fk", timeout, nil, args...) }
	t.Cleanup(func() { run(5*time.Minute, "destroy", "--all", "--force") })
	must := func(timeout time.Duration, args ...string) string {
		t.Helper()
		r := run(timeout, args...)
		if r.code != 0 {
			t.Fatalf("fleet %v: exit %d: %s", args, r.code, r.stderr)
		}
		return r.stdout
	}
	must(bootDeadline, "spawn", "1", "--project", repo)
	// The stand-in agent: a counter with the time of each line, and work
	// not yet committed.
	must(time.Minute, "exec", "fk-1", "--", "sh", "-c", `cd /workspace && echo wip > wip.txt && echo two >> a.txt &&
setsid nohup sh -c 'i=0; while :; do i=$((i+1)); echo "$i $(date +%s)" >> /tmp/counter; sleep 1; done' >/dev/null 2>&1 </dev/null &`)
	time.Sleep(4 * time.Second)
	before := strings.Count(must(time.Minute, "exec", "fk-1", "--", "cat", "/tmp/counter"), "\n")

	t0 := time.Now()
	r := run(bootDeadline, "fork", "fk-1", "3", "--json")
	if r.code != 0 {
		t.Fatalf("fork: %s", r.stderr)
	}
	if !strings.Contains(r.stderr, "keep their own random generators' state") {
		t.Errorf("children running on were not said to share their processes' random state:\n%s", r.stderr)
	}
	forkAt := time.Now()
	var res struct {
		Source   string   `json:"source"`
		Children []string `json:"children"`
		PausedMS int64    `json:"paused_ms"`
		ReadyMS  int64    `json:"ready_ms"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil || len(res.Children) != 3 {
		t.Fatalf("fork --json: %v %q", err, r.stdout)
	}
	fmt.Printf("e2e: fork of 1 into 3: paused %d ms, children ready in %d ms (command %s)\n", res.PausedMS, res.ReadyMS, time.Since(t0).Round(100*time.Millisecond))
	all := append([]string{"fk-1"}, res.Children...)
	rows := ls(t, "fk")
	for _, vm := range all {
		if rows[vm].State != "running" {
			t.Fatalf("%s is %s after the fork", vm, rows[vm].State)
		}
	}

	counters := map[string][]int{}
	lines := map[string][]string{}
	facts := map[string]map[string]string{}
	for _, vm := range all {
		out := must(time.Minute, "exec", vm, "--", "sh", "-c",
			"echo rand=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'); echo hostname=$(hostname); echo machineid=$(cat /etc/machine-id); "+
				"echo hostkey=$(cut -d' ' -f2 /etc/ssh/ssh_host_ed25519_key.pub); echo token=$(grep -h '^ANTHROPIC_AUTH_TOKEN=' /etc/environment | tail -1); "+
				"echo lines=$(grep -c . /etc/environment); echo counter=$(tr '\\n' , < /tmp/counter)")
		facts[vm] = map[string]string{}
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			if k, v, ok := strings.Cut(l, "="); ok {
				facts[vm][k] = v
			}
		}
		lines[vm] = strings.Split(strings.Trim(facts[vm]["counter"], ","), ",")
		for _, f := range lines[vm] {
			n, err := strconv.Atoi(strings.Fields(f)[0])
			if err != nil {
				t.Fatalf("%s: counter line %q", vm, f)
			}
			counters[vm] = append(counters[vm], n)
		}
	}
	t.Run("each child goes on from the fork; the source goes on unbroken", func(t *testing.T) {
		src := counters["fk-1"]
		for i, n := range src {
			if n != i+1 {
				t.Fatalf("the source's counter broke at line %d: %v", i+1, src)
			}
		}
		for _, vm := range res.Children {
			c := counters[vm]
			// The child has the source's lines up to the fork, then its own.
			for i, n := range c {
				if n != i+1 {
					t.Errorf("%s's counter is not continuous at line %d: %v", vm, i+1, c)
					break
				}
			}
			// Its lines (number and second) are the source's up to the
			// moment of the fork: after the lines written before the fork
			// began, and no later than the fork's end.
			same := 0
			for same < len(c) && same < len(lines["fk-1"]) && lines[vm][same] == lines["fk-1"][same] {
				same++
			}
			limit := before + int(time.Since(t0).Seconds()) + 2
			if same < before || same > limit {
				t.Errorf("%s shares %d lines with the source; the fork began after line %d and ended by line %d", vm, same, before, limit)
			}
			if len(c) <= same {
				t.Errorf("%s's counter stopped at the fork (%d lines)", vm, len(c))
			}
		}
		// The source stood still for the pause, no more: no gap in its
		// line times longer than the pause and a margin.
		out := must(time.Minute, "exec", "fk-1", "--", "cat", "/tmp/counter")
		// The margin is the longest gap before the fork began: under
		// TCG, with other tests' guests on the same two cores, a guest's
		// one-second loop stalls now and then on its own.
		var ats []int64
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			f := strings.Fields(l)
			at, _ := strconv.ParseInt(f[len(f)-1], 10, 64)
			ats = append(ats, at)
		}
		jitter := int64(0)
		for i := 1; i < before && i < len(ats); i++ {
			jitter = max(jitter, ats[i]-ats[i-1]-1)
		}
		prev := int64(0)
		for _, at := range ats {
			if prev != 0 && at-prev > 3+jitter+res.PausedMS/1000 {
				t.Errorf("the source's counter stood still %d s (the pause was %d ms, the longest stall before the fork %d s)", at-prev, res.PausedMS, jitter)
			}
			prev = at
		}
		if since := time.Since(forkAt); time.Unix(prev, 0).Before(forkAt.Add(-2 * time.Second)) {
			t.Errorf("the source's counter stopped (last line %s, fork ended %s ago)", time.Unix(prev, 0), since)
		}
	})
	t.Run("each child has its own identity", func(t *testing.T) {
		for _, k := range []string{"rand", "hostname", "machineid", "hostkey", "token"} {
			seen := map[string]string{}
			for _, vm := range all {
				v := facts[vm][k]
				if v == "" || (k == "token" && v == "ANTHROPIC_AUTH_TOKEN=") {
					t.Errorf("%s has no %s", vm, k)
				}
				if other, dup := seen[v]; dup {
					t.Errorf("%s and %s share %s %q", other, vm, k, v)
				}
				seen[v] = vm
			}
		}
		for _, vm := range res.Children {
			if facts[vm]["hostname"] != vm {
				t.Errorf("%s is called %q", vm, facts[vm]["hostname"])
			}
			// Its own network lines replaced the source's, not added to them.
			if facts[vm]["lines"] != facts["fk-1"]["lines"] {
				t.Errorf("%s's /etc/environment has %s lines, the source's %s", vm, facts[vm]["lines"], facts["fk-1"]["lines"])
			}
		}
		known, _ := os.ReadFile(filepath.Join(fleetHome, "fleets", "fk", "known_hosts"))
		for _, vm := range all {
			if !strings.Contains(string(known), facts[vm]["hostkey"]) {
				t.Errorf("%s's host key is not the one pinned", vm)
			}
		}
	})

	t.Run("each child's work comes back on its own branch, from the fork point", func(t *testing.T) {
		for _, vm := range res.Children {
			must(time.Minute, "exec", vm, "--", "sh", "-c", fmt.Sprintf(`cd /workspace && echo %[1]s > only-%[1]s.txt && git add -A && git commit -q -m "work of %[1]s"`, vm))
		}
		for _, vm := range all {
			out := must(time.Minute, "exec", vm, "--", "sh", "-c", "ls /workspace")
			for _, other := range res.Children {
				if has := strings.Contains(out, "only-"+other+".txt"); has != (vm == other) {
					t.Errorf("%s has only-%s.txt: %v", vm, other, has)
				}
			}
		}
		must(5*time.Minute, "collect", "--all")
		for _, vm := range res.Children {
			log := sh(t, repo, "git log --format=%s fleet/"+vm)
			if !strings.HasPrefix(log, "work of "+vm+"\nfleet fork: uncommitted work of fk-1 at the fork\nfirst") {
				t.Errorf("fleet/%s: %q", vm, log)
			}
			files := sh(t, repo, "git show --format= --name-only fleet/"+vm+"~1")
			if !strings.Contains(files, "wip.txt") || !strings.Contains(files, "a.txt") {
				t.Errorf("the fork point lacks the source's uncommitted work: %q", files)
			}
			diff := must(time.Minute, "diff", vm)
			if !strings.Contains(diff, "only-"+vm+".txt") || strings.Contains(diff, "wip.txt") {
				t.Errorf("fleet diff %s shows more than the child's work:\n%s", vm, diff)
			}
		}
	})

	t.Run("destroying every child removes the capture", func(t *testing.T) {
		forks := filepath.Join(fleetHome, "fleets", "fk", "forks")
		if e, _ := os.ReadDir(forks); len(e) != 1 {
			t.Fatalf("forks folder holds %d captures, want 1", len(e))
		}
		must(3*time.Minute, "destroy", "--force", res.Children[0], res.Children[1])
		if e, _ := os.ReadDir(forks); len(e) != 1 {
			t.Errorf("the capture went while %s still links to it", res.Children[2])
		}
		must(3*time.Minute, "destroy", "--force", res.Children[2])
		if e, _ := os.ReadDir(forks); len(e) != 0 {
			t.Errorf("the capture is left after its last child: %v", e)
		}
	})

	t.Run("a suspended source is refused and stays suspended", func(t *testing.T) {
		must(3*time.Minute, "suspend", "fk-1")
		r := run(bootDeadline, "fork", "fk-1", "1")
		if r.code == 0 || !strings.Contains(r.stderr, "suspended") || !strings.Contains(r.stderr, "fleet resume fk-1") {
			t.Errorf("fork of a suspended machine: exit %d: %s", r.code, r.stderr)
		}
		rows := ls(t, "fk")
		if len(rows) != 1 || rows["fk-1"].State != "suspended" {
			t.Errorf("after the refused fork: %+v", rows)
		}
		if e, _ := os.ReadDir(filepath.Join(fleetHome, "fleets", "fk", "forks")); len(e) != 0 {
			t.Errorf("the refused fork left a capture: %v", e)
		}
	})
}
