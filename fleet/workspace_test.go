package fleet

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseSyncMode(t *testing.T) {
	for _, s := range []string{"git", "rsync", "shared", "none"} {
		if m, err := ParseSyncMode(s); err != nil || string(m) != s {
			t.Errorf("%s: %v", s, err)
		}
	}
	if _, err := ParseSyncMode("nfs"); err == nil || !strings.Contains(err.Error(), "git, rsync, shared, none") {
		t.Fatalf("got %v", err)
	}
}

func TestLoadProject(t *testing.T) {
	dir := t.TempDir()
	if p, err := LoadProject(dir); err != nil || p.Sync != "" {
		t.Fatalf("no fleet.hcl: %+v %v", p, err)
	}
	os.WriteFile(filepath.Join(dir, ProjectFile), []byte("sync = \"rsync\"\nexclude = [\"node_modules\", \"*.log\"]\n"), 0o644)
	p, err := LoadProject(dir)
	if err != nil || p.Sync != "rsync" || strings.Join(p.Exclude, ",") != "node_modules,*.log" {
		t.Fatalf("%+v %v", p, err)
	}
	for body, want := range map[string]string{
		"sync = \"nfs\"\n":           `unknown sync mode "nfs"`,
		"\nsinc = \"git\"\n":         "fleet.hcl:2",
		"sync = [\"git\"]\n":         "fleet.hcl:1",
		"exclude = \"node_modules\"": "fleet.hcl:1",
	} {
		os.WriteFile(filepath.Join(dir, ProjectFile), []byte(body), 0o644)
		if _, err := LoadProject(dir); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: got %v, want %q", body, err, want)
		}
	}
}

func TestRsyncArgsHonourGitignoreAndExcludes(t *testing.T) {
	ssh := []string{"ssh", "-p", "2222", "-i", "/h/my key", "-o", "HostKeyAlias=p-1", "-l", "agent", "127.0.0.1"}
	got := RsyncArgs(ssh, "/src/proj/", []string{"node_modules", "*.log"})
	want := []string{"-a", "--delete", "-e", `ssh -p 2222 -i '/h/my key' -o HostKeyAlias=p-1 -l agent`,
		"--filter=:- .gitignore", "--exclude=node_modules", "--exclude=*.log", "/src/proj/", "127.0.0.1:/workspace/"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("got  %q\nwant %q", got, want)
	}
}

func TestWithin(t *testing.T) {
	for _, tc := range []struct {
		p, dir string
		want   bool
	}{
		{"/a/b", "/a", true}, {"/a", "/a", true}, {"/ab", "/a", false}, {"/b", "/a", false}, {"/a/../b", "/a", false},
	} {
		if within(tc.p, tc.dir) != tc.want {
			t.Errorf("within(%s, %s) = %v", tc.p, tc.dir, !tc.want)
		}
	}
}

// Destroy's guard, for machines that are not running (no SSH needed):
// what a graceful stop saw decides; unknown (a dead VM) is refused.
func TestGuardWorkProtectsUncollectedWork(t *testing.T) {
	c := &Controller{}
	yes, no := true, false
	git := func(name string, pending *bool) *Machine {
		return &Machine{Name: name, Workspace: &Workspace{Mode: SyncGit, PendingAtStop: pending}}
	}
	if err := c.guardWork(context.Background(), []*Machine{git("p-1", &no), {Name: "p-2"}}, DestroyOptions{}); err != nil {
		t.Fatalf("nothing pending: %v", err)
	}
	err := c.guardWork(context.Background(), []*Machine{git("p-1", &yes), git("p-2", &no), git("p-3", nil)}, DestroyOptions{})
	if err == nil || !strings.Contains(err.Error(), "p-1 (work found when it was stopped or suspended)") ||
		!strings.Contains(err.Error(), "p-3 (cannot be checked while it is not running)") || strings.Contains(err.Error(), "p-2") {
		t.Fatalf("got %v", err)
	}
	if err := c.guardWork(context.Background(), []*Machine{git("p-1", &yes)}, DestroyOptions{Force: true}); err != nil {
		t.Fatalf("--force: %v", err)
	}
	err = c.guardWork(context.Background(), []*Machine{git("p-1", &yes)}, DestroyOptions{Collect: true})
	if err == nil || !strings.Contains(err.Error(), "not running") || !strings.Contains(err.Error(), "nothing was destroyed") {
		t.Fatalf("--collect on a stopped machine: %v", err)
	}
}

// A VM's stream after the part the host needs: padding is drained, an
// endless stream is cut off, a failed read cancels the session.
func TestFinishStream(t *testing.T) {
	stream := func(extra int64, endless bool) (*io.PipeReader, chan error, context.CancelFunc) {
		ctx, cancel := context.WithCancel(context.Background())
		pr, pw := io.Pipe()
		done := make(chan error, 1)
		go func() {
			buf := make([]byte, 4096)
			for sent := int64(0); endless || sent < extra; sent += int64(len(buf)) {
				if ctx.Err() != nil {
					break
				}
				if _, err := pw.Write(buf); err != nil {
					break
				}
			}
			pw.Close()
			done <- ctx.Err()
		}()
		return pr, done, cancel
	}
	pr, done, cancel := stream(10240, false)
	if err := finishStream(nil, pr, done, cancel); err != nil {
		t.Fatalf("tar padding: %v", err)
	}
	pr, done, cancel = stream(0, true)
	if err := finishStream(nil, pr, done, cancel); !errors.Is(err, ErrTrailing) {
		t.Fatalf("endless stream: %v", err)
	}
	pr, done, cancel = stream(0, true)
	if err := finishStream(errors.New("too large"), pr, done, cancel); !errors.Is(err, context.Canceled) {
		t.Fatalf("failed read must cancel the session: %v", err)
	}
}

func TestRemoveFleetDirKeepsResults(t *testing.T) {
	l := Layout{Root: t.TempDir()}
	os.MkdirAll(filepath.Join(l.ResultsDir("p"), "p-1"), 0o755)
	os.WriteFile(filepath.Join(l.ResultsDir("p"), "p-1", "out.txt"), []byte("work"), 0o644)
	os.WriteFile(l.StateFile("p"), []byte("{}"), 0o600)
	os.MkdirAll(l.MachinesDir("p"), 0o755)
	if err := removeFleetDir(l, "p"); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(l.ResultsDir("p"), "p-1", "out.txt")); string(b) != "work" {
		t.Fatal("collected results were removed with the fleet")
	}
	if _, err := os.Stat(l.StateFile("p")); err == nil {
		t.Fatal("state kept")
	}
	os.RemoveAll(l.ResultsDir("p"))
	if err := removeFleetDir(l, "p"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(l.FleetDir("p")); err == nil {
		t.Fatal("an empty fleet's folder was kept")
	}
}
