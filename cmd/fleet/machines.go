package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/agentfleet/agentfleet/fleet"
	"github.com/agentfleet/agentfleet/fleet/cockpit"
	"github.com/agentfleet/agentfleet/internal/egress"
	"github.com/agentfleet/agentfleet/internal/termsafe"
	"github.com/agentfleet/agentfleet/internal/vm"
	"github.com/spf13/cobra"
)

// defaultMemory is fleet.DefaultMemoryMiB as --memory says it.
var defaultMemory = fmt.Sprintf("%dG", fleet.DefaultMemoryMiB/1024)

type machineOpts struct {
	image    string
	cpus     int
	memory   string
	force    bool
	sync     string
	project  string
	excludes []string
	writable bool
	noWarm   bool
	cold     bool
	arch     string
	idle     string // --idle-suspend
	noPre    bool   // --no-prebuild
	waitQ    bool   // --wait-queued
	net      fleet.NetworkOverrides
}

func (o *machineOpts) addFlags(cmd *cobra.Command) {
	cmd.Flags().StringVar(&o.image, "image", "", "base image NAME or NAME@VERSION (default: "+strings.Join(fleet.DefaultImages, " if built, else ")+")")
	cmd.Flags().StringVar(&o.arch, "arch", "", "guest architecture, amd64 or arm64: picks that build of --image, and runs one\nthis host would emulate (an arm64 image on an amd64 host with KVM)")
	cmd.Flags().IntVar(&o.cpus, "cpus", fleet.DefaultCPUs, "virtual CPUs per machine")
	cmd.Flags().StringVar(&o.memory, "memory", defaultMemory, "memory per machine (e.g. 2048M, 4G)")
	cmd.Flags().BoolVar(&o.force, "force", false, "spawn even if the host lacks free memory for all machines, or on VirtualBox 7.2.4")
	cmd.Flags().BoolVar(&o.noWarm, "no-warm", false, "do not make a warm template for this shape: restore from one only if it exists,\nelse boot cold (by default the first spawn of a shape makes one: one cold boot)")
	cmd.Flags().BoolVar(&o.noPre, "no-prebuild", false, "do not restore from (or make) the project's prebuild: each machine runs fleet.hcl's setup")
	cmd.Flags().BoolVar(&o.waitQ, "wait-queued", true, "slurm: wait for machines whose jobs are still queued after 15 s; with =false\nthey start in the background when Slurm runs them (fleet ls shows why they wait)")
	cmd.Flags().BoolVar(&o.cold, "cold", false, "boot every machine from its disk, even where a warm template exists")
	// --warm was the opt-in before warm clones became the default.
	cmd.Flags().Bool("warm", true, "")
	_ = cmd.Flags().MarkHidden("warm")
	cmd.Flags().StringVar(&o.sync, "sync", "", "how the project reaches /workspace: git, rsync, shared or none\n(default: fleet.hcl's sync, else git inside a git repository, rsync elsewhere)")
	cmd.Flags().StringVar(&o.project, "project", "", "project folder to bring in (default: the current folder)")
	cmd.Flags().StringArrayVar(&o.excludes, "exclude", nil, "rsync: also leave out this pattern (repeatable; .gitignore is always honoured)")
	cmd.Flags().BoolVar(&o.writable, "writable", false, "shared: let the VMs write the host folder")
	cmd.Flags().StringVar(&o.net.Egress, "egress", "", "what the VMs may reach: allowlist (only named domains, through the host proxy),\nnone, or open (default: fleet.hcl's, else allowlist)")
	cmd.Flags().StringArrayVar(&o.net.Allow, "allow", nil, "allowlist: also allow DOMAIN or *.SUFFIX (repeatable)")
	cmd.Flags().StringSliceVar(&o.net.Presets, "preset", nil, "allowlist presets to start from (default: fleet.hcl's, else claude)")
	cmd.Flags().StringVar(&o.net.Credentials, "credentials", "", "how agents get the model API key: proxy (a per-VM token the host swaps\nfor the key, which never enters the VM), env (into the session's\nenvironment) or none (default: fleet.hcl's, else proxy)")
	cmd.Flags().StringVar(&o.net.CredentialCommand, "credential-command", "", "proxy: a host command that prints the key (e.g. a password manager's CLI),\nrun when machines start; default: ANTHROPIC_API_KEY or CLAUDE_CODE_OAUTH_TOKEN")
	cmd.Flags().StringVar(&o.net.Upstream, "credential-upstream", "", "proxy: where API calls go (default https://api.anthropic.com)")
	addBudgetFlags(cmd, &o.net.Budget)
	cmd.Flags().StringVar(&o.idle, "idle-suspend", "", idleSuspendHelp+"\n(default: fleet.hcl's idle_suspend, else never)")
}

