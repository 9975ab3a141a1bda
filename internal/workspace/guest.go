package workspace

import (
	"bufio"
	"bytes"
	"fmt"
	"strings"

	"github.com/agentfleet/agentfleet/internal/execx"
)

// GuestDir is where the project lives in every VM.
const GuestDir = "/workspace"

// The scripts below run in the VM as the agent user. A hostile agent
// controls everything there, so their output is only ever parsed as data
// (object names checked with IsObjectID) and never executed on the host.

// guestGit is the git the scripts below run in a VM: no fsmonitor
// program or hook of the agent's (or of a prebuild's setup) runs, and no
// replace ref stands in for an object, so what a script reports and
// checks out is what the objects hold.
const guestGit = `git() { command git --no-replace-objects -c core.fsmonitor=false -c core.hooksPath=/dev/null "$@"; }`

// UnpackScript makes dir a clone on branch from a pack on stdin: the
// objects, the branch at start, refs/fleet/start marking where the agent
// began, and a checkout. No remote, no host hooks, no host config. Each
// exec is a fraction of a second in a guest under emulation, four at once
// on a spawn: the emptiness check is the shell's, both refs are one
// update-ref, and the author goes into the new config with printf.
func UnpackScript(dir, branch, start, vm string) string {
	return fmt.Sprintf(`set -e
cd %[1]s
for f in * .[!.]* ..?*; do if [ -e "$f" ] || [ -L "$f" ]; then echo "%[1]s is not empty" >&2; exit 3; fi; done
git init -q -b %[2]s .
git index-pack --stdin >/dev/null
%[3]sgit reset -q --hard
%[4]s`, execx.ShellQuote(dir), execx.ShellQuote(branch), setRefs(branch, start), appendAuthor(vm))
}

// setRefs is the shell line that points branch and refs/fleet/start at
// start, in one update-ref.
func setRefs(branch, start string) string {
	return fmt.Sprintf("printf 'update refs/heads/%%s %%s\\nupdate refs/fleet/start %%s\\n' %s %s %s | git update-ref --stdin\n", execx.ShellQuote(branch), start, start)
}

// appendAuthor is the shell line that makes vm's agent the author in the
// repository's own config (a config without one: printf, not an exec of
// git config).
func appendAuthor(vm string) string {
	return fmt.Sprintf("printf '[user]\\n\\tname = %%s\\n\\temail = %%s\\n' %s %s >>.git/config\n",
		execx.ShellQuote(gitConfigValue("agent on "+vm)), execx.ShellQuote(gitConfigValue("agent@"+vm+".fleet")))
}

// gitConfigValue quotes v for a git config file: in double quotes, with
// its backslashes and quotes escaped and line breaks dropped.
func gitConfigValue(v string) string {
	v = strings.NewReplacer("\\", "\\\\", `"`, `\"`, "\n", "", "\r", "").Replace(v)
	return `"` + v + `"`
}

// PrebuildFinishScript leaves a prebuild's workspace as UpdateScript
// expects it, before the prebuild is captured: HEAD detached at commit
// (what the prebuild holds), no ref at all, the config git init makes (no
// author), and none of the files by which the setup's commands could
// change what every clone checks out or collects: grafts, attributes,
// excludes, a sparse checkout, flags in the index. Each clone's update is
// then a few git execs: its branch is new and its author appended, as an
// unpack does. It fails if commit is not there.
func PrebuildFinishScript(dir, commit string) string {
	return fmt.Sprintf(`set -e
cd %[1]s
`+guestGit+`
git cat-file -e %[2]s^{tree}
printf '%%s\n' %[2]s >.git/HEAD
git for-each-ref --format='delete %%(refname)' | git update-ref --stdin
printf '[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = false\n\tlogallrefupdates = true\n' >.git/config
rm -f .git/info/grafts .git/info/attributes .git/info/exclude .git/info/sparse-checkout
# A fresh index (read-tree without --reset keeps no entry's flags).
git read-tree %[2]s
git update-index -q --refresh >/dev/null || true
# What the setup left that git does not ignore (every agent's diff would
# show it), NUL-separated, a bounded head of it.
git ls-files -z --others --exclude-standard --directory | head -c %[3]d
`, execx.ShellQuote(dir), execx.ShellQuote(commit), untrackedHead)
}

