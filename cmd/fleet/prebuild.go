package main

import (
	"fmt"

	"github.com/agentfleet/agentfleet/fleet"
	"github.com/agentfleet/agentfleet/internal/termsafe"
	"github.com/agentfleet/agentfleet/internal/vm"
	"github.com/spf13/cobra"
)

func newPrebuildCmd(g *globals) *cobra.Command {
	var imageRef, memory, project, arch string
	var cpus int
	var force, asJSON bool
	cmd := &cobra.Command{
		Use:   "prebuild",
		Short: "Run the project's setup once and save the machine, for spawn and up to restore",
		Long: `Makes the project's prebuild: one machine of the image is restored from its
warm template, the project comes in (as spawn brings it: git or rsync),
fleet.hcl's setup commands run in /workspace as the agent, and the machine
is saved as a template of the image version. spawn and up then restore
from it, bring /workspace to the project's current state, and do not run
setup again.

A prebuild is keyed by the image's template key (version, shape, network),
the setup commands, and the content of the inputs: fleet.hcl's
prebuild_inputs, or by default the lockfiles found in the project (at the
top and one folder down). A changed input makes a new prebuild; a stale one
is never used. An existing prebuild for the key is kept unless --force.

Setup runs under the project's egress policy and with no model credential:
nothing secret is in a prebuild. It holds the project's files, so it is kept
owner-only. A failed setup fails the prebuild with its output.

fleet image ls lists prebuilds; fleet image prune --prebuilds removes the
ones no machine uses.

On a Slurm cluster (--provider slurm, or fleet.hcl's provider) the prebuild
is made by a job of its own, on the node Slurm gives it, and kept in that
node's store: machines that land on that node restore it and skip the
setup; machines elsewhere restore their node's warm template and run the
setup. spawn makes one this way first when this host knows of none; it
prints where it is.`,
		Example: `  cd ~/src/myproj && fleet prebuild
  fleet prebuild --project ~/src/myproj --image debian-12 --cpus 4 --memory 8G
  fleet prebuild --force --json

  fleet prebuild --provider slurm --cpus 1 --memory 1G   # on a cluster node

  # nightly, after the image rebuild:
  30 3 * * * cd /home/me/src/myproj && fleet prebuild`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			mem, err := parseMemory(memory)
			if err != nil {
				return err
			}
			if cpus < 1 {
				return fmt.Errorf("--cpus must be at least 1")
			}
			var a vm.Arch
			if arch != "" {
				if a, err = vm.ParseArch(arch); err != nil {
					return err
				}
			}
			ws, proj, err := fleet.ProjectWorkspace(cmd.Context(), project, "", nil, false)
			if err != nil {
				return err
			}
			net, err := proj.Network(fleet.NetworkOverrides{})
			if err != nil {
				return err
			}
			c, err := g.controller(cmd)
			if err != nil {
				return err
			}
			defer c.Close()
			img, err := fleet.SpawnImage(imageStore(c.Layout), imageRef, a, c.Driver)
			if err != nil {
				return err
			}
			res, err := c.Templates().Prebuild(cmd.Context(), fleet.PrebuildRequest{Image: img, CPUs: cpus, MemoryMiB: mem, Arch: a,
				Workspace: ws, Project: proj, Network: net, Force: force})
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd, res)
			}
			if !res.Made {
				fmt.Fprintf(cmd.ErrOrStderr(), "%s already has this project's prebuild (%s); --force remakes it\n", termsafe.Line(res.Image), shortKey(res.Key))
			}
			if res.Host != "" {
				fmt.Fprintln(cmd.OutOrStdout(), termsafe.Line(res.Host))
				return nil
			}
			fmt.Fprintln(cmd.OutOrStdout(), termsafe.Line(res.Template.Dir))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&imageRef, "image", "", "base image NAME or NAME@VERSION (default: as spawn's)")
	f.StringVar(&arch, "arch", "", "guest architecture, amd64 or arm64 (as spawn's --arch)")
	f.IntVar(&cpus, "cpus", fleet.DefaultCPUs, "virtual CPUs of the machines it is for")
	f.StringVar(&memory, "memory", defaultMemory, "memory of the machines it is for")
	f.StringVar(&project, "project", "", "project folder (default: the current folder)")
	f.BoolVar(&force, "force", false, "remake the prebuild even if one exists for its key")
	f.BoolVar(&asJSON, "json", false, "print the prebuild as JSON")
	return cmd
}

// shortKey is the start of a prebuild key, as listings show it.
func shortKey(k string) string {
	if len(k) > 12 {
		return k[:12]
	}
	return k
}
