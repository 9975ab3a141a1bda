package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/agentfleet/agentfleet/fleet"
	"github.com/agentfleet/agentfleet/images"
	"github.com/agentfleet/agentfleet/internal/execx"
	"github.com/agentfleet/agentfleet/internal/layout"
	"github.com/agentfleet/agentfleet/internal/slurm"
	"github.com/agentfleet/agentfleet/internal/vm"
	"github.com/agentfleet/agentfleet/internal/vm/qemu"
	slurmvm "github.com/agentfleet/agentfleet/internal/vm/slurm"
	"github.com/agentfleet/agentfleet/internal/vm/virtualbox"
	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"
)

type globals struct {
	fleetName string
	accel     string
	provider  string
	debug     bool
	// logTo, if set, is where log lines go instead of stderr (fleet top's
	// actions: nothing may write past its screen).
	logTo io.Writer
}

func newRootCmd() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:   "fleet",
		Short: "Run coding agents in throwaway VMs",
		Long: `fleet bakes a VM base image and runs fleets of linked-clone VMs, one agent
per VM, reached over SSH with host keys pinned at creation.

State, images and caches live under FLEET_HOME (default ~/.local/share/agentfleet).`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	// "spawn -1" parses as a flag; say what is wrong with the count instead.
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		for _, a := range os.Args[1:] {
			if n, convErr := strconv.Atoi(a); convErr == nil && n < 0 && strings.Contains(err.Error(), strings.TrimPrefix(a, "-")) {
				return fmt.Errorf("machine count must be at least 1, got %d", n)
			}
		}
		return err
	})
	root.PersistentFlags().StringVar(&g.fleetName, "name", "", "fleet name (default: the current folder's name)")
	root.PersistentFlags().StringVar(&g.accel, "accel", os.Getenv("FLEET_ACCEL"), "QEMU accelerator: kvm, hvf or tcg (default: detect; env FLEET_ACCEL)")
	root.PersistentFlags().StringVar(&g.provider, "provider", os.Getenv("FLEET_PROVIDER"), "hypervisor for a new fleet: qemu (default), virtualbox, or slurm (each machine\na job on a cluster node; env FLEET_PROVIDER; fleet.hcl's provider); an existing fleet keeps its own")
	root.PersistentFlags().BoolVar(&g.debug, "debug", false, "print debug logs")
	// The Packer SDK's communicators log through the standard logger
	// (main discards it); --debug shows it with the rest.
	root.PersistentPreRun = func(*cobra.Command, []string) {
		if g.debug {
			log.SetOutput(os.Stderr)
		}
	}
	root.AddCommand(
		newSpawnCmd(g), newUpCmd(g), newLsCmd(g), newExecCmd(g), newSSHCmd(g), newSSHConfigCmd(g),
		newStartCmd(g), newStopCmd(g), newSuspendCmd(g), newResumeCmd(g), newCompactCmd(g), newDestroyCmd(g), newCollectCmd(g), newDiffCmd(g), newApplyCmd(g),
		newRunCmd(g), newForkCmd(g), newAttachCmd(g), newLogsCmd(g), newWaitCmd(g), newKillCmd(g), newTopCmd(g), newEventsCmd(g),
		newNetCmd(g), newDoctorCmd(g), newImageCmd(g), newPrebuildCmd(g), newParkCmd(g),
	)
	return root
}

func (g *globals) logger() hclog.Logger {
	lvl := hclog.Warn
	if g.debug {
		lvl = hclog.Debug
	}
	var out io.Writer = os.Stderr
	if g.logTo != nil {
		out = g.logTo
	}
	return hclog.New(&hclog.LoggerOptions{Name: "fleet", Level: lvl, Output: out})
}

func (g *globals) layout() (fleet.Layout, error) {
	h, err := layout.Home()
	return fleet.Layout{Root: h}, err
}

