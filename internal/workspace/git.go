// Package workspace moves a project into a VM and an agent's work back
// out without giving the VM a way to write the host's tree.
//
// Git mode: the host packs a snapshot commit and the VM unpacks it into a
// fresh clone; on collect the VM sends a pack of the agent's new objects,
// which the host checks (index-pack --strict, size-capped) and points one
// branch at. The host never runs anything the VM sent, never takes a ref
// name from the VM, and never writes its working tree, index, HEAD, hooks
// or config. Rsync mode: rsync in, a tar stream out into a results folder,
// unpacked under an os.Root so nothing lands outside it.
package workspace

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/agentfleet/agentfleet/internal/execx"
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
	out, err := r.Run(ctx, execx.Cmd{Name: "git", Args: []string{"-C", dir, "rev-parse", "--show-toplevel"}})
	if err != nil {
		if execx.IsNotFound(err) {
			return Repo{}, err
		}
		return Repo{}, fmt.Errorf("%s: %w", dir, ErrNotRepo)
	}
	return Repo{Runner: r, Dir: strings.TrimSpace(string(out))}, nil
}

// git runs one git command in the repository with hooks switched off.
func (g Repo) git(ctx context.Context, env []string, stdin io.Reader, args ...string) (string, error) {
	out, err := g.Runner.Run(ctx, execx.Cmd{
		Name: "git", Args: append([]string{"-c", "core.hooksPath=/dev/null"}, args...),
		Dir: g.Dir, Env: env, Stdin: stdin,
	})
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
	_, err := g.Runner.Run(ctx, execx.Cmd{
		Name: "git", Args: []string{"pack-objects", "--revs", "--stdout", "-q"},
		Dir: g.Dir, Stdin: strings.NewReader(start + "\n"), Stdout: w, StreamStdout: true,
	})
	if err != nil {
		return fmt.Errorf("pack %s: %w", short(start), err)
	}
	return nil
}

// ErrTooLarge says a VM sent more than the collect limit.
var ErrTooLarge = errors.New("pack larger than the collect limit")

// Import reads a pack the VM sent and stores its objects. index-pack
// --strict checks every object as a fetch from an untrusted remote is
// checked (no .git path components, no malformed trees), and maxBytes caps
// what is read, so a VM cannot fill the disk or stall the host.
func (g Repo) Import(ctx context.Context, pack io.Reader, maxBytes int64) error {
	lr := &limitReader{r: pack, left: maxBytes}
	_, err := g.git(ctx, nil, lr, "index-pack", "--stdin", "--strict", fmt.Sprintf("--max-input-size=%d", maxBytes))
	if lr.hit {
		return fmt.Errorf("%w (%d MiB; raise it with --max-size)", ErrTooLarge, maxBytes>>20)
	}
	if err != nil {
		return fmt.Errorf("check the VM's objects: %w", err)
	}
	return nil
}

// limitReader fails once more than left bytes are read.
type limitReader struct {
	r    io.Reader
	left int64
	hit  bool
}

func (l *limitReader) Read(p []byte) (int, error) {
	if l.left <= 0 {
		l.hit = true
		return 0, ErrTooLarge
	}
	if int64(len(p)) > l.left {
		p = p[:l.left+1] // one byte past the limit proves it was exceeded
	}
	n, err := l.r.Read(p)
	l.left -= int64(n)
	if l.left < 0 {
		l.hit = true
		return n, ErrTooLarge
	}
	return n, err
}

// IsCommit reports whether id names a commit the repository has.
func (g Repo) IsCommit(ctx context.Context, id string) bool {
	if !IsObjectID(id) {
		return false
	}
	t, err := g.git(ctx, nil, nil, "cat-file", "-t", id)
	return err == nil && t == "commit"
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

// Merge merges branch into the checked-out branch.
func (g Repo) Merge(ctx context.Context, branch string, out io.Writer) error {
	_, err := g.Runner.Run(ctx, execx.Cmd{
		Name: "git", Args: []string{"merge", "--no-ff", "--no-edit", "-m", "Merge " + branch + " (agentfleet)", branch},
		Dir: g.Dir, Stdout: out, Stderr: out,
	})
	return err
}

// Diff writes what changed from start to tip: a patch, or with stat a
// summary. External diff drivers and textconv stay off for VM content.
func (g Repo) Diff(ctx context.Context, start, tip string, stat bool, w io.Writer) error {
	args := []string{"-c", "core.hooksPath=/dev/null", "--no-pager", "diff", "--no-ext-diff", "--no-textconv"}
	if stat {
		args = append(args, "--stat")
	}
	_, err := g.Runner.Run(ctx, execx.Cmd{Name: "git", Args: append(args, start, tip, "--"), Dir: g.Dir, Stdout: w, StreamStdout: true})
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
// flagging the ones that can run code.
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
	for _, f := range strings.Split(out, "\x00") {
		if f == "" {
			continue
		}
		files = append(files, f)
		if Risky(f) || (filepath.Base(f) == "package.json" && g.scriptsChanged(ctx, start, tip, f)) {
			flagged = append(flagged, f)
		}
	}
	return commits, files, flagged, nil
}

func (g Repo) scriptsChanged(ctx context.Context, start, tip, path string) bool {
	read := func(rev string) []byte {
		out, err := g.Runner.Run(ctx, execx.Cmd{Name: "git", Args: []string{"cat-file", "blob", rev + ":" + path}, Dir: g.Dir})
		if err != nil {
			return nil
		}
		return out
	}
	return PackageScriptsDiffer(read(start), read(tip))
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
