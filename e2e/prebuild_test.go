//go:build linux

package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const prebuildLock = `{
  "name": "p",
  "version": "1.0.0",
  "lockfileVersion": 3,
  "requires": true,
  "packages": {
    "": {"name": "p", "version": "1.0.0", "dependencies": {"is-number": "7.0.0"}},
    "node_modules/is-number": {
      "version": "7.0.0",
      "integrity": "sha512-41Cifkg6e8TylSpdtTpeLVMqvSBEVzTttHvERD741+pnZ8ANv0004MRL43QKPDlK9cGvNp6NZWZUBlbGXYxxng==",
      "engines": {"node": ">=0.12.0"}
    }
  }
}
`

// A project's setup (npm ci from the npm registry, through the egress
// proxy) runs once, in a prebuild; spawn 2 restores it, finds
// node_modules in place with the project at its current commit, and the
// setup does not run again, neither at spawn nor before an agent. The
// prebuild's files are the same after its clones ran. A changed lockfile
// makes a new prebuild; a failing setup fails the prebuild with its
// output.
func TestPrebuild(t *testing.T) {
	requireE2E(t)
	parallelVM(t)
	t.Cleanup(func() { dumpConsoles(t) })
	repo := t.TempDir()
	os.WriteFile(filepath.Join(repo, "package.json"), []byte(`{"name":"p","version":"1.0.0","dependencies":{"is-number":"7.0.0"}}`), 0o644)
	os.WriteFile(filepath.Join(repo, "package-lock.json"), []byte(prebuildLock), 0o644)
	os.WriteFile(filepath.Join(repo, ".gitignore"), []byte("node_modules/\n"), 0o644)
	os.WriteFile(filepath.Join(repo, "fleet.hcl"), []byte(`setup = ["npm ci --no-audit --no-fund", "echo ran >> ~/setup-ran", "touch setup-left.txt"]
egress {
  allow = ["registry.npmjs.org"]
}
profile "probe" {
  command = ["sh", "-c", "ls node_modules > ~/agent-saw; wc -l < ~/setup-ran >> ~/agent-saw"]
}
`), 0o644)
	sh(t, repo, `git init -q -b main && git add -A && git commit -q -m first`)
	run := func(timeout time.Duration, args ...string) result {
		t.Helper()
		r := fleetWithEnv(t, timeout, nil, args...)
		return r
	}
	in := func(timeout time.Duration, args ...string) result {
		return fleetIn(t, "pb", timeout, nil, args...)
	}
	t.Cleanup(func() { in(5*time.Minute, "destroy", "--all", "--force") })

	type prebuildOut struct {
		Key      string `json:"key"`
		Made     bool   `json:"made"`
		Template struct {
			Dir string `json:"dir"`
		} `json:"template"`
	}
	prebuild := func() prebuildOut {
		t.Helper()
		r := run(bootDeadline, "prebuild", "--json", "--project", repo)
		if r.code != 0 {
			t.Fatalf("prebuild: %s", r.stderr)
		}
		// A file the setup made that git does not ignore is named.
		if strings.Contains(r.stderr, "setup done") && !strings.Contains(r.stderr, "warning: the setup left setup-left.txt, which git does not ignore") {
			t.Errorf("no warning about the file the setup left:\n%s", r.stderr)
		}
		var out prebuildOut
		if err := json.Unmarshal([]byte(r.stdout), &out); err != nil || out.Template.Dir == "" {
			t.Fatalf("prebuild --json: %v %q", err, r.stdout)
		}
		return out
	}
	t0 := time.Now()
	first := prebuild()
	fmt.Printf("e2e: prebuild (npm ci through the egress proxy) made in %s\n", time.Since(t0).Round(100*time.Millisecond))
	if !first.Made {
		t.Fatal("the first prebuild was not made")
	}
	if fi, err := os.Stat(first.Template.Dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("the prebuild's folder is %v (%v), want owner-only", fi.Mode().Perm(), err)
	}
	sums := func() string { return templateSums(t, first.Template.Dir) }
	before := sums()
	if again := prebuild(); again.Made || again.Key != first.Key {
		t.Errorf("a second prebuild of the same inputs was made again: %+v", again)
	}

	// The project moves on after the prebuild: spawn brings it up to date.
	sh(t, repo, `echo later > later.txt && git add -A && git commit -q -m second`)
	t0 = time.Now()
	// Finished agents are parked after 15 s idle (the parker polls every 2 s).
	r := fleetIn(t, "pb", bootDeadline, []string{"FLEET_PARK_POLL=2s"}, "spawn", "2", "--task", "go", "--agent", "probe", "--idle-suspend", "15s", "--project", repo)
	if r.code != 0 {
		t.Fatalf("spawn: %s", r.stderr)
	}
	fmt.Printf("e2e: spawn 2 from the prebuild, agents started: %s\n", time.Since(t0).Round(100*time.Millisecond))
	if !strings.Contains(r.stderr, "restoring the prebuild") || strings.Count(r.stderr, "restored from the prebuild") != 2 {
		t.Errorf("spawn did not restore the prebuild:\n%s", r.stderr)
	}
	in(3*time.Minute, "wait", "--all")
	for _, vm := range []string{"pb-1", "pb-2"} {
		out := in(time.Minute, "exec", vm, "--", "sh", "-c", "cd /workspace && cat node_modules/is-number/package.json | grep -c '\"version\": \"7.0.0\"'; cat later.txt; git log --format=%s | head -1; git status --porcelain; cat ~/setup-ran ~/agent-saw; git symbolic-ref HEAD; git config --local --get-all user.name; git for-each-ref --format='%(refname)' refs/heads/; echo x > /workspace/scratch-"+vm).stdout
		want := "1\nlater\nsecond\n?? setup-left.txt\nran\nis-number\n1\nrefs/heads/fleet/" + vm + "\nagent on " + vm + "\nrefs/heads/fleet/" + vm + "\n"
		if out != want {
			t.Errorf("%s: %q, want %q (node_modules in place, the new commit, a clean tree but for what setup left, setup run once, before the agent too; on its own branch, the only one, with one author)", vm, out, want)
		}
	}

	t.Run("idle_suspend parks the finished agents; exec resumes one with its files", func(t *testing.T) {
		deadline := time.Now().Add(3 * time.Minute)
		for {
			var rows []struct {
				Name          string `json:"name"`
				State         string `json:"state"`
				SuspendReason string `json:"suspend_reason"`
			}
			json.Unmarshal([]byte(in(time.Minute, "ls", "--json").stdout), &rows)
			parked := 0
			for _, row := range rows {
				if row.State == "suspended" && strings.Contains(row.SuspendReason, "idle") {
					parked++
				}
			}
			if parked == 2 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("not parked after 3 minutes: %+v", rows)
			}
			time.Sleep(3 * time.Second)
		}
		if table := in(time.Minute, "ls").stdout; !strings.Contains(table, "idle 15s") {
			t.Errorf("fleet ls does not say why they are suspended:\n%s", table)
		}
		r := in(3*time.Minute, "exec", "pb-1", "--", "cat", "/workspace/scratch-pb-1")
		if r.code != 0 || r.stdout != "x\n" || !strings.Contains(r.stderr, "resuming") {
			t.Errorf("exec on a parked machine: exit %d %q %s", r.code, r.stdout, r.stderr)
		}
		if ls(t, "pb")["pb-1"].State != "running" {
			t.Errorf("pb-1 is %s after exec", ls(t, "pb")["pb-1"].State)
		}
	})
	if after := sums(); after != before {
		t.Errorf("the prebuild's files changed while its clones ran, were parked and resumed:\nbefore %s\nafter  %s", before, after)
	}

	t.Run("a changed lockfile makes a new prebuild", func(t *testing.T) {
		sh(t, repo, `sed -i 's/"requires": true/"requires": true /' package-lock.json && git commit -qam lock`)
		next := prebuild()
		if !next.Made || next.Key == first.Key || next.Template.Dir == first.Template.Dir {
			t.Errorf("after the lockfile changed: %+v (first %+v)", next, first)
		}
		var ls []struct {
			Prebuilds []struct {
				Dir string `json:"dir"`
			} `json:"prebuilds"`
		}
		err := json.Unmarshal([]byte(mustFleet(t, time.Minute, "image", "ls", "--json")), &ls)
		n := 0
		for _, img := range ls {
			n += len(img.Prebuilds)
		}
		if err != nil || n < 2 {
			t.Errorf("image ls --json lists %d prebuilds (%v)", n, err)
		}
	})

	t.Run("a failing setup fails the prebuild with its output", func(t *testing.T) {
		bad := t.TempDir()
		os.WriteFile(filepath.Join(bad, "fleet.hcl"), []byte(`setup = ["echo boom-output-7 >&2; exit 3"]`+"\n"), 0o644)
		os.WriteFile(filepath.Join(bad, "requirements.txt"), []byte("x\n"), 0o644)
		r := fleetWithEnv(t, bootDeadline, nil, "prebuild", "--project", bad)
		if r.code == 0 || !strings.Contains(r.stderr, "boom-output-7") || !strings.Contains(r.stderr, "exit") {
			t.Errorf("prebuild with a failing setup: exit %d\n%s", r.code, r.stderr)
		}
	})
}
