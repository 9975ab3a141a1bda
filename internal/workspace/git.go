// Package workspace moves a project into a VM and an agent's work back
// out without giving the VM a way to write the host's tree.
//
// Git mode: the host packs a snapshot commit and the VM unpacks it into a
// fresh clone; on collect the VM sends a pack of the agent's new objects,
// which the host checks (index-pack --strict, its size and what it
// inflates to capped) and points one branch at. The host never runs
// anything the VM sent, never takes a ref name from the VM, and never
// writes its working tree, index, HEAD, hooks or config; every git command
// on the host's repository runs with hooks, fsmonitor and submodule
// recursion off (noRun), and apply refuses work that changes what git
// itself would run on a later command. Rsync mode: rsync in, a tar stream out into a results folder,
// unpacked under an os.Root so nothing lands outside it.
package workspace

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/agentfleet/agentfleet/internal/execx"
	"github.com/agentfleet/agentfleet/internal/termsafe"
)

// identity is who the snapshot and work-in-progress commits are by.
var identity = []string{
	"GIT_AUTHOR_NAME=agentfleet", "GIT_AUTHOR_EMAIL=agentfleet@localhost",
	"GIT_COMMITTER_NAME=agentfleet", "GIT_COMMITTER_EMAIL=agentfleet@localhost",
}

// BranchPrefix is the namespace collected work lands in: refs/heads/fleet/<vm>.
// Branches, so `git log fleet/<vm>`, `git diff` and `git merge` just work.
const BranchPrefix = "fleet/"

var objectID = regexp.MustCompile(`^[0-9a-f]{40}([0-9a-f]{24})?$`)

// IsObjectID reports whether s is a full SHA-1 or SHA-256 object name;
// anything a VM reports is checked with it before the host uses it.
func IsObjectID(s string) bool { return objectID.MatchString(s) }

// Repo is the host repository a fleet's project comes from.
type Repo struct {
	Runner execx.Runner
	Dir    string // top level of the working tree
}

// ErrNotRepo says a directory is not inside a git working tree.
var ErrNotRepo = errors.New("not inside a git repository")

// Open finds the repository that contains dir.
func Open(ctx context.Context, r execx.Runner, dir string) (Repo, error) {
	out, err := r.Run(ctx, execx.Cmd{Name: "git", Args: append(noRunArgs(), "-C", dir, "rev-parse", "--show-toplevel")})
	if err != nil {
		if execx.IsNotFound(err) {
			return Repo{}, err
		}
		return Repo{}, fmt.Errorf("%s: %w", dir, ErrNotRepo)
	}
	return Repo{Runner: r, Dir: strings.TrimSpace(string(out))}, nil
}

// noRun goes before every git command on the host's repository. The
// agent's commits become files in the user's tree (after apply), so
// nothing git runs may be named by the tree: hooks (core.hooksPath can
// point into it, as in a project's .githooks), the fsmonitor program (the
// same), submodules its .gitmodules names, and background gc, which runs
// hooks of its own. Children inherit these through GIT_CONFIG_PARAMETERS.
// Diffs add --no-ext-diff and --no-textconv; filters and merge drivers
// that .gitattributes names are kept from the agent by Merge's refusal.
var noRun = []string{
	"--no-pager",
	"-c", "core.hooksPath=/dev/null",
	"-c", "core.fsmonitor=false",
	"-c", "submodule.recurse=false",
	"-c", "gc.auto=0",
	"-c", "maintenance.auto=false",
}

func noRunArgs(args ...string) []string { return append(append([]string(nil), noRun...), args...) }

// run runs one git command in the repository with noRun and returns its
// output as it is.
func (g Repo) run(ctx context.Context, c execx.Cmd) ([]byte, error) {
	c.Name, c.Args, c.Dir = "git", noRunArgs(c.Args...), g.Dir
	return g.Runner.Run(ctx, c)
}