// untrackedHead bounds how much of PrebuildFinishScript's list of paths
// the guest sends.
const untrackedHead = 16 << 10

// ParseUntracked reads PrebuildFinishScript's output: the paths, raw (a
// caller cleans them before showing them), and whether the list was cut
// (a last path without its NUL is dropped).
func ParseUntracked(out []byte) (paths []string, cut bool) {
	parts := bytes.Split(out, []byte{0})
	if last := parts[len(parts)-1]; len(last) > 0 {
		cut = true
	}
	for _, p := range parts[:len(parts)-1] {
		if len(p) > 0 {
			paths = append(paths, string(p))
		}
	}
	return paths, cut
}

// UpdateScript brings a prebuild's workspace (PrebuildFinishScript left
// it detached, with what its setup made: ignored files such as
// node_modules stay) to start: the pack on stdin if pack (what start has
// that the prebuild's commit has not; nothing to read when they are the
// same), then branch checked out at start, the tracked files as start
// has them, and the machine's author. Three git execs at most: each is a
// fraction of a second in a guest under emulation, four at once. An
// author already there (an update run again, or a prebuild of an older
// fleet's) is removed first, found by the shell alone.
func UpdateScript(dir, branch, start, vm string, pack bool) string {
	indexPack := ""
	if pack {
		indexPack = "git index-pack --stdin >/dev/null\n"
	}
	return fmt.Sprintf(`set -e
cd %[1]s
`+guestGit+`
%[3]s%[4]sprintf 'ref: refs/heads/%%s\n' %[2]s >.git/HEAD
git reset -q --hard
author=
while IFS= read -r line; do case $line in \[user\]*) author=1 ;; esac; done <.git/config
[ -z "$author" ] || git config --remove-section user
%[5]s`, execx.ShellQuote(dir), execx.ShellQuote(branch), indexPack, setRefs(branch, start), appendAuthor(vm))
}

// StateScript prints the VM's HEAD and the tree of its working tree,
// untracked files included (staged into a private index, so the agent's
// own index is left alone). With commit, a working tree that differs
// from HEAD becomes a labelled commit on top of it (the branch does not
// move), printed as tip; otherwise tip is HEAD.
func StateScript(dir, vm string, commit bool) string {
	c := "0"
	if commit {
		c = "1"
	}
	return fmt.Sprintf(`set -e
cd %[1]s
# The agent's own fsmonitor or hooks would run (and write files) here.
`+guestGit+`
export GIT_AUTHOR_NAME=%[2]s GIT_AUTHOR_EMAIL=%[3]s GIT_COMMITTER_NAME=%[2]s GIT_COMMITTER_EMAIL=%[3]s
head=$(git rev-parse -q --verify 'HEAD^{commit}' || true)
idx=$(mktemp -u)
trap 'rm -f "$idx"' EXIT
if [ -f .git/index ]; then cp .git/index "$idx"; fi
GIT_INDEX_FILE=$idx git add -A
tree=$(GIT_INDEX_FILE=$idx git write-tree)
tip=$head
if [ %[4]s = 1 ] && { [ -z "$head" ] || [ "$tree" != "$(git rev-parse "$head^{tree}")" ]; }; then
  tip=$(git commit-tree "$tree" ${head:+-p "$head"} -m %[5]s)
fi
echo "head=$head"
echo "tree=$tree"
echo "tip=$tip"
`, execx.ShellQuote(dir), execx.ShellQuote("agent on "+vm), execx.ShellQuote("agent@"+vm+".fleet"), c,
		execx.ShellQuote("fleet: uncommitted work in "+vm+" at collect"))
}

