//go:build linux

package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A task a shell would love to misread; it must arrive byte for byte.
const nastyTask = "exit=0 \"double\" 'single' $(touch /tmp/pwned) `id` $HOME \\back ; & | > < * ?\n  second line\tünïcödé 日本"

// Sessions with a stand-in agent (edits, commits, prints, exits with the
// code its task names) and then the real Claude Code CLI.
func TestAgentSessions(t *testing.T) {
	requireE2E(t)
	parallelVM(t)
	t.Cleanup(func() { dumpConsoles(t) })
	repo := t.TempDir()
	sh(t, repo, `git init -q -b main && cat > agent.sh <<'SH'
cat > /tmp/task-received
code=$(sed -n 's/^exit=\([0-9]*\).*/\1/p' /tmp/task-received | head -n 1)
steps=$(sed -n 's/.*steps=\([0-9]*\).*/\1/p' /tmp/task-received | head -n 1)
for i in $(seq 1 ${steps:-8}); do echo "step $i"; sleep 2; done
echo "$(hostname)" >> work.txt && git add -A && git commit -qm "agent work"
echo finished
exit ${code:-0}
SH
cat > fleet.hcl <<'HCL'
agent = "standin"
setup = "echo setup-ran > /tmp/setup-ran"
profile "standin" {
  command = ["sh", "agent.sh"]
}
HCL
git add -A && git commit -qm first`)
	tasks := filepath.Join(t.TempDir(), "tasks.txt")
	os.WriteFile(tasks, []byte(nastyTask+"\n---\nexit=3 steps=10\n"), 0o644)
	// run puts --name right after the subcommand, before any "--".
	run := func(args ...string) result {
		return fleet(t, 5*time.Minute, append([]string{args[0], "--name", "ag"}, args[1:]...)...)
	}
	defer fleet(t, 5*time.Minute, "destroy", "--all", "--force", "--name", "ag")

	// --credentials env: these subtests are about forwarding the host's key
	// into the session (the credential proxy has its own test). That shape
	// has no template yet: one is made (one cold boot) and both machines
	// restore it, cheaper than two cold boots. --no-prebuild: each machine
	// runs the setup itself (TestPrebuild has the prebuilds).
	r := fleet(t, bootDeadline, "spawn", "2", "--name", "ag", "--project", repo, "--tasks", tasks, "--credentials", "env", "--no-prebuild")
	if r.code != 0 {
		t.Fatalf("spawn --tasks: %s", r.stderr)
	}

	t.Run("logs stream while the agents run", func(t *testing.T) {
		deadline := time.Now().Add(3 * time.Minute)
		for {
			out := run("logs", "ag-2").stdout
			if strings.Contains(out, "step 1") && !strings.Contains(out, "agent exited") {
				break
			}
			if strings.Contains(out, "agent exited") || time.Now().After(deadline) {
				t.Fatalf("never saw the log mid-run: %q", out)
			}
			time.Sleep(time.Second)
		}
		if rows := run("ls"); !strings.Contains(rows.stdout, "running") {
			t.Errorf("ls does not show a running agent:\n%s", rows.stdout)
		}
	})

	t.Run("killing fleet mid-wait leaves the agents running; a new wait sees them end", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		w := exec.CommandContext(ctx, fleetBin, "wait", "--all", "--name", "ag")
		w.Env = fleetEnv()
		if err := w.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(3 * time.Second)
		w.Process.Signal(syscall.SIGKILL)
		w.Wait()
		r := fleet(t, 10*time.Minute, "wait", "--all", "--name", "ag", "--timeout", "8m")
		if r.code != 1 {
			t.Fatalf("wait: exit %d, want 1 (one agent failed): %s %s", r.code, r.stdout, r.stderr)
		}
		if !strings.Contains(r.stdout, "ag-1\tsucceeded") || !strings.Contains(r.stdout, "ag-2\tfailed (exit 3)") {
			t.Fatalf("wait output:\n%s", r.stdout)
		}
	})

	t.Run("the task arrived byte for byte, after the setup, and the agent committed", func(t *testing.T) {
		got := run("exec", "ag-1", "--", "cat", "/tmp/task-received").stdout
		if got != nastyTask {
			t.Fatalf("task changed on the way:\n got %q\nwant %q", got, nastyTask)
		}
		out := run("exec", "ag-1", "--", "sh", "-c", "cat /tmp/setup-ran; ls /tmp/pwned 2>&1; cd /workspace && git log -1 --format=%s").stdout
		if !strings.Contains(out, "setup-ran") || !strings.Contains(out, "No such file") || !strings.Contains(out, "agent work") {
			t.Fatalf("after the session: %q", out)
		}
		if logs := run("logs", "--all").stdout; !strings.Contains(logs, "ag-1: finished") || !strings.Contains(logs, "ag-2: step 10") {
			t.Errorf("logs --all:\n%s", logs)
		}
	})

	t.Run("attach through a PTY, detach, and the agent keeps running", func(t *testing.T) {
		if r := run("run", "ag-1", "--task", "exit=0 steps=30", "--project", repo); r.code != 0 {
			t.Fatalf("run: %s", r.stderr)
		}
		// script(1) gives fleet a terminal; Ctrl-b d detaches tmux.
		att := exec.Command("script", "-qfec", fleetBin+" attach ag-1 --name ag", "/dev/null")
		att.Env = fleetEnv("TERM=xterm")
		stdin, _ := att.StdinPipe()
		var out strings.Builder
		att.Stdout, att.Stderr = &out, &out
		if err := att.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(8 * time.Second)
		stdin.Write([]byte{0x02, 'd'})
		done := make(chan error, 1)
		go func() { done <- att.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("attach: %v\n%s", err, out.String())
			}
		case <-time.After(time.Minute):
			att.Process.Kill()
			t.Fatalf("detach did not end attach:\n%s", out.String())
		}
		if !strings.Contains(out.String(), "step") || !strings.Contains(out.String(), "detached") {
			t.Errorf("attach showed:\n%s", out.String())
		}
		if !strings.Contains(run("ls").stdout, "running") {
			t.Fatal("detaching stopped the agent")
		}
		if r := run("kill", "ag-1"); r.code != 0 {
			t.Fatalf("kill: %s", r.stderr)
		}
		if r := run("wait", "ag-1"); r.code != 1 || !strings.Contains(r.stdout, "failed (exit 137)") {
			t.Fatalf("after kill: %d %s", r.code, r.stdout)
		}
		if r := run("attach", "ag-1"); r.code == 0 || !strings.Contains(r.stderr, "no running agent") {
			t.Errorf("attach with no session: %d %s", r.code, r.stderr)
		}
	})

	t.Run("claude starts as agent with no prompt and fails readably without a credential", func(t *testing.T) {
		r := fleetWithEnv(t, 5*time.Minute, []string{"ANTHROPIC_API_KEY=", "CLAUDE_CODE_OAUTH_TOKEN="},
			"run", "ag-2", "--agent", "claude", "--task", "Say hello.", "--project", repo, "--name", "ag")
		if r.code != 0 {
			t.Fatalf("run claude: %s", r.stderr)
		}
		w := run("wait", "ag-2", "--timeout", "5m")
		if w.code != 1 {
			t.Fatalf("claude without a credential: wait exit %d (2 = still running: a prompt blocked it?)\n%s", w.code, run("logs", "--raw", "ag-2").stdout)
		}
		logs := run("logs", "ag-2").stdout
		if !strings.Contains(strings.ToLower(logs), "login") && !strings.Contains(strings.ToLower(logs), "api key") {
			t.Errorf("no readable credential error in the logs:\n%s", logs)
		}
		if who := run("exec", "ag-2", "--", "sh", "-c", "ps -o user= -C claude; ls -ld ~/.claude"); strings.Contains(who.stdout, "root") {
			t.Errorf("claude ran as root: %s", who.stdout)
		}
	})

	t.Run("a credential reaches the session but no disk file and no command line", func(t *testing.T) {
		secret := "sk-ant-fleet-e2e-" + strings.Repeat("x", 16)
		r := fleetWithEnv(t, 5*time.Minute, []string{"ANTHROPIC_API_KEY=" + secret},
			"run", "ag-2", "--agent", "claude", "--task", "Say hello.", "--project", repo, "--name", "ag")
		if r.code != 0 {
			t.Fatalf("run claude: %s", r.stderr)
		}
		if strings.Contains(r.stdout+r.stderr, secret) {
			t.Fatal("the credential was printed")
		}
		// A pattern that matches the secret without containing it, so the
		// probe's own command line is no false alarm.
		pattern := "'sk-ant-fleet-e2e-x{16}'"
		probe := "sudo grep -lE " + pattern + " /proc/[0-9]*/cmdline 2>/dev/null; " +
			"sudo grep -rlE -D skip " + pattern + " /home /root /tmp /var/tmp /var/log /etc /workspace 2>/dev/null; true"
		if out := run("exec", "ag-2", "--", "sh", "-c", probe).stdout; strings.TrimSpace(out) != "" {
			t.Fatalf("the credential is on a command line or the disk: %s", out)
		}
		// Without network to the API, claude would retry for minutes: end it.
		run("kill", "ag-2")
		if out := run("exec", "ag-2", "--", "sh", "-c", probe).stdout; strings.TrimSpace(out) != "" {
			t.Fatalf("after the session, the credential is on the disk: %s", out)
		}
	})

	t.Run("bad input", func(t *testing.T) {
		empty := filepath.Join(t.TempDir(), "empty.txt")
		os.WriteFile(empty, nil, 0o644)
		many := filepath.Join(t.TempDir(), "many.txt")
		os.WriteFile(many, []byte("a\n---\nb\n---\nc\n"), 0o644)
		for _, tc := range []struct {
			args []string
			want string
		}{
			{[]string{"run", "ag-9", "--task", "x", "--project", repo}, "unknown machine"},
			{[]string{"run", "ag-1", "--project", repo}, "no task"},
			{[]string{"run", "ag-1", "--task", "x", "--agent", "codex", "--project", repo}, "unknown agent profile"},
			{[]string{"spawn", "1", "--tasks", empty, "--project", repo}, "tasks file is empty"},
			{[]string{"spawn", "2", "--tasks", many, "--project", repo}, "3 tasks for 2 machine(s)"},
			{[]string{"logs", "ag-9"}, "unknown machine"},
			{[]string{"wait", "ag-9"}, "unknown machine"},
		} {
			r := run(tc.args...)
			if r.code == 0 || !strings.Contains(r.stderr, tc.want) {
				t.Errorf("%v: exit %d %q, want %q", tc.args, r.code, r.stderr, tc.want)
			}
		}
		if rows := ls(t, "ag"); len(rows) != 2 {
			t.Errorf("bad input changed the fleet: %v", rows)
		}
	})
}