// git runs one git command in the repository with noRun and returns its
// output trimmed.
func (g Repo) git(ctx context.Context, env []string, stdin io.Reader, args ...string) (string, error) {
	out, err := g.run(ctx, execx.Cmd{Args: args, Env: env, Stdin: stdin})
	return strings.TrimSpace(string(out)), err
}

// Head returns HEAD's commit, or "" in a repository without commits.
func (g Repo) Head(ctx context.Context) string {
	out, err := g.git(ctx, nil, nil, "rev-parse", "-q", "--verify", "HEAD^{commit}")
	if err != nil {
		return ""
	}
	return out
}

// Snapshot returns the commit a VM's clone starts from: HEAD, or, when
// the working tree has uncommitted or untracked (not ignored) changes, a
// commit of exactly what the user sees, on top of HEAD. It stages into a
// private copy of the index, so the user's index stays byte-identical.
func (g Repo) Snapshot(ctx context.Context) (base, start string, err error) {
	base = g.Head(ctx)
	tmp, err := os.MkdirTemp("", "fleet-index-")
	if err != nil {
		return "", "", err
	}
	defer os.RemoveAll(tmp)
	index := filepath.Join(tmp, "index")
	if real, err := g.git(ctx, nil, nil, "rev-parse", "--path-format=absolute", "--git-path", "index"); err == nil {
		if b, err := os.ReadFile(real); err == nil {
			// A copy keeps the stat cache: only changed files are hashed.
			if err := os.WriteFile(index, b, 0o600); err != nil {
				return "", "", err
			}
		}
	}
	env := append([]string{"GIT_INDEX_FILE=" + index}, identity...)
	if _, err := g.git(ctx, env, nil, "add", "-A"); err != nil {
		return "", "", fmt.Errorf("snapshot the working tree: %w", err)
	}
	tree, err := g.git(ctx, env, nil, "write-tree")
	if err != nil {
		return "", "", fmt.Errorf("snapshot the working tree: %w", err)
	}
	if base != "" {
		if headTree, _ := g.git(ctx, nil, nil, "rev-parse", base+"^{tree}"); headTree == tree {
			return base, base, nil
		}
	}
	args := []string{"commit-tree", tree, "-m", "fleet: uncommitted changes on the host at spawn"}
	if base != "" {
		args = append(args, "-p", base)
	}
	start, err = g.git(ctx, env, nil, args...)
	if err != nil {
		return "", "", fmt.Errorf("snapshot commit: %w", err)
	}
	return base, start, nil
}

// Pack writes a pack of everything reachable from start to w.
func (g Repo) Pack(ctx context.Context, start string, w io.Writer) error {
	return g.PackSince(ctx, start, "", w)
}

// PackSince writes a pack of what start has that have has not (all of
// start's history when have is ""): what a machine whose workspace holds
// have needs to reach start.
func (g Repo) PackSince(ctx context.Context, start, have string, w io.Writer) error {
	revs := start + "\n"
	if have != "" {
		revs += "^" + have + "\n"
	}
	_, err := g.run(ctx, execx.Cmd{
		Args:  []string{"pack-objects", "--revs", "--stdout", "-q"},
		Stdin: strings.NewReader(revs), Stdout: w, StreamStdout: true,
	})
	if err != nil {
		return fmt.Errorf("pack %s: %w", short(start), err)
	}
	return nil
}

// ErrTooLarge says a VM sent more than the collect limit.
var ErrTooLarge = errors.New("larger than the collect limit")

