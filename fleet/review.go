package fleet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/agentfleet/agentfleet/internal/execx"
	"github.com/agentfleet/agentfleet/internal/termsafe"
	"github.com/agentfleet/agentfleet/internal/workspace"
)

// Reviewing an agent's work on the host: fleet diff and fleet apply, and
// the cockpit's d and a keys.

// gitMachine is the named machine, if it was spawned in git mode.
func (c *Controller) gitMachine(name string) (*Machine, error) {
	m, err := c.Machine(name)
	if err != nil {
		return nil, err
	}
	if m.Workspace == nil || m.Workspace.Mode != SyncGit {
		return nil, fmt.Errorf("%s was not spawned with --sync git: diff and apply work on git branches", name)
	}
	return m, nil
}

// Diff writes what the named machine's agent changed since its starting
// point to out, as git prints it (a summary per file with stat). A
// running machine is collected first. What is written is the agent's
// bytes: out cleans them if a person reads them.
func (c *Controller) Diff(ctx context.Context, name string, stat bool, out io.Writer) error {
	m, err := c.gitMachine(name)
	if err != nil {
		return err
	}
	if m.SSHAddr != "" {
		if _, err := c.Collect(ctx, []string{name}, false, CollectOptions{}); err != nil {
			return err
		}
		if m, err = c.gitMachine(name); err != nil {
			return err
		}
	}
	if m.Workspace.Collected == nil {
		return fmt.Errorf("%s: nothing collected yet and the machine is not running", m.Name)
	}
	repo := workspace.Repo{Runner: c.runner(), Dir: m.Workspace.Source}
	from := m.Workspace.Start
	if m.Workspace.ForkPoint != "" {
		from = m.Workspace.ForkPoint // a fork's child: what it did after the fork
	}
	return repo.Diff(ctx, from, m.Workspace.Collected.Tip, stat, out)
}

// Apply merges the named machine's collected branch into the branch
// checked out in its project, with git's output cleaned on its way to
// out, and returns the branch and where it went. It refuses a project
// with uncommitted changes to tracked files.
func (c *Controller) Apply(ctx context.Context, name string, out io.Writer) (branch, into string, err error) {
	m, err := c.gitMachine(name)
	if err != nil {
		return "", "", err
	}
	if m.Workspace.Collected == nil {
		return "", "", fmt.Errorf("%s: nothing collected yet; run fleet collect %s first", m.Name, m.Name)
	}
	repo := workspace.Repo{Runner: c.runner(), Dir: m.Workspace.Source}
	dirty, err := repo.Dirty(ctx)
	if err != nil {
		return "", "", err
	}
	if dirty {
		return "", "", fmt.Errorf("%s has uncommitted changes; commit or stash them before applying %s", repo.Dir, m.Workspace.Branch)
	}
	// git prints the agent's file names.
	w := termsafe.NewWriter(out)
	err = repo.Merge(ctx, m.Workspace.Branch, w)
	w.Flush()
	if err != nil {
		var re *execx.RunError
		if errors.As(err, &re) {
			return "", "", fmt.Errorf("merge %s stopped (resolve the conflicts and commit, or git merge --abort):\n%s",
				termsafe.Line(m.Workspace.Branch), termsafe.Text(strings.TrimSpace(execx.Tail(re.Output, 8))))
		}
		return "", "", err
	}
	return m.Workspace.Branch, repo.CheckedOut(ctx), nil
}
