package main

import (
	"encoding/json"
	"fmt"

	"github.com/agentfleet/agentfleet/fleet"
	"github.com/spf13/cobra"
)

// sharedRandomNote is said when children run on what their source ran.
const sharedRandomNote = "note: the processes that run on keep their own random generators' state, the same in every child and the source until they reseed; a task (--task, --tasks) starts a child's agent afresh (other processes it left running still share it)"

func newForkCmd(g *globals) *cobra.Command {
	var t taskOpts
	var project string
	var force, asJSON bool
	cmd := &cobra.Command{
		Use:   "fork VM [N]",
		Short: "Branch a running machine into N children that go on from this moment",
		Long: `Captures the running machine VM at one moment: it pauses while its disk
is copied and its memory saved, then runs on. N children (default 1)
restore the capture and continue from that moment, each with its own
randomness, machine-id, hostname, pinned host key, credential token and
budget. Their disks are overlays of the captured disk and their memory is
the captured memory, shared copy-on-write.

The workspace comes along as it was. In git mode each child's branch
fleet/<child> starts where VM stood (its uncommitted work as one labelled
commit), so fleet diff on a child shows only what the child did after the
fork. Without a task the children keep running what VM was running. With
--task, --task-file or --tasks each child is given a follow-up instruction
that continues VM's conversation (Claude Code's --continue; other profiles
need continue = [...] in fleet.hcl): best-of-N from one point.

Processes that run on in the children keep their memory as it was at the
capture, a random generator of their own (OpenSSL's in node, say)
included: until it reseeds, it draws the same numbers in every child and
in VM. The kernel's randomness is each child's own, so new processes draw
fresh numbers, and so does each agent started again for a task.

An API call in flight at the capture is retried by the child's agent; the
source's own call finishes in the source. A child's calls are counted and
capped as its own. Machines with a live shared folder (--sync shared) and
drivers that cannot restore saved state (VirtualBox) cannot be forked.`,
		Example: `  fleet fork myproj-1                 # one child, running on
  fleet fork myproj-1 3 --tasks alternatives.txt && fleet wait
  fleet fork myproj-1 2 --task 'Now try it without the cache'
  fleet fork myproj-1 4 --json | jq -r '.children[]'`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			n := 1
			if len(args) == 2 {
				var err error
				if n, err = parseCount(args[1]); err != nil {
					return err
				}
			}
			tasks, sreq, err := t.load(n, project)
			if err != nil {
				return err
			}
			if tasks == nil {
				// The children run on; a profile is only read for a task.
				sreq = fleet.SessionRequest{}
			}
			c, err := g.controller(cmd)
			if err != nil {
				return err
			}
			defer c.Close()
			res, err := c.Forks().Fork(cmd.Context(), fleet.ForkRequest{Source: args[0], Count: n, Tasks: tasks, Session: sreq, Force: force})
			if err != nil {
				return err
			}
			if len(tasks) < n { // --tasks may hold fewer: the rest run on
				fmt.Fprintln(cmd.ErrOrStderr(), sharedRandomNote)
			}
			if asJSON {
				out := struct {
					Source   string   `json:"source"`
					Children []string `json:"children"`
					PausedMS int64    `json:"paused_ms"`
					ReadyMS  int64    `json:"ready_ms"`
					RAMBytes int64    `json:"ram_bytes"`
				}{Source: res.Source, PausedMS: res.Paused.Milliseconds(), ReadyMS: res.Ready.Milliseconds(), RAMBytes: res.RAMBytes}
				for _, m := range res.Children {
					out.Children = append(out.Children, m.Name)
				}
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(out)
			}
			for _, m := range res.Children {
				fmt.Fprintln(cmd.OutOrStdout(), m.Name)
			}
			return nil
		},
	}
	t.addFlags(cmd, true)
	cmd.Flags().StringVar(&project, "project", "", "folder whose fleet.hcl names profiles (default: the current folder)")
	cmd.Flags().BoolVar(&force, "force", false, "fork even if the host may not have the memory for the children")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the children and the timings as JSON")
	cmd.Long += "\n\n" + tasksFileHelp
	return cmd
}
