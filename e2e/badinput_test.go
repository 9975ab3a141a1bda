//go:build linux

package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Each bad input gives a one-line error, a non-zero exit and makes nothing.
func TestBadInput(t *testing.T) {
	requireE2E(t)
	cases := []struct {
		name string
		env  []string
		args []string
		want string
	}{
		{"spawn 0", nil, []string{"spawn", "0", "--name", "bad"}, "at least 1"},
		{"spawn -1", nil, []string{"spawn", "-1", "--name", "bad"}, "at least 1"},
		{"spawn abc", nil, []string{"spawn", "abc", "--name", "bad"}, "whole number"},
		{"spawn 100000", nil, []string{"spawn", "100000", "--name", "bad"}, "at most"},
		{"unknown image", nil, []string{"spawn", "1", "--name", "bad", "--image", "plan9"}, "unknown image"},
		{"unknown machine", nil, []string{"exec", "bad-7", "--name", "bad", "--", "true"}, "unknown machine"},
		{"fleet name with slash", nil, []string{"spawn", "1", "--name", "a/b"}, "invalid fleet name"},
		{"fleet name dotdot", nil, []string{"ls", "--name", ".."}, "invalid fleet name"},
		{"bad memory", nil, []string{"spawn", "1", "--name", "bad", "--memory", "lots"}, "invalid memory"},
		{"too much memory", nil, []string{"spawn", "1", "--name", "bad", "--memory", "100000G"}, "not enough memory"},
		{"--cold with --no-warm", nil, []string{"spawn", "1", "--name", "bad", "--cold", "--no-warm"}, "--cold and --no-warm: choose one"},
		{"qemu not installed", []string{"PATH=/nonexistent"}, []string{"spawn", "1", "--name", "bad", "--memory", "512M"}, "qemu-system-x86_64 is not installed"},
	}
	plain := t.TempDir() // not a git repository
	badHCL := t.TempDir()
	os.WriteFile(filepath.Join(badHCL, "fleet.hcl"), []byte("sinc = \"git\"\n"), 0o644)
	cases = append(cases, []struct {
		name string
		env  []string
		args []string
		want string
	}{
		{"unknown sync mode", nil, []string{"spawn", "1", "--name", "bad", "--memory", "512M", "--sync", "nfs"}, "unknown sync mode"},
		{"git sync outside a repository", nil, []string{"spawn", "1", "--name", "bad", "--memory", "512M", "--sync", "git", "--project", plain}, "not inside a git repository"},
		{"rsync of the whole file system", nil, []string{"spawn", "1", "--name", "bad", "--memory", "512M", "--sync", "rsync", "--project", "/"}, "not bringing all of /"},
		{"bad fleet.hcl", nil, []string{"spawn", "1", "--name", "bad", "--memory", "512M", "--project", badHCL}, "fleet.hcl:1"},
		{"collect an unknown machine", nil, []string{"collect", "bad-3", "--name", "bad"}, "unknown machine"},
		{"collect nothing named", nil, []string{"collect", "--name", "bad"}, "name a machine or pass --all"},
		{"collect with a bad size", nil, []string{"collect", "--all", "--name", "bad", "--max-size", "lots"}, "invalid size"},
		{"diff an unknown machine", nil, []string{"diff", "bad-3", "--name", "bad"}, "unknown machine"},
		{"apply an unknown machine", nil, []string{"apply", "bad-3", "--name", "bad"}, "unknown machine"},
		{"unknown egress mode", nil, []string{"spawn", "1", "--name", "bad", "--memory", "512M", "--egress", "closed"}, `unknown egress mode "closed"`},
		{"invalid domain pattern", nil, []string{"spawn", "1", "--name", "bad", "--memory", "512M", "--allow", "*"}, `invalid domain pattern "*"`},
		{"trailing-dot domain", nil, []string{"spawn", "1", "--name", "bad", "--memory", "512M", "--allow", "github.com."}, "ends with a dot"},
		{"unknown preset", nil, []string{"spawn", "1", "--name", "bad", "--memory", "512M", "--preset", "claud"}, `unknown egress preset "claud"`},
		{"unknown credentials mode", nil, []string{"spawn", "1", "--name", "bad", "--memory", "512M", "--credentials", "file"}, `unknown credentials mode "file"`},
		{"net allow for an unknown machine", nil, []string{"net", "allow", "pypi.org", "bad-3", "--name", "bad"}, "unknown machine"},
		{"net allow an invalid pattern", nil, []string{"net", "allow", "*.com", "--all", "--name", "bad"}, "too wide"},
		{"net log of an unknown machine", nil, []string{"net", "log", "bad-3", "--name", "bad"}, "unknown machine"},
	}...)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := fleetWithEnv(t, time.Minute, tc.env, tc.args...)
			if r.code == 0 {
				t.Fatalf("exit 0 for bad input")
			}
			msg := strings.TrimSpace(r.stderr)
			if !strings.Contains(msg, tc.want) {
				t.Errorf("stderr %q lacks %q", msg, tc.want)
			}
			if strings.Count(msg, "\n") > 0 && tc.name != "qemu not installed" {
				t.Errorf("error is not one line: %q", msg)
			}
			if strings.Contains(r.stderr, "panic") || strings.Contains(r.stderr, "goroutine") {
				t.Errorf("panicked: %s", r.stderr)
			}
			if ms, _ := filepath.Glob(filepath.Join(fleetHome, "fleets", "*", "machines", "*")); len(ms) > 0 {
				t.Errorf("bad input left machines behind: %v", ms)
			}
		})
	}
	t.Run("corrupted state file", func(t *testing.T) {
		state := filepath.Join(fleetHome, "fleets", "corrupt", "state.json")
		os.MkdirAll(filepath.Dir(state), 0o700)
		garbage := []byte("{\"version\":1,\"fleet\":\"corrupt\",\"machines\":[{")
		os.WriteFile(state, garbage, 0o600)
		for _, args := range [][]string{{"ls", "--name", "corrupt"}, {"spawn", "1", "--name", "corrupt", "--memory", "512M"}} {
			r := fleet(t, time.Minute, args...)
			if r.code == 0 || !strings.Contains(r.stderr, "corrupt") {
				t.Errorf("%v: want corrupt-state error, got %d %q", args, r.code, r.stderr)
			}
		}
		if b, _ := os.ReadFile(state); string(b) != string(garbage) {
			t.Error("corrupt state file was changed")
		}
		os.RemoveAll(filepath.Dir(state))
	})
}
