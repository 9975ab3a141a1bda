package main

import (
	"context"
	"fmt"
	"io"

	"github.com/agentfleet/agentfleet/fleet"
	"github.com/agentfleet/agentfleet/internal/termsafe"
	"github.com/agentfleet/agentfleet/internal/workspace"
	"github.com/spf13/cobra"
)

// workspace is how the project reaches the VMs, and its fleet.hcl.
func (o *machineOpts) workspace(ctx context.Context) (fleet.WorkspaceRequest, fleet.Project, error) {
	return fleet.ProjectWorkspace(ctx, o.project, o.sync, o.excludes, o.writable)
}

// projectSettings is the fleet.hcl for a project folder ("" means the
// working directory).
func projectSettings(ctx context.Context, dir string) (fleet.Project, error) {
	return fleet.ProjectAt(ctx, dir)
}

func newCollectCmd(g *globals) *cobra.Command {
	var all, asJSON bool
	var into, maxSize string
	var maxEntries int64
	cmd := &cobra.Command{
		Use:   "collect VM...|--all",
		Short: "Bring agents' work to the host: git branches fleet/<vm>, or a results folder",
		Long: `In git mode, fetches each VM's commits into this repository as the branch
fleet/<vm>; whatever the agent left uncommitted arrives as one more commit on
top, labelled as such. The VM sends a pack that is checked like any fetch from
an untrusted remote (git index-pack --strict) and capped by --max-size, both
what it sends and what its objects inflate to; its refs, config and hooks
never reach the host, and the host's working tree, index, HEAD, hooks and
config are not written.

In rsync mode, copies /workspace into FLEET_HOME/fleets/<fleet>/results/<vm>
(or --into DIR/<vm>), never over the project itself, within --max-size and
--max-entries (every file, folder and link counts).

The summary lists commits and files per machine and flags paths that can run
code on the host or in CI, in any letter case: git's own files (.git*,
.lfsconfig, and what this repository's core.hooksPath, core.fsmonitor and
included config point at), CI (.github/, .gitlab-ci.yml, ...), agent and
editor settings (.claude/, CLAUDE.md, AGENTS.md, .cursor/, .mcp.json,
.vscode/, .idea/, .devcontainer/), environments (.envrc, .env, mise and
asdf files), build and task files (Makefile, GNUmakefile, justfile,
Taskfile.yml, Dockerfile, build.rs, setup.py, pyproject.toml, Gradle and
Maven files, ...), package-manager config (.npmrc, .yarnrc.yml,
.pnpmfile.cjs, .cargo/, pip.conf, ...), test configuration (conftest.py,
pytest.ini, jest.config.*, ...) and package.json scripts: review those
before merging.`,
		Example: `  fleet collect --all
  fleet collect myproj-2 && git log --oneline main..fleet/myproj-2
  fleet collect --all --json | jq '.[] | select(.flagged | length > 0)'
  fleet collect --all --into ~/results   # rsync mode`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := machineArgs(args, all); err != nil {
				return err
			}
			max, err := parseSize(maxSize)
			if err != nil {
				return fmt.Errorf("--max-size: %w", err)
			}
			c, err := g.controller(cmd)
			if err != nil {
				return err
			}
			defer c.Close()
			sums, err := c.Collect(cmd.Context(), args, all, fleet.CollectOptions{Into: into, MaxBytes: max, MaxEntries: maxEntries})
			if asJSON {
				if perr := printJSON(cmd, sums); perr != nil {
					return perr
				}
			} else {
				printSummaries(cmd.OutOrStdout(), sums)
			}
			return err
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "every machine of the fleet")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().StringVar(&into, "into", "", "rsync mode: put results in DIR/<vm> instead of the fleet's results folder")
	cmd.Flags().StringVar(&maxSize, "max-size", "2G", "refuse more than this from one VM (e.g. 500M, 2G); in git mode also what its objects inflate to")
	cmd.Flags().Int64Var(&maxEntries, "max-entries", fleet.DefaultMaxEntries, "rsync mode: refuse more files, folders and links than this from one VM")
	return cmd
}

// printSummaries prints what collect brought in. Every name in it may
// come from the VM, so each goes through termsafe.Line: a file named with
// escape sequences or a newline cannot erase or forge a line of the summary.
func printSummaries(w io.Writer, sums []workspace.Summary) {
	for _, s := range sums {
		machine := termsafe.Line(s.Machine)
		switch {
		case s.Into != "":
			fmt.Fprintf(w, "%s: results in %s\n", machine, termsafe.Line(s.Into))
			continue
		case s.Unchanged:
			fmt.Fprintf(w, "%s: nothing new\n", machine)
			continue
		}
		extra := ""
		if s.Uncommitted {
			extra = " (the last one is its uncommitted work)"
		}
		fmt.Fprintf(w, "%s: %s  %d commit(s)%s, %d file(s)\n", machine, termsafe.Line(s.Branch), s.Commits, extra, len(s.Files))
		flagged := make(map[string]bool, len(s.Flagged))
		for _, f := range s.Flagged {
			flagged[f] = true
		}
		for _, f := range s.Files {
			mark := " "
			if flagged[f] {
				mark = "!"
			}
			fmt.Fprintf(w, "  %s %s\n", mark, termsafe.Line(f))
		}
		if len(s.Flagged) > 0 {
			fmt.Fprintf(w, "  ! %d path(s) can run code on the host or in CI: review them before merging\n", len(s.Flagged))
		}
	}
}

func newDiffCmd(g *globals) *cobra.Command {
	var stat bool
	cmd := &cobra.Command{
		Use:   "diff VM",
		Short: "Show what an agent changed since its starting point (collects first)",
		Example: `  fleet diff myproj-1
  fleet diff myproj-1 --stat`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.controller(cmd)
			if err != nil {
				return err
			}
			defer c.Close()
			// Cleaned on a terminal; byte for byte into a pipe (| git apply).
			out, flush := forPerson(cmd.OutOrStdout())
			err = c.Diff(cmd.Context(), args[0], stat, out)
			flush()
			return err
		},
	}
	cmd.Flags().BoolVar(&stat, "stat", false, "a summary per file instead of the patch")
	return cmd
}

func newApplyCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "apply VM",
		Short: "Merge an agent's collected branch into the current branch",
		Long: `Merges fleet/<vm> (run fleet collect first) into the branch checked out in
the project, as a merge commit, with hooks and fsmonitor off. Refuses when
tracked files have uncommitted changes, so nothing of yours is mixed into the
merge or lost, and when the branch changes what git on this host would run
on its own later (.gitattributes, .lfsconfig, files under this repository's
core.hooksPath or named by core.fsmonitor, config it includes from the tree):
read those with fleet diff, then merge by hand.`,
		Example: `  fleet collect myproj-1 && fleet diff myproj-1 --stat && fleet apply myproj-1`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.controller(cmd)
			if err != nil {
				return err
			}
			defer c.Close()
			branch, into, err := c.Apply(cmd.Context(), args[0], cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "merged %s into %s\n", termsafe.Line(branch), termsafe.Line(into))
			return nil
		},
	}
}

// parseSize reads a byte size in M or G (parseMemory's syntax).
func parseSize(s string) (int64, error) {
	mib, err := parseMemory(s)
	if err != nil {
		return 0, fmt.Errorf("invalid size %q (examples: 500M, 2G)", s)
	}
	return int64(mib) << 20, nil
}