// addBudgetFlags adds --budget-usd and --budget-tokens (spawn, up, run).
func addBudgetFlags(cmd *cobra.Command, b *egress.Budget) {
	cmd.Flags().Float64Var(&b.USD, "budget-usd", 0, "cap each machine's model spend at this many US dollars, counted by the\ncredential proxy (default: fleet.hcl's budget, else none)")
	cmd.Flags().Int64Var(&b.Tokens, "budget-tokens", 0, "cap each machine's model tokens (input, cache and output) at this many")
}

func (o *machineOpts) request(cmd *cobra.Command, g *globals, c *fleet.Controller, count int) (fleet.SpawnRequest, error) {
	ctx := cmd.Context()
	mem, err := parseMemory(o.memory)
	if err != nil {
		return fleet.SpawnRequest{}, err
	}
	warm := fleet.WarmAuto
	switch {
	case o.cold && o.noWarm:
		return fleet.SpawnRequest{}, errors.New("--cold and --no-warm: choose one (--cold never restores; --no-warm restores only from an existing template)")
	case o.cold:
		warm = fleet.WarmNever
	case o.noWarm:
		warm = fleet.WarmExisting
	}
	ws, proj, err := o.workspace(ctx)
	if err != nil {
		return fleet.SpawnRequest{}, err
	}
	var arch vm.Arch
	if o.arch != "" {
		if arch, err = vm.ParseArch(o.arch); err != nil {
			return fleet.SpawnRequest{}, err
		}
	}
	img, err := fleet.SpawnImage(imageStore(c.Layout), o.image, arch, c.Driver)
	if err != nil {
		return fleet.SpawnRequest{}, err
	}
	netReq, err := proj.Network(o.net)
	if err != nil {
		return fleet.SpawnRequest{}, err
	}
	idle, err := proj.IdleSuspendFor(o.idle)
	if err != nil {
		return fleet.SpawnRequest{}, err
	}
	return fleet.SpawnRequest{Fleet: c.Fleet, Count: count, CPUs: o.cpus, MemoryMiB: mem, Force: o.force, Project: &proj, NoPrebuild: o.noPre, WaitQueued: o.waitQ,
		Image: img, Workspace: ws, Network: netReq, Warm: warm, Arch: arch, IdleSuspend: idle}, nil
}