// PackScript writes a pack of what tip has that start does not (all of
// tip's history when the agent rewrote it past start).
func PackScript(dir, tip, start string) string {
	return fmt.Sprintf(`set -e
cd %s
if git cat-file -e '%s^{commit}' 2>/dev/null; then
  printf '%%s\n^%%s\n' %s %s | git pack-objects --revs --stdout -q
else
  printf '%%s\n' %s | git pack-objects --revs --stdout -q
fi
`, execx.ShellQuote(dir), start, tip, start, tip)
}

// GuestState is what StateScript reported, each value checked.
type GuestState struct {
	Head, Tree, Tip string
}

// ParseState reads StateScript's output. Anything but object names (or
// an empty HEAD in a repository without commits) is refused.
func ParseState(out []byte) (GuestState, error) {
	var s GuestState
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			continue
		}
		switch k {
		case "head":
			s.Head = v
		case "tree":
			s.Tree = v
		case "tip":
			s.Tip = v
		}
	}
	if !IsObjectID(s.Tree) || (s.Head != "" && !IsObjectID(s.Head)) || (s.Tip != "" && !IsObjectID(s.Tip)) {
		return GuestState{}, fmt.Errorf("the VM reported an unreadable git state: %q", execx.Tail(out, 3))
	}
	return s, nil
}

// ForkLabel is the message of the commit that holds a forked machine's
// uncommitted work.
func ForkLabel(source string) string {
	return "fleet fork: uncommitted work of " + source + " at the fork"
}

// ForkScript turns a forked machine's workspace into its own: its branch
// is renamed to branch, uncommitted work (untracked files included)
// becomes one labelled commit with a fixed author and date (so children
// of one fork that have done nothing yet make the same commit), built in
// a private index so an agent running meanwhile keeps its own; the
// branch and HEAD move to it, and the script prints head=<the fork point>.
func ForkScript(dir, branch, source, vm string, at int64) string {
	return fmt.Sprintf(`set -e
cd %[1]s
`+guestGit+`
if cur=$(git symbolic-ref -q --short HEAD); then
  [ "$cur" = %[2]s ] || git branch -M "$cur" %[2]s
else
  git checkout -q -B %[2]s
fi
head=$(git rev-parse 'HEAD^{commit}')
idx=$(mktemp -u)
trap 'rm -f "$idx"' EXIT
if [ -f .git/index ]; then cp .git/index "$idx"; fi
GIT_INDEX_FILE=$idx git add -A
tree=$(GIT_INDEX_FILE=$idx git write-tree)
if [ "$tree" != "$(git rev-parse "$head^{tree}")" ]; then
  head=$(GIT_AUTHOR_NAME=fleet GIT_AUTHOR_EMAIL=fleet@fork.fleet GIT_COMMITTER_NAME=fleet GIT_COMMITTER_EMAIL=fleet@fork.fleet \
    GIT_AUTHOR_DATE="@%[6]d +0000" GIT_COMMITTER_DATE="@%[6]d +0000" git commit-tree "$tree" -p "$head" -m %[3]s)
  git update-ref refs/heads/%[2]s "$head"
  # The agent's index now matches the commit that holds its work (its
  # files are untouched); if its own git holds the lock, it keeps its index.
  if [ ! -e .git/index.lock ] && GIT_INDEX_FILE=$idx git read-tree "$head"; then cp "$idx" .git/index; fi
fi
git update-ref refs/fleet/start "$head"
git config user.name %[4]s
git config user.email %[5]s
echo "head=$head"
`, execx.ShellQuote(dir), execx.ShellQuote(branch), execx.ShellQuote(ForkLabel(source)), execx.ShellQuote("agent on "+vm), execx.ShellQuote("agent@"+vm+".fleet"), at)
}