// Import reads a pack the VM sent and stores its objects. index-pack
// --strict checks every object as a fetch from an untrusted remote is
// checked (no .git path components, no malformed trees). Before it sees
// an object, checkPack has checked the object's declared size against l,
// so neither the pack's bytes nor what its objects inflate to can fill
// the host's disk or memory; index-pack also runs under a data-size
// rlimit, should anything slip past. It writes into a quarantine folder,
// as receive-pack does, so a refused pack leaves nothing behind.
func (g Repo) Import(ctx context.Context, pack io.Reader, l Limits) error {
	hashLen := 20
	if f, err := g.git(ctx, nil, nil, "rev-parse", "--show-object-format"); err == nil && f == "sha256" {
		hashLen = 32
	}
	objects, err := g.git(ctx, nil, nil, "rev-parse", "--path-format=absolute", "--git-path", "objects")
	if err != nil {
		return fmt.Errorf("find the object store: %w", err)
	}
	quarantine, err := os.MkdirTemp(objects, "incoming-fleet-")
	if err != nil {
		return fmt.Errorf("make a quarantine for the VM's objects: %w", err)
	}
	defer os.RemoveAll(quarantine)
	if err := os.Mkdir(filepath.Join(quarantine, "pack"), 0o755); err != nil {
		return err
	}
	if err := g.indexPack(ctx, pack, l, hashLen, []string{"GIT_OBJECT_DIRECTORY=" + quarantine, "GIT_ALTERNATE_OBJECT_DIRECTORIES=" + objects}); err != nil {
		return err
	}
	// The index last: git uses a pack once its index is there.
	names, err := filepath.Glob(filepath.Join(quarantine, "pack", "pack-*"))
	if err != nil {
		return err
	}
	sort.Slice(names, func(i, j int) bool {
		return !strings.HasSuffix(names[i], ".idx") && strings.HasSuffix(names[j], ".idx")
	})
	for _, n := range names {
		if err := os.Rename(n, filepath.Join(objects, "pack", filepath.Base(n))); err != nil {
			return fmt.Errorf("store the VM's objects: %w", err)
		}
	}
	return nil
}

func (g Repo) indexPack(ctx context.Context, pack io.Reader, l Limits, hashLen int, env []string) error {
	// An OS pipe, not an io.Pipe: index-pack reads it directly, so when
	// it stops, Run returns even while the checker still waits on the VM.
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	checked := make(chan error, 1)
	go func() {
		err := checkPack(pack, pw, l, hashLen)
		checked <- err // before index-pack can see the stream end
		pw.Close()
	}()
	// Two threads, each holding a delta's base and result at most, the
	// delta base caches, and room for the rest.
	dataKiB := (1<<30 + 4*l.Object + 2*96<<20) >> 10
	args := noRunArgs("-c", fmt.Sprintf("core.bigFileThreshold=%d", l.Object), "-c", "core.deltaBaseCacheLimit=96m",
		"index-pack", "--stdin", "--strict", "--threads=2", fmt.Sprintf("--max-input-size=%d", l.Pack))
	_, err = g.Runner.Run(ctx, execx.Cmd{
		Name: "sh", Args: append([]string{"-c", `ulimit -d "$1" 2>/dev/null; shift; exec git "$@"`, "sh", fmt.Sprint(dataKiB)}, args...),
		Dir: g.Dir, Env: env, Stdin: pr,
	})
	pr.Close() // a checker still writing gets EPIPE and stops
	if err == nil {
		return <-checked
	}
	select {
	case cerr := <-checked:
		if cerr != nil && !errors.Is(cerr, errIndexPackDone) {
			return cerr
		}
	default: // index-pack refused the pack on its own; the checker waits on the VM
	}
	var re *execx.RunError
	if errors.As(err, &re) {
		return fmt.Errorf("check the VM's objects: git index-pack: %w: %s", re.Err, termsafe.Text(execx.Tail(re.Output, 5)))
	}
	return fmt.Errorf("check the VM's objects: %w", err)
}

var errIndexPackDone = errors.New("index-pack stopped reading")

// IsCommit reports whether id names a commit the repository has.
func (g Repo) IsCommit(ctx context.Context, id string) bool {
	if !IsObjectID(id) {
		return false
	}
	t, err := g.git(ctx, nil, nil, "cat-file", "-t", id)
	return err == nil && t == "commit"
}

