//go:build linux

package e2e

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Under TCG a boot takes about a minute per VM and two VMs share two
// cores: deadlines are generous so slowness is never mistaken for failure.
const bootDeadline = 15 * time.Minute

func TestFleetLifecycle(t *testing.T) {
	requireE2E(t)
	parallelVM(t) // its checks look only at fleet e2e's processes and files
	t.Cleanup(func() { dumpConsoles(t) })
	t.Cleanup(func() { fleet(t, 5*time.Minute, "destroy", "--all", "--force", "--name", "e2e") })

	// Spawn 2: both boot and answer SSH with their pinned keys.
	out := mustFleet(t, bootDeadline, "spawn", "2", "--name", "e2e")
	if strings.Fields(out)[0] != "e2e-1" || strings.Fields(out)[1] != "e2e-2" {
		t.Fatalf("spawn printed %q", out)
	}
	rows := ls(t)
	for _, n := range []string{"e2e-1", "e2e-2"} {
		if rows[n].State != "running" || rows[n].Address == "" {
			t.Fatalf("%s: %+v", n, rows[n])
		}
	}
	ports := []string{rows["e2e-1"].Address, rows["e2e-2"].Address}

	t.Run("exec --all gives distinct hostnames and machine-ids", func(t *testing.T) {
		out := mustFleet(t, 5*time.Minute, "exec", "--all", "--name", "e2e", "--", "sh", "-c", "echo $(hostname) $(cat /etc/machine-id)")
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 2 {
			t.Fatalf("want 2 lines, got %q", out)
		}
		seen := map[string]bool{}
		for _, l := range lines {
			f := strings.Fields(l) // "e2e-1: e2e-1 <machine-id>"
			if len(f) != 3 || strings.TrimSuffix(f[0], ":") != f[1] {
				t.Fatalf("line %q: prefix and hostname should match", l)
			}
			if len(f[2]) != 32 || seen[f[2]] {
				t.Fatalf("machine-id %q missing or shared", f[2])
			}
			seen[f[2]] = true
		}
	})

	// Docker's daemon (socket-activated: about a minute to start under
	// emulation) is TestEgress's: it pulls through the proxy as the agent.
	t.Run("the baked toolchain works as agent in each VM", func(t *testing.T) {
		out := mustFleet(t, 5*time.Minute, "exec", "--all", "--name", "e2e", "--", "sh", "-c",
			"id -un && docker --version && node --version && claude --version")
		for _, n := range []string{"e2e-1", "e2e-2"} {
			for _, want := range []string{n + ": agent", n + ": Docker version ", n + ": v", "(Claude Code)"} {
				if !strings.Contains(out, want) {
					t.Errorf("%s: output lacks %q:\n%s", n, want, out)
				}
			}
		}
	})

	t.Run("exit codes come back and arguments arrive verbatim", func(t *testing.T) {
		r := fleet(t, 2*time.Minute, "exec", "e2e-1", "--name", "e2e", "--", "sh", "-c", "exit 7")
		if r.code != 7 {
			t.Fatalf("exit code %d, want 7", r.code)
		}
		// fleet ssh VM with a script on stdin and no terminal: a shell
		// reads it, as with OpenSSH.
		sh := exec.Command(fleetBin, "ssh", "e2e-1", "--name", "e2e")
		sh.Env, sh.Stdin = fleetEnv(), strings.NewReader("echo piped-$((6*7))\nexit 5\n")
		if out, err := sh.Output(); sh.ProcessState == nil || sh.ProcessState.ExitCode() != 5 || !strings.Contains(string(out), "piped-42") {
			t.Fatalf("fleet ssh with a script on stdin: %q %v", out, err)
		}
		arg := `it's "$(rm -rf /)" ; ` + "`x` ü"
		out := mustFleet(t, 2*time.Minute, "exec", "e2e-1", "--name", "e2e", "--", "printf", "%s", arg)
		if out != arg {
			t.Fatalf("argument mangled: %q", out)
		}
		out = mustFleet(t, 2*time.Minute, "exec", "e2e-1", "--name", "e2e", "--", "sudo", "-n", "id", "-u")
		if strings.TrimSpace(out) != "0" {
			t.Fatalf("passwordless sudo: %q", out)
		}
	})

	t.Run("OpenSSH with ssh-config and StrictHostKeyChecking=yes", func(t *testing.T) {
		cfg := filepath.Join(t.TempDir(), "ssh_config")
		os.WriteFile(cfg, []byte(mustFleet(t, time.Minute, "ssh-config", "--name", "e2e")), 0o600)
		out, err := exec.Command("ssh", "-F", cfg, "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "e2e-2", "hostname").CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "e2e-2" {
			t.Fatalf("ssh -F: %v %s", err, out)
		}
		// The same config with one key swapped in known_hosts is refused.
		kh := filepath.Join(fleetHome, "fleets", "e2e", "known_hosts")
		orig, _ := os.ReadFile(kh)
		lines := strings.Split(strings.TrimSpace(string(orig)), "\n")
		k1, k2 := strings.Fields(lines[0]), strings.Fields(lines[1])
		swapped := filepath.Join(t.TempDir(), "known_hosts")
		os.WriteFile(swapped, []byte(k1[0]+" "+k2[1]+" "+k2[2]+"\n"+lines[1]+"\n"), 0o600)
		bad := strings.ReplaceAll(string(mustFleet(t, time.Minute, "ssh-config", "--name", "e2e")), kh, swapped)
		os.WriteFile(cfg, []byte(bad), 0o600)
		out, err = exec.Command("ssh", "-F", cfg, "-o", "BatchMode=yes", "e2e-1", "hostname").CombinedOutput()
		if err == nil || !strings.Contains(string(out), "Host key verification failed") {
			t.Fatalf("swapped known_hosts key was accepted: %v %s", err, out)
		}
	})

	t.Run("fleet's own client refuses a swapped host key", func(t *testing.T) {
		state := filepath.Join(fleetHome, "fleets", "e2e", "state.json")
		orig, _ := os.ReadFile(state)
		defer os.WriteFile(state, orig, 0o600)
		rows := strings.Split(string(orig), "\"host_key\": \"")
		if len(rows) != 3 {
			t.Fatalf("unexpected state layout")
		}
		key1 := rows[1][:strings.Index(rows[1], "\"")]
		key2 := rows[2][:strings.Index(rows[2], "\"")]
		os.WriteFile(state, []byte(strings.Replace(string(orig), key1, key2, 1)), 0o600)
		r := fleet(t, 2*time.Minute, "exec", "e2e-1", "--name", "e2e", "--", "true")
		if r.code == 0 || !strings.Contains(r.stderr, "host key mismatch") {
			t.Fatalf("want host key mismatch, got %d %q", r.code, r.stderr)
		}
	})

	t.Run("stop then start keeps a file", func(t *testing.T) {
		mustFleet(t, 2*time.Minute, "exec", "e2e-1", "--name", "e2e", "--", "sh", "-c", "echo kept > ~/marker && sync")
		mustFleet(t, 5*time.Minute, "stop", "e2e-1", "--name", "e2e")
		if s := ls(t)["e2e-1"].State; s != "stopped" {
			t.Fatalf("after stop: %s", s)
		}
		mustFleet(t, bootDeadline, "start", "e2e-1", "--name", "e2e")
		out := mustFleet(t, 2*time.Minute, "exec", "e2e-1", "--name", "e2e", "--", "cat", "marker")
		if strings.TrimSpace(out) != "kept" {
			t.Fatalf("file lost across stop/start: %q", out)
		}
		ports[0] = ls(t)["e2e-1"].Address
	})

	// Starting a killed machine again is TestWarmCloneSurvivesAKill's.
	t.Run("kill -9 shows dead, every command answers at once, destroy needs --force", func(t *testing.T) {
		pid := ls(t)["e2e-2"].PID
		if pid == 0 {
			t.Fatal("no pid for e2e-2")
		}
		// An agent is running when QEMU dies (as when the OOM killer picks it).
		mustFleet(t, 2*time.Minute, "run", "e2e-2", "--name", "e2e", "--task", "sleep forever")
		syscall.Kill(pid, syscall.SIGKILL)
		deadline := time.Now().Add(30 * time.Second)
		for ls(t)["e2e-2"].State != "dead" {
			if time.Now().After(deadline) {
				t.Fatalf("e2e-2 not dead after kill -9: %+v", ls(t)["e2e-2"])
			}
			time.Sleep(time.Second)
		}
		for _, args := range [][]string{
			{"exec", "e2e-2", "--", "true"}, {"ssh", "e2e-2", "--", "true"}, {"ssh", "e2e-2"}, {"run", "e2e-2", "--task", "x"},
			{"logs", "e2e-2"}, {"logs", "-f", "e2e-2"}, {"wait", "e2e-2"}, {"attach", "e2e-2"},
			{"collect", "e2e-2"}, {"diff", "e2e-2"}, {"kill", "e2e-2"}, {"exec", "--all", "--", "true"},
		} {
			t0 := time.Now()
			r := fleetIn(t, "e2e", time.Minute, nil, args...)
			took := time.Since(t0)
			if r.code == 0 || took > 5*time.Second {
				t.Errorf("fleet %v on a dead machine: exit %d after %s", args, r.code, took.Round(10*time.Millisecond))
			}
			if !strings.Contains(r.stderr, "e2e-2 is dead: its qemu process exited") || !strings.Contains(r.stderr, "fleet start e2e-2") {
				t.Errorf("fleet %v: the state and the fix are not named: %q", args, r.stderr)
			}
			if strings.Contains(r.stderr, "e2e-2: e2e-2") || strings.Count(r.stderr, "e2e-2 is dead") != 1 {
				t.Errorf("fleet %v names the machine more than once: %q", args, r.stderr)
			}
		}
		if r := fleet(t, time.Minute, "wait", "e2e-2", "--name", "e2e", "--json"); r.code == 0 || !strings.Contains(r.stdout, `"lost"`) {
			t.Errorf("wait on a dead machine's agent: exit %d %s", r.code, r.stdout)
		}
		// net log reads the host's file: it works on a dead machine, at once.
		if r := fleet(t, time.Minute, "net", "log", "e2e-2", "--name", "e2e"); r.code != 0 {
			t.Errorf("net log on a dead machine: %d %s", r.code, r.stderr)
		}
		// Its work cannot be checked: destroy refuses, saying so, until
		// --force; then nothing of it is left.
		r := fleet(t, time.Minute, "destroy", "e2e-2", "--name", "e2e")
		if r.code == 0 || !strings.Contains(r.stderr, "e2e-2") || !strings.Contains(r.stderr, "--force") {
			t.Fatalf("destroy of a dead machine without --force: exit %d %q", r.code, r.stderr)
		}
		if _, ok := ls(t)["e2e-2"]; !ok {
			t.Fatal("a refused destroy removed the machine")
		}
		mustFleet(t, 2*time.Minute, "destroy", "e2e-2", "--force", "--name", "e2e")
		if _, ok := ls(t)["e2e-2"]; ok {
			t.Fatal("destroy --force left the dead machine")
		}
		if _, err := os.Stat(filepath.Join(fleetHome, "fleets", "e2e", "machines", "e2e-2")); !os.IsNotExist(err) {
			t.Fatalf("the dead machine's folder is left: %v", err)
		}
	})

	t.Run("destroy --all leaves nothing", func(t *testing.T) {
		mustFleet(t, 5*time.Minute, "destroy", "--all", "--name", "e2e")
		if out, _ := exec.Command("pgrep", "-f", filepath.Join(fleetHome, "fleets", "e2e")+"/").Output(); len(strings.TrimSpace(string(out))) > 0 {
			t.Fatalf("processes left: %s", out)
		}
		if _, err := os.Stat(filepath.Join(fleetHome, "fleets", "e2e")); !os.IsNotExist(err) {
			entries, _ := filepath.Glob(filepath.Join(fleetHome, "fleets", "e2e", "*"))
			t.Fatalf("fleet folder left: %v", entries)
		}
		// A freed port may be taken again at once by another VM (another
		// test's build VM); only a listener of this fleet's is a leak.
		// A listener whose owner cannot be read may be another test's VM
		// that took the port and exited in between: look again before
		// calling it a leak.
		for _, addr := range ports {
			for try := 1; ; try++ {
				c, err := net.DialTimeout("tcp", addr, time.Second)
				if err != nil {
					break
				}
				c.Close()
				_, port, _ := net.SplitHostPort(addr)
				owner, _ := exec.Command("sh", "-c", "ss -ltnpH 'sport = :"+port+"' | grep -o 'pid=[0-9]*' | cut -d= -f2 | xargs -r -I{} cat /proc/{}/cmdline | tr '\\0' ' '").Output()
				if strings.Contains(string(owner), filepath.Join("fleets", "e2e")) || (len(owner) == 0 && try == 3) {
					t.Fatalf("%s still listening (%s)", addr, owner)
				}
				if len(owner) > 0 {
					break // another test's listener
				}
				time.Sleep(2 * time.Second)
			}
		}
		// destroy is idempotent.
		mustFleet(t, time.Minute, "destroy", "--all", "--name", "e2e")
		if out := mustFleet(t, time.Minute, "ls", "--json", "--name", "e2e"); strings.TrimSpace(out) != "[]" {
			t.Fatalf("ls after destroy: %s", out)
		}
	})
}
