//go:build linux

package e2e

import (
	"bytes"
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/agentfleet/agentfleet/internal/termsafe/termsafetest"
)

var rawControlIn = termsafetest.RawControl

// fleetQuiet runs fleet without logging its output (which may be large).
func fleetQuiet(t *testing.T, timeout time.Duration, args ...string) (stdout []byte, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, fleetBin, args...)
	cmd.Env = fleetEnv()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("fleet %v: %v", args, err)
	}
	t.Logf("fleet %s -> %d (%d bytes out)\n%s", strings.Join(args, " "), code, out.Len(), errb.String())
	return out.Bytes(), code
}

// A guest that writes escape sequences and an endless line to its log,
// and forges its exit status: the host's logs are clean and bounded, and
// no forged status reads as success.
func TestHostileGuestOutput(t *testing.T) {
	requireE2E(t)
	parallelVM(t)
	t.Cleanup(func() { dumpConsoles(t) })
	repo := t.TempDir()
	sh(t, repo, `git init -q -b main && cat > agent.sh <<'SH'
printf 'plain \033[2K \033]0;owned\007 \302\233 \342\200\256 \rforged\n'
head -c 8388608 /dev/zero | tr '\0' A
printf '\nafter the flood\n'
SH
cat > fleet.hcl <<'HCL'
agent = "flood"
profile "flood" {
  command = ["sh", "agent.sh"]
}
HCL
git add -A && git commit -qm first`)
	const name = "hostile"
	defer fleet(t, 5*time.Minute, "destroy", "--all", "--force", "--name", name)
	if r := fleet(t, bootDeadline, "spawn", "1", "--name", name, "--project", repo, "--task", "go", "--no-warm"); r.code != 0 {
		t.Fatalf("spawn: %s", r.stderr)
	}
	m := name + "-1"
	if r := fleet(t, 5*time.Minute, "wait", "--name", name, "--timeout", "4m"); r.code != 0 {
		t.Fatalf("wait: %d %s", r.code, r.stderr)
	}
	out, code := fleetQuiet(t, 2*time.Minute, "logs", "--name", name, m)
	if code != 0 || len(out) > 2<<20 || !strings.Contains(string(out), "line cut") || !strings.Contains(string(out), "after the flood") {
		t.Fatalf("rendered logs: exit %d, %d bytes", code, len(out))
	}
	if where, bad := rawControlIn(string(out)); bad {
		t.Fatalf("rendered logs carry raw %s", where)
	}
	// Into a pipe, --raw is the log byte for byte.
	out, code = fleetQuiet(t, 2*time.Minute, "logs", "--raw", "--name", name, m)
	if code != 0 || len(out) < 8<<20 || !bytes.Contains(out, []byte("\x1b[2K")) {
		t.Fatalf("raw logs into a pipe: exit %d, %d bytes", code, len(out))
	}
	// Exit statuses the agent (it has sudo) could leave: none is success.
	for _, forged := range []string{"256", "-1", "1e9", "0x0", " 0", "99999999999999999999"} {
		if r := fleet(t, time.Minute, "exec", "--name", name, m, "--", "sh", "-c", `printf '%s\n' "$1" > "$HOME/.fleet/session/exit"`, "sh", forged); r.code != 0 {
			t.Fatalf("forge %q: %s", forged, r.stderr)
		}
		if r := fleet(t, time.Minute, "wait", "--name", name, "--timeout", "30s"); r.code != 1 {
			t.Errorf("exit file %q: wait exited %d, want 1\n%s", forged, r.code, r.stdout)
		}
	}
	// exec reports the guest's status; a shell cannot exit with 256, so
	// the forged statuses of a hostile sshd are the unit tests'.
	if r := fleet(t, time.Minute, "exec", "--name", name, "--all", "--", "sh", "-c", "exit 3"); r.code != 3 {
		t.Errorf("exec --all of exit 3: %d", r.code)
	}
}