// IsAncestor says whether commit a is an ancestor of (or is) commit b.
func (g Repo) IsAncestor(ctx context.Context, a, b string) bool {
	if !IsObjectID(a) || !IsObjectID(b) {
		return false
	}
	_, err := g.git(ctx, nil, nil, "merge-base", "--is-ancestor", a, b)
	return err == nil
}

// TreeOf returns commit's tree, or "".
func (g Repo) TreeOf(ctx context.Context, commit string) string {
	out, err := g.git(ctx, nil, nil, "rev-parse", "--verify", "-q", commit+"^{tree}")
	if err != nil {
		return ""
	}
	return out
}

// CheckedOut returns the branch HEAD points at ("" when detached).
func (g Repo) CheckedOut(ctx context.Context) string {
	out, _ := g.git(ctx, nil, nil, "symbolic-ref", "-q", "--short", "HEAD")
	return out
}

// SetBranch points refs/heads/<branch> at tip. It refuses the branch the
// user has checked out, whose working tree would silently stop matching.
func (g Repo) SetBranch(ctx context.Context, branch, tip string) error {
	if g.CheckedOut(ctx) == branch {
		return fmt.Errorf("branch %s is checked out in %s; switch to another branch before collecting into it", branch, g.Dir)
	}
	if _, err := g.git(ctx, nil, nil, "update-ref", "-m", "fleet collect", "refs/heads/"+branch, tip); err != nil {
		return fmt.Errorf("update %s: %w", branch, err)
	}
	return nil
}

// Dirty reports whether tracked files differ from HEAD (staged or not).
func (g Repo) Dirty(ctx context.Context) (bool, error) {
	out, err := g.git(ctx, nil, nil, "status", "--porcelain", "--untracked-files=no")
	if err != nil {
		return false, err
	}
	return out != "", nil
}

// ErrRunsCode says a branch changes files the host's git would run, or
// read as instructions, on its own.
var ErrRunsCode = errors.New("changes files git on this host runs or takes instructions from")

// Merge merges branch into the checked-out branch, with hooks off and
// --no-verify. It first refuses a branch that changes what git would run
// from the tree: .gitattributes (it picks filter and merge drivers, which
// config cannot switch off wholesale), .lfsconfig (where git-lfs's filter
// fetches from), and the files this repository's own config points into
// the tree (a core.hooksPath folder, a core.fsmonitor program, an included
// config file). Those the user merges by hand, after reading them.
func (g Repo) Merge(ctx context.Context, branch string, out io.Writer) error {
	changed, err := g.changedSinceFork(ctx, branch)
	if err != nil {
		return err
	}
	reads := g.hostReads(ctx)
	var refused []string
	for _, f := range changed {
		if b := fold(path.Base(f)); b == ".gitattributes" || b == ".lfsconfig" || matchAny(f, reads) {
			refused = append(refused, f)
		}
	}
	if len(refused) > 0 {
		shown := refused
		if len(shown) > 5 {
			shown = append(shown[:5:5], fmt.Sprintf("and %d more", len(refused)-5))
		}
		for i := range shown {
			shown[i] = termsafe.Line(shown[i])
		}
		return fmt.Errorf("%s %w (%s): review them, then merge by hand: git -c core.hooksPath=/dev/null merge --no-verify %s",
			branch, ErrRunsCode, strings.Join(shown, ", "), branch)
	}
	return g.merge(ctx, branch, out)
}

func (g Repo) merge(ctx context.Context, branch string, out io.Writer) error {
	_, err := g.run(ctx, execx.Cmd{
		Args:   []string{"merge", "--no-ff", "--no-edit", "--no-verify", "-m", "Merge " + branch + " (agentfleet)", branch},
		Stdout: out, Stderr: out,
	})
	return err
}