// resolveFleet picks the fleet a command acts on: --name, else the fleet
// of a machine named in args (machine names are FLEET-N, so `fleet ssh
// myproj-2` works from any folder), else the current folder's.
func (g *globals) resolveFleet(args []string) (string, error) {
	if g.fleetName != "" {
		return g.fleetName, fleet.ValidateFleetName(g.fleetName)
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	here, hereErr := fleet.FleetNameFromDir(wd)
	l, lerr := g.layout()
	if lerr != nil {
		return here, hereErr
	}
	has := func(f, machine string) bool {
		s, err := (fleet.Store{Layout: l, Fleet: f}).Load()
		return err == nil && s.Find(machine) != nil
	}
	for _, a := range args {
		if !machineNameRe.MatchString(a) {
			continue
		}
		if hereErr == nil && has(here, a) {
			return here, nil
		}
		if f := a[:strings.LastIndexByte(a, '-')]; fleet.ValidateFleetName(f) == nil && has(f, a) {
			return f, nil
		}
		if hereErr != nil {
			return "", fmt.Errorf("no fleet has a machine named %s (fleet ls --name FLEET lists one fleet's machines)", a)
		}
	}
	return here, hereErr
}

// machineNameRe matches the names fleet gives machines: FLEET-N.
var machineNameRe = regexp.MustCompile(`^[a-z0-9][a-z0-9-]*-[0-9]+$`)

// controller builds the controller for the selected fleet.
func (g *globals) controller(cmd *cobra.Command) (*fleet.Controller, error) {
	name, err := g.resolveFleet(cmd.Flags().Args())
	if err != nil {
		return nil, err
	}
	l, err := g.layout()
	if err != nil {
		return nil, err
	}
	log := g.logger()
	c := &fleet.Controller{
		Layout: l, Fleet: name, Log: log, Progress: cmd.ErrOrStderr(),
		StopGrace: 60 * time.Second, Parallel: 8,
	}
	// A fleet keeps its driver; a new one takes --provider, else
	// fleet.hcl's (of --project), else the default.
	provider, err := fleet.ChooseProvider(c.Store(), g.provider, func() string {
		project := ""
		if f := cmd.Flags().Lookup("project"); f != nil {
			project = f.Value.String()
		}
		// A broken fleet.hcl is reported by the command that reads it.
		proj, _ := projectSettings(cmd.Context(), project)
		return proj.Provider
	})
	if err != nil {
		return nil, err
	}
	if err := g.setDriver(cmd, c, provider); err != nil {
		return nil, err
	}
	return c, nil
}

// setDriver gives c the named hypervisor driver ("" means qemu).
func (g *globals) setDriver(cmd *cobra.Command, c *fleet.Controller, provider string) error {
	switch provider {
	case "", "qemu":
		accel := qemu.Accel(g.accel)
		switch accel {
		case "", qemu.AccelKVM, qemu.AccelHVF, qemu.AccelTCG:
		default:
			return fmt.Errorf("unknown accelerator %q (use kvm, hvf or tcg)", g.accel)
		}
		d := qemu.New(execx.Local{}, accel, c.Log)
		tb, err := qemu.ParseTCGCache(os.Getenv(qemu.TCGCacheEnv))
		if err != nil {
			return err
		}
		d.TCGCacheMiB = tb
		if self, err := os.Executable(); err == nil {
			d.ConsoleCommand = []string{self, qemu.ConsoleCommand}
		}
		c.Driver = d
		c.BeforeBoot = func() { warnTCG(cmd.ErrOrStderr(), string(d.Accel)) }
	case "virtualbox":
		vb := virtualbox.New(execx.Local{}, c.Layout.VirtualBoxDir(), c.Log)
		// spawn and up --force also allow VirtualBox 7.2.4.
		if f := cmd.Flags().Lookup("force"); f != nil && f.Value.String() == "true" {
			vb.Force = true
		}
		c.Driver, c.BeforeBoot = vb, nil
	case "slurm":
		project := ""
		if f := cmd.Flags().Lookup("project"); f != nil {
			project = f.Value.String()
		}
		proj, err := projectSettings(cmd.Context(), project)
		if err != nil {
			return err
		}
		d, err := slurmDriver(proj.Slurm, c.Log)
		if err != nil {
			return err
		}
		c.Driver, c.BeforeBoot = d, nil
	default:
		return fmt.Errorf("unknown provider %q (use qemu, virtualbox or slurm)", provider)
	}
	return nil
}

// slurmDriver is the Slurm driver for fleet.hcl's slurm block (nil: the
// defaults). Its nodes run QEMU, the driver whose facts it reports.
func slurmDriver(b *fleet.SlurmBlock, log hclog.Logger) (*slurmvm.Driver, error) {
	if b == nil {
		b = &fleet.SlurmBlock{}
	}
	self := b.FleetBinary
	if self == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, err
		}
		self = exe
	}
	d := &slurmvm.Driver{Runner: execx.Local{}, Self: self, NodeRoot: b.NodeDir, Log: log,
		Node: qemu.New(execx.Local{}, qemu.AccelKVM, nil).Capabilities(),
		Settings: slurm.Settings{Partition: b.Partition, Account: b.Account, QOS: b.QOS, TimeLimit: b.TimeLimit,
			Constraint: b.Constraint, ExtraArgs: b.ExtraArgs, MemoryOverheadMiB: b.MemoryOverheadMiB}}
	if err := d.Settings.Validate(); err != nil {
		return nil, fmt.Errorf("fleet.hcl slurm: %w", err)
	}
	if b.ImageRegistry != "" {
		r, err := images.OpenRemote(b.ImageRegistry, b.ImageRegistryPlainHTTP, "")
		if err != nil {
			return nil, fmt.Errorf("fleet.hcl slurm image_registry: %w", err)
		}
		// On a node, loopback is the node's own: another user's port there.
		if images.IsLoopback(r.Ref.Registry) {
			return nil, fmt.Errorf("fleet.hcl slurm image_registry %s is a loopback address: the nodes pull from it, so name an address they reach", r.Ref.Registry)
		}
		d.Registry = &slurmvm.ImageRegistry{Ref: b.ImageRegistry, PlainHTTP: b.ImageRegistryPlainHTTP}
	} else if b.ImageRegistryPlainHTTP {
		return nil, errors.New("fleet.hcl slurm: image_registry_plain_http without an image_registry")
	}
	return d, nil
}