func newSpawnCmd(g *globals) *cobra.Command {
	o := &machineOpts{}
	var t taskOpts
	cmd := &cobra.Command{
		Use:   "spawn N",
		Short: "Create and boot N linked-clone machines in the fleet",
		Long: `Plans N machines, clones them from the base image (qcow2 overlays, milliseconds
each) and starts them in parallel, returning when every one answers SSH with
its pinned host key. Machines are named <fleet>-1 ... <fleet>-N; spawning into
an existing fleet adds machines. If any machine fails (or Ctrl-C), everything
this spawn created is removed again.

Machines are restored from the image's warm template for their shape (CPUs,
memory, network) instead of booted: seconds instead of a boot. The first
spawn of a shape makes the template (one cold boot); fleet image build makes
the default one. Each clone gets its own randomness, machine-id, hostname,
host key and tokens over a host-only channel before it uses the network.
--sync shared and VirtualBox boot cold, and say why.

With --provider slurm (or fleet.hcl's provider = "slurm"), each machine is
one Slurm job on a cluster node, restored there from that node's own warm
template (a node makes it on first use: one cold boot there); Slurm places
and queues them, and fleet ls shows each job, its node and why it waits.`,
		Example: `  fleet spawn 4
  fleet spawn 32 --provider slurm --wait-queued=false
  fleet spawn 4 --task 'Make the failing tests in ./parser pass'
  fleet spawn 3 --tasks tasks.txt && fleet wait
  fleet spawn 2 --image debian-12 --cpus 2 --memory 4G
  fleet spawn 2 --cpus 8 --memory 16G --no-warm   # a one-off shape: no template
  fleet spawn 1 --cold                            # a real boot from the disk
  fleet spawn 1 --name scratch`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := parseCount(args[0])
			if err != nil {
				return err
			}
			c, err := g.controller(cmd)
			if err != nil {
				return err
			}
			defer c.Close()
			tasks, sreq, err := t.load(n, o.project)
			if err != nil {
				return err
			}
			req, err := o.request(cmd, g, c, n)
			if err != nil {
				return err
			}
			for _, task := range tasks {
				r := sreq
				r.Task = task
				req.Sessions = append(req.Sessions, r)
			}
			ms, err := c.Spawn(cmd.Context(), req)
			if err != nil {
				return err
			}
			for _, m := range ms {
				fmt.Fprintln(cmd.OutOrStdout(), m.Name)
			}
			return nil
		},
	}
	o.addFlags(cmd)
	t.addFlags(cmd, true)
	cmd.Long += "\n\nWith --task, --task-file or --tasks, each machine then starts an agent\n(see fleet run). " + tasksFileHelp
	return cmd
}

func newUpCmd(g *globals) *cobra.Command {
	o := &machineOpts{}
	cmd := &cobra.Command{
		Use:   "up",
		Short: "One throwaway VM for this project: create it, or start it if it exists",
		Example: `  cd ~/src/myproj && fleet up && fleet ssh myproj-1
  fleet up --memory 4G`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.controller(cmd)
			if err != nil {
				return err
			}
			defer c.Close()
			s, err := c.Store().Load()
			if err != nil {
				return err
			}
			var name string
			if len(s.Machines) > 0 {
				m := s.Machines[0]
				name = m.Name
				if err := o.applyIdleSuspend(cmd, c, m); err != nil {
					return err
				}
				st, err := c.Status(cmd.Context())
				if err != nil {
					return err
				}
				if st[0].State != fleet.StateRunning {
					if err := c.Start(cmd.Context(), []string{name}, false, fleet.StartOptions{}); err != nil {
						return err
					}
				} else {
					fmt.Fprintf(cmd.ErrOrStderr(), "%s is already running\n", name)
				}
			} else {
				req, err := o.request(cmd, g, c, 1)
				if err != nil {
					return err
				}
				ms, err := c.Spawn(cmd.Context(), req)
				if err != nil {
					return err
				}
				name = ms[0].Name
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s is up: fleet ssh %s\n", name, name)
			return nil
		},
	}
	o.addFlags(cmd)
	return cmd
}

func newLsCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List the fleet's machines: state, image, address, uptime",
		Long: `One row per machine: its state, where it listens, and its agent (running,
waiting for input, succeeded, failed with its exit status, lost), with the
model tokens and cost the credential proxy counted, and their total.
HOST MEM is a running machine's host memory: its own + what it shares
(for a warm clone, mostly its template's RAM); --json breaks it down.`,
		Example: "  fleet ls\n  fleet ls --json | jq -r '.[] | select(.state==\"dead\") | .name'\n  fleet ls --json | jq '[.[].spend.cost_usd // 0] | add'\n  fleet ls --json | jq '[.[].memory.unique_bytes // 0] | add'",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.controller(cmd)
			if err != nil {
				return err
			}
			st, err := c.Status(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd, st)
			}
			if len(st) == 0 {
				fmt.Fprintf(cmd.ErrOrStderr(), "fleet %s has no machines (create some with: fleet spawn N)\n", c.Fleet)
				return nil
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			// Machines of a batch scheduler add its job and node.
			scheduled := false
			for _, m := range st {
				scheduled = scheduled || m.Placement != nil
			}
			jobHead := ""
			if scheduled {
				jobHead = "JOB\tNODE\t"
			}
			fmt.Fprintln(tw, "NAME\tSTATE\tPROVIDER\t"+jobHead+"IMAGE\tADDRESS\tUPTIME\tCPUS\tMEMORY\tHOST MEM\tTOKENS\tCOST\tAGENT")
			var spends []*fleet.Spend
			for _, m := range st {
				spends = append(spends, m.Spend)
				up := "-"
				if m.State == fleet.StateRunning && m.UptimeSec > 0 {
					up = (time.Duration(m.UptimeSec) * time.Second).String()
				}
				addr := m.Address
				if addr == "" {
					addr = "-"
				}
				agent := "-"
				if m.Agent != nil {
					agent = agentCell(*m.Agent, "")
				}
				tokens, cost := spendCells(m.Spend)
				state := m.State
				if m.SuspendReason != "" {
					state += " (" + m.SuspendReason + ")"
				}
				name := m.Name
				if m.ForkOf != "" {
					name += " (fork of " + m.ForkOf + ")"
				}
				provider := cell(m.Provider)
				if scheduled {
					job, node := "-", "-"
					if p := m.Placement; p != nil {
						job = p.Job + " " + strings.ToLower(p.State)
						if p.Node != "" {
							node = p.Node
						}
					}
					provider += "\t" + cell(job) + "\t" + cell(node)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%dM\t%s\t%s\t%s\t%s\n", cell(name), cell(state), provider, cell(m.Image), cell(addr), up, m.CPUs, m.MemoryMiB, cockpit.HostMem(m.Memory), tokens, cost, cell(agent))
			}
			if total := fleet.TotalSpend(spends); total.Calls > 0 {
				fmt.Fprintf(tw, "TOTAL\t\t\t\t\t\t\t\t\t%s\t%s\t\n", cockpit.HumanTokens(total.Tokens()), cockpit.Dollars(total.CostUSD))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newExecCmd(g *globals) *cobra.Command {
	var all bool
	cmd := &cobra.Command{
		Use:   "exec VM|--all -- CMD [ARG...]",
		Short: "Run a command in machines over their kept SSH connection",
		Long: `Runs CMD in the named machine (or all, in parallel) as the agent user.
Each argument arrives in the guest exactly as given. The exit status is the
command's; with --all, each output line is prefixed with the machine's name
and the status is the worst one: the highest, 255 for a machine that could
not run it or a status no process can exit with (so 256 never reads as 0).
On a terminal, control bytes and escape sequences in the output are shown
escaped; into a pipe or a file the output is as the command wrote it.`,
		Example: `  fleet exec myproj-1 -- uname -a
  fleet exec --all -- sh -c 'cd /workspace && git log --oneline | head -3'`,
		RunE: func(cmd *cobra.Command, args []string) error {
			dash := cmd.ArgsLenAtDash()
			var names, argv []string
			if dash < 0 {
				return fmt.Errorf("put the command after --, e.g. fleet exec %s -- hostname", "VM")
			}
			names, argv = args[:dash], args[dash:]
			if len(argv) == 0 {
				return fmt.Errorf("no command given after --")
			}
			if err := machineArgs(names, all); err != nil {
				return err
			}
			c, err := g.controller(cmd)
			if err != nil {
				return err
			}
			defer c.Close()
			s, err := c.Store().Load()
			if err != nil {
				return err
			}
			ms, err := c.Select(s, names, all)
			if err != nil {
				return err
			}
			release, err := keepAwake(cmd, c, ms)
			if err != nil {
				return err
			}
			defer release()
			// A terminal gets the guests' output cleaned; a pipe gets it
			// as it is.
			stdout, flushOut := forPerson(cmd.OutOrStdout())
			stderr, flushErr := forPerson(cmd.ErrOrStderr())
			res := c.Sessions().Exec(cmd.Context(), ms, argv, os.Stdin, stdout, stderr, all || len(ms) > 1)
			flushOut()
			flushErr()
			for _, r := range res {
				if r.Err != nil {
					fmt.Fprintln(cmd.ErrOrStderr(), "fleet: "+termsafe.Text(fleet.Named(r.Machine, r.Err).Error()))
				}
			}
			if code := fleet.WorstExit(res); code != 0 {
				return exitError{code}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "run in every machine of the fleet")
	return cmd
}

func lifecycleCmd(g *globals, use, short, example string, run func(*fleet.Controller, *cobra.Command, []string, bool) error) *cobra.Command {
	var all bool
	cmd := &cobra.Command{
		Use: use + " VM...|--all", Short: short, Example: example,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := machineArgs(args, all); err != nil {
				return err
			}
			c, err := g.controller(cmd)
			if err != nil {
				return err
			}
			defer c.Close()
			return run(c, cmd, args, all)
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "every machine of the fleet")
	return cmd
}

func newStartCmd(g *globals) *cobra.Command {
	var o fleet.StartOptions
	cmd := lifecycleCmd(g, "start", "Boot stopped or dead machines, resume suspended ones, continue paused ones",
		"  fleet start myproj-2\n  fleet start --all\n  fleet start --discard-memory myproj-2   # a suspended machine whose saved state is lost",
		func(c *fleet.Controller, cmd *cobra.Command, args []string, all bool) error {
			return c.Start(cmd.Context(), args, all, o)
		})
	cmd.Flags().BoolVar(&o.DiscardMemory, "discard-memory", false, "boot a suspended machine from its disk, dropping its saved memory")
	return cmd
}

func newSuspendCmd(g *globals) *cobra.Command {
	cmd := lifecycleCmd(g, "suspend", "Save machines' memory to disk and free their RAM; resume picks up where they were",
		"  fleet suspend myproj-2\n  fleet suspend --all\n  fleet resume --all",
		func(c *fleet.Controller, cmd *cobra.Command, args []string, all bool) error {
			return c.Suspend(cmd.Context(), args, all)
		})
	cmd.Long = `Stops each machine, saves its RAM and device state in its folder (about as
large as the memory the guest uses) and ends its QEMU, so an idle agent
holds no host memory. fleet resume (or fleet start) restores it where it
was: processes, the agent's tmux session, open files; the guest clock is
set to the host's. Collect, diff and destroy work on a suspended machine
(collect resumes it for the while). Machines with a shared folder cannot
be suspended: virtiofs state cannot be saved.`
	return cmd
}

func newResumeCmd(g *globals) *cobra.Command {
	return lifecycleCmd(g, "resume", "Resume suspended machines where they were (fleet start does the same)",
		"  fleet resume myproj-2\n  fleet resume --all",
		func(c *fleet.Controller, cmd *cobra.Command, args []string, all bool) error {
			return c.Start(cmd.Context(), args, all, fleet.StartOptions{})
		})
}

func newStopCmd(g *globals) *cobra.Command {
	return lifecycleCmd(g, "stop", "Power machines off (ACPI, then forced after 60s); disks are kept",
		"  fleet stop myproj-2\n  fleet stop --all",
		func(c *fleet.Controller, cmd *cobra.Command, args []string, all bool) error {
			return c.Stop(cmd.Context(), args, all)
		})
}

func newDestroyCmd(g *globals) *cobra.Command {
	var o fleet.DestroyOptions
	cmd := lifecycleCmd(g, "destroy", "Remove machines: process, disk, seed, port forward and state",
		"  fleet destroy myproj-2\n  fleet destroy --all --collect\n  fleet destroy --all --name myproj --force",
		func(c *fleet.Controller, cmd *cobra.Command, args []string, all bool) error {
			return c.Destroy(cmd.Context(), args, all, o)
		})
	cmd.Long = `Removes machines completely. A machine whose workspace has work no collect
has brought to the host yet (new commits, uncommitted changes, changed files)
is refused, by name, and nothing is destroyed: collect first, pass --collect
to collect and then destroy, or --force to discard the work.`
	cmd.Flags().BoolVar(&o.Force, "force", false, "destroy even machines with uncollected work (it is lost)")
	cmd.Flags().BoolVar(&o.Collect, "collect", false, "collect each machine's work first")
	return cmd
}

// spendCells renders a machine's tokens and cost ("-" when nothing
// measures them), with the cap when one is set.
func spendCells(s *fleet.Spend) (tokens, cost string) {
	if s == nil {
		return "-", "-"
	}
	tokens, cost = cockpit.HumanTokens(s.Tokens()), cockpit.Dollars(s.CostUSD)
	if s.Budget.Tokens > 0 {
		tokens += "/" + cockpit.HumanTokens(s.Budget.Tokens)
	}
	if s.Budget.USD > 0 {
		cost += "/" + cockpit.Dollars(s.Budget.USD)
	}
	if s.Reached {
		cost += " budget reached"
	}
	return tokens, cost
}

// cell is one table cell of what may have come from a guest (an agent's
// state, a phase): one line, no raw control bytes, and no tab to shift
// the columns.
func cell(s string) string { return termsafe.Line(s) }

func newCompactCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := lifecycleCmd(g, "compact", "Move waiting machines into fresh QEMU processes that hold a fraction of the host memory",
		"  fleet compact myproj-2\n  fleet compact --all\n  fleet compact --all --json | jq '.[] | {name, unique_after_bytes}'",
		func(c *fleet.Controller, cmd *cobra.Command, args []string, all bool) error {
			res, err := fleet.ParkingOf(c).Compact(cmd.Context(), args, all)
			if asJSON && res != nil {
				b, jerr := json.MarshalIndent(res, "", "  ")
				if jerr != nil {
					return jerr
				}
				fmt.Fprintln(cmd.OutOrStdout(), string(b))
			}
			return err
		})
	cmd.Long = `Moves each running machine into a new QEMU process, where it goes on
where it was after standing still for about a second: processes, the
agent's tmux session, files, its SSH port and host key. The old process
had built up memory of its own since the machine started (under
emulation, mostly the code it translated); the new one starts without it,
and of the guest's memory holds only the pages the guest wrote since its
warm template: the rest stays shared with the template's other clones.
fleet ls shows each machine's host memory before and after.

For machines that wait: an agent done or waiting for review keeps its
place at a fraction of the memory and answers at once (fleet suspend
frees all of it, but must resume). A machine busy again translates the
code it runs again, at first more slowly.

A machine with a connection open through its network (an SSH session,
fleet exec, an agent's API call in flight) is left as it is, with the
reason: the move would cut it. So are suspended and stopped machines.
Only warm clones (fleet spawn, fleet fork) can be compacted; not machines
booted from their disk, nor ones with a shared folder (--sync shared).`
	cmd.Flags().BoolVar(&asJSON, "json", false, "print each machine's result as JSON (pid, paused_ms, unique_before_bytes, unique_after_bytes, kept_bytes, skipped)")
	return cmd
}