// changedSinceFork lists the paths branch changed since it left HEAD.
func (g Repo) changedSinceFork(ctx context.Context, branch string) ([]string, error) {
	out, err := g.git(ctx, nil, nil, "diff", "--name-only", "--no-renames", "--no-ext-diff", "--no-textconv", "-z", "HEAD..."+branch, "--")
	if err != nil {
		return nil, fmt.Errorf("list what %s changes: %w", branch, err)
	}
	return splitZ(out), nil
}

func splitZ(s string) []string {
	var out []string
	for _, f := range strings.Split(s, "\x00") {
		if f != "" {
			out = append(out, f)
		}
	}
	return out
}

// hostReads are the paths in the tree that this repository's config makes
// git run or read: the core.hooksPath folder, config files included from
// the tree, and the words of every program-valued setting (core.fsmonitor,
// gpg.program, a filter's smudge, hook.*.command, ...) that name files in
// the tree. Relative to the top; a folder ends in "/".
func (g Repo) hostReads(ctx context.Context) []string {
	// Read without noRun, whose own settings would hide the user's. git
	// config runs nothing.
	out, err := g.Runner.Run(ctx, execx.Cmd{Name: "git", Args: []string{"config", "--list", "--show-origin", "-z"}, Dir: g.Dir})
	if err != nil {
		return nil
	}
	var reads []string
	inTree := func(p string, dir bool) {
		if strings.HasPrefix(p, "~/") {
			home, err := os.UserHomeDir()
			if err != nil {
				return
			}
			p = filepath.Join(home, p[2:])
		}
		if !filepath.IsAbs(p) {
			p = filepath.Join(g.Dir, p)
		}
		rel, err := filepath.Rel(g.Dir, filepath.Clean(p))
		if err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, "../") {
			return
		}
		rel = filepath.ToSlash(rel)
		if dir {
			rel += "/"
		}
		reads = append(reads, rel)
	}
	programs := map[string]string{} // the last value of each program-valued key
	var hooks string
	fields := strings.Split(string(out), "\x00")
	for i := 0; i+1 < len(fields); i += 2 {
		origin, kv := fields[i], fields[i+1]
		file, isFile := strings.CutPrefix(origin, "file:")
		if isFile {
			inTree(file, false)
		}
		k, v, _ := strings.Cut(kv, "\n")
		switch k = strings.ToLower(k); {
		case k == "core.hookspath":
			hooks = v
		case isFile && (k == "include.path" || strings.HasPrefix(k, "includeif.") && strings.HasSuffix(k, ".path")):
			// Relative to the including file; listed even while it is
			// missing, since a merge could create it.
			if !filepath.IsAbs(v) && !strings.HasPrefix(v, "~/") {
				v = filepath.Join(filepath.Dir(file), v)
			}
			inTree(v, false)
		case programKey(k):
			programs[k] = v
		}
	}
	if hooks != "" {
		inTree(hooks, true)
	}
	for _, v := range programs {
		switch strings.ToLower(v) {
		case "", "true", "false", "yes", "no", "on", "off", "1", "0":
			continue
		}
		// A shell command: any word may be the program or its script.
		for _, w := range strings.Fields(strings.TrimPrefix(v, "!")) {
			if w = strings.Trim(w, `"'`); w != "" && !strings.HasPrefix(w, "-") {
				inTree(w, false)
			}
		}
	}
	return reads
}

// programKey reports whether a config key's value is a program git runs.
func programKey(k string) bool {
	switch k {
	case "core.fsmonitor", "core.pager", "core.editor", "core.sshcommand", "core.askpass", "core.gitproxy",
		"core.alternaterefscommand", "sequence.editor", "gpg.program", "credential.helper", "uploadpack.packobjectshook":
		return true
	}
	for _, suffix := range []string{".command", ".textconv", ".driver", ".clean", ".smudge", ".process", ".program", ".cmd", ".helper"} {
		if strings.HasSuffix(k, suffix) {
			return true
		}
	}
	return strings.HasPrefix(k, "pager.") || strings.HasPrefix(k, "alias.")
}