// slurmNodeMain is a job's process on a cluster node: it starts its
// machine with the node's QEMU, restored from the node's own warm template
// when the controller asks for one.
func slurmNodeMain(args []string) int {
	return slurmvm.NodeMain(args, func() (vm.Driver, string) {
		d := qemu.New(execx.Local{}, "", hclog.NewNullLogger())
		if self, err := os.Executable(); err == nil {
			d.ConsoleCommand = []string{self, qemu.ConsoleCommand}
		}
		if d.Accel == qemu.AccelTCG {
			// The job's memory holds the guest and an overhead: bound
			// the translation cache to fit in it.
			d.TCGCacheMiB = 256
		}
		return d, string(d.Accel)
	}, fleet.NodeTemplates{}, func(ctx context.Context, reg slurmvm.ImageRegistry, sum string, size int64) (io.ReadCloser, error) {
		return images.OpenBlob(ctx, reg.Ref, reg.PlainHTTP, sum, size)
	})
}

// hostDrivers are every driver this host could run, built to ask about
// the host (fleet doctor), running their programs through r.
func hostDrivers(r execx.Runner, home string) []vm.Driver {
	return []vm.Driver{qemu.New(r, "", nil), virtualbox.New(r, layout.Paths{Root: home}.VirtualBoxDir(), nil)}
}

// driverCommands are the drivers' hidden entry points: helper processes
// they start by running this binary with the command's name first.
var driverCommands = map[string]func(args []string) int{
	qemu.ConsoleCommand: qemu.RunConsoleCommand,
	slurmvm.NodeCommand: slurmNodeMain,
}

// warnTCG says once, in one line, that there is no hardware acceleration
// (accel is QEMU's, as --accel names it).
func warnTCG(w io.Writer, accel string) {
	if qemu.Accel(accel) == qemu.AccelTCG {
		_, why := qemu.KVMUsable()
		fmt.Fprintf(w, "warning: no hardware virtualization (%s); using TCG software emulation, VMs will be slow\n", why)
	}
}

func imageStore(l fleet.Layout) images.Store {
	return images.Store{Root: l.ImagesDir()}
}

// parseCount parses a machine count: a positive integer.
func parseCount(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Errorf("machine count must be a whole number, got %q", s)
	}
	if n < 1 {
		return 0, fmt.Errorf("machine count must be at least 1, got %d", n)
	}
	if n > fleet.MaxMachines {
		return 0, fmt.Errorf("machine count %d is too many: a fleet holds at most %d machines", n, fleet.MaxMachines)
	}
	return n, nil
}

// parseMemory accepts "2048", "2048M", "2G", "2GiB".
func parseMemory(s string) (int, error) {
	t := strings.ToUpper(strings.TrimSpace(s))
	t = strings.TrimSuffix(strings.TrimSuffix(t, "IB"), "B")
	mult := 1
	switch {
	case strings.HasSuffix(t, "G"):
		mult, t = 1024, strings.TrimSuffix(t, "G")
	case strings.HasSuffix(t, "M"):
		t = strings.TrimSuffix(t, "M")
	}
	n, err := strconv.Atoi(t)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("invalid memory size %q (examples: 2048M, 4G)", s)
	}
	return n * mult, nil
}

// machineArgs validates "VM... | --all" arguments.
func machineArgs(args []string, all bool) error {
	if all && len(args) > 0 {
		return fmt.Errorf("name machines or pass --all, not both")
	}
	if !all && len(args) == 0 {
		return fmt.Errorf("name a machine or pass --all")
	}
	return nil
}
