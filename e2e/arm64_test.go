//go:build linux

package e2e

import (
	"encoding/json"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// An arm64 image of the light base recipe, baked here in a chroot under
// qemu-user-static (plus git, from a user script, for the workspace), and
// a machine spawned from it under qemu-system-aarch64 TCG with UEFI
// firmware: it answers SSH with its pinned key behind the egress and
// credential proxies, and exec, git sync and collect work. It has a store
// of its own, so the suite's amd64 image is untouched; its disk is cached
// by recipe hash like the amd64 one.
// arm64Bake is the arm64 base image's build, started by TestMain.
var arm64Bake struct {
	home, log string
	done      chan struct{}
	err       error
	took      time.Duration
	cmd       *exec.Cmd
}

// stopARM64Bake interrupts a bake still running when the suite ends (the
// builder then removes what it made), and waits for it.
func stopARM64Bake() {
	if arm64Bake.cmd == nil {
		return
	}
	select {
	case <-arm64Bake.done:
		return
	default:
	}
	_ = arm64Bake.cmd.Process.Signal(os.Interrupt)
	select {
	case <-arm64Bake.done:
	case <-time.After(3 * time.Minute):
		_ = arm64Bake.cmd.Process.Kill()
		<-arm64Bake.done
	}
}

// startARM64Bake bakes the light base recipe for arm64 in the background,
// in a store of its own under dir, plus git from a user script (the
// workspace needs it; base has none).
func startARM64Bake(dir string) {
	flag.Parse()
	if run := flag.Lookup("test.run").Value.String(); run != "" {
		if ok, _ := regexp.MatchString(strings.Split(run, "/")[0], "TestARM64Guest"); !ok {
			return
		}
	}
	arm64Bake.home = filepath.Join(dir, "arm64-home")
	arm64Bake.log = filepath.Join(dir, "arm64-bake.log")
	arm64Bake.done = make(chan struct{})
	script := filepath.Join(dir, "git.sh")
	os.WriteFile(script, []byte("#!/bin/sh\nset -e\napt-get update -qq\napt-get install -y -q --no-install-recommends git >/dev/null\n"), 0o644)
	log, err := os.Create(arm64Bake.log)
	if err != nil {
		arm64Bake.err = err
		close(arm64Bake.done)
		return
	}
	cmd := exec.Command(fleetBin, "image", "build", "debian-12", "--arch", "arm64", "--recipe", "base", "--script", script, "--no-warm")
	cmd.Env = append(fleetEnv(), "FLEET_HOME="+arm64Bake.home)
	cmd.Stdout, cmd.Stderr = log, log
	start := time.Now()
	if arm64Bake.err = cmd.Start(); arm64Bake.err != nil {
		log.Close()
		close(arm64Bake.done)
		return
	}
	arm64Bake.cmd = cmd
	go func() {
		arm64Bake.err = cmd.Wait()
		arm64Bake.took = time.Since(start)
		log.Close()
		close(arm64Bake.done)
	}()
}

// TestARM64Guest: an arm64 image of the light base recipe, baked here in a
// chroot under qemu-user-static, and a machine spawned from it under
// qemu-system-aarch64 TCG with UEFI firmware: it answers SSH with its
// pinned key behind the egress and credential proxies, and exec, git sync
// and collect work. Its store is its own, so the suite's amd64 image is
// untouched; its disk is cached by recipe hash like the amd64 one.
func TestARM64Guest(t *testing.T) {
	requireE2E(t)
	t.Parallel() // its VM slot once the bake is done: waiting holds none
	if arm64Bake.done == nil {
		t.Skip("the arm64 bake was not started")
	}
	env := []string{"FLEET_HOME=" + arm64Bake.home}
	select {
	case <-arm64Bake.done:
	case <-time.After(50 * time.Minute):
		t.Fatal("the arm64 bake has not finished in 50 minutes")
	}
	takeSlot(t)
	b, _ := os.ReadFile(arm64Bake.log)
	if arm64Bake.err != nil {
		t.Fatalf("arm64 bake: %v\n%s", arm64Bake.err, tail(string(b), 80))
	}
	t.Logf("arm64 base image baked in %s:\n%s", arm64Bake.took.Round(time.Second), tail(string(b), 30))
	t.Cleanup(func() {
		fleetWithEnv(t, 5*time.Minute, env, "destroy", "--all", "--force", "--name", "arm")
		if t.Failed() {
			logs, _ := filepath.Glob(filepath.Join(arm64Bake.home, "fleets", "*", "machines", "*", "serial.log"))
			for _, l := range logs {
				b, _ := os.ReadFile(l)
				t.Logf("=== console %s ===\n%s", l, tail(string(b), 60))
			}
		}
	})

	t.Run("the manifest and image ls record arm64", func(t *testing.T) {
		var rows []struct {
			Name, Version, Arch string
			Latest              bool
		}
		if err := json.Unmarshal([]byte(fleetWithEnv(t, time.Minute, env, "image", "ls", "--json").stdout), &rows); err != nil {
			t.Fatal(err)
		}
		if len(rows) != 1 || rows[0].Arch != "arm64" || !rows[0].Latest {
			t.Fatalf("image ls: %+v", rows)
		}
		if out := fleetWithEnv(t, time.Minute, env, "image", "ls").stdout; !strings.Contains(out, "ARCH") || !strings.Contains(out, "arm64") {
			t.Errorf("image ls table:\n%s", out)
		}
	})

	repo := t.TempDir()
	sh(t, repo, `git init -q -b main && echo one > a.txt && git add -A && git commit -q -m first`)
	// --arch names the build to use; this host emulates every guest, so
	// it is not needed as consent here (a unit test covers that refusal).
	start := time.Now()
	r := fleetWithEnv(t, bootDeadline, env, "spawn", "1", "--name", "arm", "--arch", "arm64", "--image", "debian-12", "--project", repo)
	if r.code != 0 {
		t.Fatalf("spawn: exit %d\n%s", r.code, r.stderr)
	}
	t.Logf("aarch64 machine answered SSH in %s", time.Since(start).Round(time.Second))

	var rows []struct{ Name, State, Arch string }
	if err := json.Unmarshal([]byte(fleetWithEnv(t, time.Minute, env, "ls", "--json", "--name", "arm").stdout), &rows); err != nil || len(rows) != 1 || rows[0].Arch != "arm64" {
		t.Errorf("ls --json: %+v %v", rows, err)
	}
	in := func(script string) result {
		return fleetWithEnv(t, 5*time.Minute, env, "exec", "arm-1", "--name", "arm", "--", "sh", "-c", script)
	}
	t.Run("exec runs in an aarch64 guest booted by UEFI", func(t *testing.T) {
		r := in(`uname -m; test -d /sys/firmware/efi && echo efi; cat /proc/cmdline`)
		if r.code != 0 || !strings.Contains(r.stdout, "aarch64") || !strings.Contains(r.stdout, "efi") || !strings.Contains(r.stdout, "console=ttyAMA0") {
			t.Fatalf("exit %d:\n%s%s", r.code, r.stdout, r.stderr)
		}
	})
	t.Run("behind the egress proxy: a refused host is refused", func(t *testing.T) {
		// The proxy is reached at the forward address like on amd64; perl
		// is in every image (the seed's identity program runs in it).
		r := in(`perl -MIO::Socket::INET -e '$s=IO::Socket::INET->new("10.0.2.100:3128") or die "no proxy: $!\n"; print $s "CONNECT refused.example:443 HTTP/1.1\r\nHost: refused.example:443\r\n\r\n"; print scalar <$s>'`)
		if r.code != 0 || !strings.Contains(r.stdout, "403") {
			t.Errorf("CONNECT to an unlisted host: exit %d %q %s", r.code, r.stdout, r.stderr)
		}
		if log := fleetWithEnv(t, time.Minute, env, "net", "log", "arm-1", "--name", "arm").stdout; !strings.Contains(log, "refused.example") {
			t.Errorf("the proxy's log lacks the refusal:\n%s", log)
		}
	})
	t.Run("git sync brings the project and collect brings the commit back", func(t *testing.T) {
		r := in(`set -e; cd /workspace; cat a.txt; git branch --show-current; echo two > b.txt; git add b.txt; git -c user.email=a@b -c user.name=agent commit -q -m 'agent on arm64'`)
		if r.code != 0 || !strings.Contains(r.stdout, "one") || !strings.Contains(r.stdout, "fleet/arm-1") {
			t.Fatalf("exit %d:\n%s%s", r.code, r.stdout, r.stderr)
		}
		if r := fleetWithEnv(t, 5*time.Minute, env, "collect", "arm-1", "--name", "arm"); r.code != 0 {
			t.Fatalf("collect: %d %s", r.code, r.stderr)
		}
		if got := sh(t, repo, "git log -1 --format=%s fleet/arm-1 && git show fleet/arm-1:b.txt"); !strings.Contains(got, "agent on arm64") || !strings.Contains(got, "two") {
			t.Errorf("branch fleet/arm-1: %q", got)
		}
	})
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