// matchAny reports whether p is one of reads or inside one of its
// folders, compared as Risky compares names.
func matchAny(p string, reads []string) bool {
	fp := foldPath(p)
	for _, r := range reads {
		fr := foldPath(strings.TrimSuffix(r, "/"))
		if fp == fr || strings.HasPrefix(fp, fr+"/") {
			return true
		}
	}
	return false
}

func foldPath(p string) string {
	segs := strings.Split(path.Clean(p), "/")
	for i, s := range segs {
		segs[i] = fold(s)
	}
	return strings.Join(segs, "/")
}

// Diff writes what changed from start to tip: a patch, or with stat a
// summary. External diff drivers, textconv and colour stay off: the
// output is the VM's content as it is, for a pipe (fleet diff | git
// apply) or, cleaned by the caller, a terminal.
func (g Repo) Diff(ctx context.Context, start, tip string, stat bool, w io.Writer) error {
	args := []string{"diff", "--no-ext-diff", "--no-textconv", "--no-color"}
	if stat {
		args = append(args, "--stat")
	}
	_, err := g.run(ctx, execx.Cmd{Args: append(args, start, tip, "--"), Stdout: w, StreamStdout: true})
	return err
}

// Summary is what one collect brought in.
type Summary struct {
	Machine     string   `json:"machine"`
	Branch      string   `json:"branch,omitempty"`
	Tip         string   `json:"tip,omitempty"`
	Commits     int      `json:"commits"`
	Files       []string `json:"files"`
	Flagged     []string `json:"flagged"`               // paths that can run code on the host or in CI
	Uncommitted bool     `json:"uncommitted,omitempty"` // the VM's uncommitted work came as its own commit
	Into        string   `json:"into,omitempty"`        // results folder (rsync mode)
	Unchanged   bool     `json:"unchanged,omitempty"`   // nothing new since the last collect
}

// Summarize counts commits and lists changed files from start to tip,
// flagging the ones that can run code: Risky names, package.json scripts,
// and the files this repository's config has git run (hostReads).
func (g Repo) Summarize(ctx context.Context, start, tip string) (commits int, files, flagged []string, err error) {
	n, err := g.git(ctx, nil, nil, "rev-list", "--count", start+".."+tip)
	if err != nil {
		return 0, nil, nil, err
	}
	fmt.Sscan(n, &commits)
	out, err := g.git(ctx, nil, nil, "diff", "--name-only", "--no-renames", "--no-ext-diff", "--no-textconv", "-z", start, tip, "--")
	if err != nil {
		return 0, nil, nil, err
	}
	reads := g.hostReads(ctx)
	for _, f := range splitZ(out) {
		files = append(files, f)
		if Risky(f) || matchAny(f, reads) || (IsPackageJSON(f) && g.scriptsChanged(ctx, start, tip, f)) {
			flagged = append(flagged, f)
		}
	}
	return commits, files, flagged, nil
}

// maxPackageJSON is the largest package.json read to compare scripts; a
// larger one is flagged unread.
const maxPackageJSON = 1 << 20

func (g Repo) scriptsChanged(ctx context.Context, start, tip, path string) bool {
	read := func(rev string) ([]byte, bool) {
		size, err := g.git(ctx, nil, nil, "cat-file", "-s", rev+":"+path)
		if err != nil {
			return nil, true // absent
		}
		if n, err := strconv.ParseInt(size, 10, 64); err != nil || n > maxPackageJSON {
			return nil, false
		}
		out, err := g.run(ctx, execx.Cmd{Args: []string{"cat-file", "blob", rev + ":" + path}})
		return out, err == nil
	}
	a, oka := read(start)
	b, okb := read(tip)
	return !oka || !okb || PackageScriptsDiffer(a, b)
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
