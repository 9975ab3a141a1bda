package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/agentfleet/agentfleet/builder"
	"github.com/agentfleet/agentfleet/fleet"
	"github.com/agentfleet/agentfleet/images"
	"github.com/agentfleet/agentfleet/internal/termsafe"
	"github.com/agentfleet/agentfleet/internal/vm"
	"github.com/agentfleet/agentfleet/provision"
	"github.com/spf13/cobra"
)

// Exit statuses of `fleet image build`, so a nightly job can tell them
// apart: 0 built (and promoted), 1 failed (nothing promoted), 3 skipped.
const exitSkipped = 3

func newImageCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "image", Short: "Build, list and prune base images"}
	cmd.AddCommand(newImageBuildCmd(g), newImageLsCmd(g), newImagePruneCmd(g), newImageWarmCmd(g), newImagePushCmd(g), newImagePullCmd(g))
	return cmd
}

func newImageBuildCmd(g *globals) *cobra.Command {
	var o builder.Options
	var outputs string
	var noWarm bool
	build := &cobra.Command{
		Use:   "build NAME",
		Short: "Bake a base image, verify it in a booted VM, then promote it to latest",
		Long: `Bakes NAME (ubuntu-24.04 or debian-12) with Docker, Node.js and Claude Code,
boots a clone of the result and checks it (docker info, docker build, node,
claude, the seeded Claude state), and only then stores it under
FLEET_HOME/images/NAME/VERSION and moves NAME's latest to it. It then makes
the warm template of the default machine shape (see fleet image warm), so
the first spawn restores instead of booting. A failed bake
or check leaves the previous latest, and every running fleet, untouched.

Sources:
  ubuntu-24.04   the official cloud image (downloaded with resume, checked
                 against SHA256SUMS), provisioned over SSH in a booted VM;
                 with --mirror URL, a root file system from that mirror
  debian-12      a root file system from the mirror in /etc/apt (or
                 --mirror), provisioned in a chroot at host speed
  --source-url/--checksum-url point either name at another cloud image.

Mirror builds need root (loop devices, mount, chroot). Disks built from the
same recipe are reused from FLEET_CACHE (default FLEET_HOME/cache).

--arch arm64 bakes an aarch64 image (default: this host's architecture).
On an amd64 Linux host its packages install in the chroot under
qemu-user-static (Debian: qemu-user-static binfmt-support arch-test), and
it is verified booted under qemu-system-aarch64 with UEFI firmware
(qemu-system-arm qemu-efi-aarch64). Each architecture has its own latest.

Exit status: 0 built and promoted, 3 skipped by --if-changed, 1 failed.`,
		Example: `  sudo fleet image build debian-12
  sudo fleet image build ubuntu-24.04 --mirror http://ubuntu-mirror.internal/ubuntu
  fleet image build ubuntu-24.04 --output qcow2,ova,vagrant
  sudo fleet image build debian-12 --script ./corp-tools.sh
  sudo fleet image build debian-12 --claude-version 2.1.330 --if-changed
  sudo fleet image build debian-12 --node-version 22
  sudo fleet image build debian-12 --arch arm64    # on amd64: under qemu-user-static

  # nightly, from cron (3: nothing changed):
  15 3 * * * root fleet image build debian-12 --if-changed; [ $? -ne 1 ]`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := g.layout()
			if err != nil {
				return err
			}
			opts := o
			opts.Name, opts.Home, opts.Accel = args[0], l.Root, g.accel
			if outputs != "" {
				opts.Outputs = strings.Split(outputs, ",")
			}
			cfg, err := opts.Config()
			if err != nil {
				return err
			}
			cfg.Progress = cmd.ErrOrStderr()
			warnTCG(cmd.ErrOrStderr(), cfg.Accel)
			res, err := builder.Build(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s@%s\n", res.Image.Name, res.Image.Version)
			if res.Skipped {
				return exitError{exitSkipped}
			}
			if noWarm || !provision.CanWarm(res.Image.Recipe) {
				return nil
			}
			// The default shape's template, so the first spawn restores
			// instead of booting. The image is already promoted: a failure
			// here only leaves that first spawn to make it.
			if _, _, err := warmImage(cmd, g, res.Image, fleet.DefaultCPUs, fleet.DefaultMemoryMiB, fleet.NetworkOverrides{}); err != nil {
				fmt.Fprintf(cmd.ErrOrStderr(), "warning: no warm template made (%v); the first spawn makes one\n", err)
			}
			return nil
		},
	}
	f := build.Flags()
	f.StringVar(&o.Mirror, "mirror", "", "build from this package mirror (default for debian-12: the one in /etc/apt)")
	f.StringVar(&o.SourceURL, "source-url", "", "build from the cloud image at this URL")
	f.StringVar(&o.ChecksumURL, "checksum-url", "", "SHA256SUMS file that lists the cloud image")
	f.StringVar(&o.Arch, "arch", "", "guest architecture: amd64 or arm64 (default: this host's, "+string(vm.HostArch())+")")
	f.StringVar(&o.Recipe, "recipe", "full", "provision recipe: "+strings.Join(provision.RecipeNames, ", ")+" (base: no Docker, Node or Claude Code)")
	f.StringVar(&o.ClaudeVersion, "claude-version", "latest", "Claude Code npm version or dist-tag to install")
	f.StringVar(&o.NodeVersion, "node-version", "lts", "Node.js: lts, a major (24) or a version (24.12.0), the official binaries from\nthe npm registry checked by its integrity hash; system keeps the distribution's")
	f.StringVar(&o.NpmRegistry, "npm-registry", "", "npm registry URL (default https://registry.npmjs.org/)")
	f.StringVar(&outputs, "output", "", "also export: "+strings.Join(builder.OutputKinds, ",")+" (comma-separated)")
	f.BoolVar(&o.IfChanged, "if-changed", false, "skip (exit 3) when recipe, source and resolved versions match latest")
	f.StringArrayVar(&o.ScriptFiles, "script", nil, "your own shell script, run as root after the toolchain and before generalize (repeatable; part of the recipe hash)")
	f.StringArrayVar(&o.CACertFiles, "ca-cert", nil, "PEM file of a certificate authority the image must trust (repeatable)")
	f.BoolVar(&o.NoHostCA, "no-host-ca", false, "do not copy this host's added CAs (/usr/local/share/ca-certificates) into the image")
	f.BoolVar(&o.KeepOnFailure, "keep-on-failure", false, "keep the build folder and stopped VMs when the build fails")
	f.BoolVar(&noWarm, "no-warm", false, "do not make the warm template of the default machine shape (2 CPUs, 2G) after the build")
	return build
}

func newImageLsCmd(g *globals) *cobra.Command {
	var asJSON bool
	ls := &cobra.Command{
		Use:     "ls",
		Short:   "List stored image versions",
		Example: "  fleet image ls\n  fleet image ls --json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := g.layout()
			if err != nil {
				return err
			}
			imgs, skipped, err := imageStore(l).Scan()
			if err != nil {
				return err
			}
			// A version whose manifest or disk does not pass its checks is
			// not listed (nor used): say which and why, on stderr.
			for _, sk := range skipped {
				fmt.Fprintf(cmd.ErrOrStderr(), "warning: %s@%s is not listed and cannot be used: %s (remove %s)\n",
					sk.Name, termsafe.Line(sk.Version), termsafe.Line(sk.Err.Error()), termsafe.Line(sk.Dir))
			}
			type row struct {
				images.Image
				Templates []images.Template `json:"warm_templates"`
				Prebuilds []images.Template `json:"prebuilds"`
			}
			rows := []row{}
			for _, i := range imgs {
				pre := images.Prebuilds(i)
				if pre == nil {
					pre = []images.Template{}
				}
				rows = append(rows, row{i, images.Templates(i), pre})
			}
			if asJSON {
				return printJSON(cmd, rows)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tVERSION\tARCH\tLATEST\tSIZE\tCLAUDE\tDOCKER\tNODE\tBUILT\tWARM")
			for _, r := range rows {
				i := r.Image
				latest := ""
				if i.Latest {
					latest = "*"
				}
				warm := []string{}
				for _, t := range r.Templates {
					warm = append(warm, fmt.Sprintf("%dcpu/%dM (%dM)", t.CPUs, t.MemoryMiB, t.Bytes>>20))
				}
				// Manifests may come from a registry: each field is one
				// clean line, whatever the store's checks let through.
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%dM\t%s\t%s\t%s\t%s\t%s\n", manifestCell(i.Name), manifestCell(i.Version), manifestCell(string(i.Arch)), latest, i.DiskBytes>>20,
					manifestCell(i.Packages["claude-code"]), manifestCell(i.Packages["docker"]), manifestCell(i.Packages["node"]), i.BuiltAt.Format("2006-01-02 15:04"), dash(strings.Join(warm, " ")))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			var pre [][]string
			for _, r := range rows {
				for _, t := range r.Prebuilds {
					pre = append(pre, []string{manifestCell(r.Name) + "@" + manifestCell(r.Version), manifestCell(t.Project), shortKey(t.Key),
						fmt.Sprintf("%dcpu/%dM", t.CPUs, t.MemoryMiB), fmt.Sprintf("%dM", t.Bytes>>20), age(time.Since(t.CreatedAt)), manifestCell(strings.Join(t.Setup, "; "))})
				}
			}
			if len(pre) == 0 {
				return nil
			}
			// Each prebuild under its image version: a table of its own,
			// since its columns are not a version's.
			fmt.Fprintln(cmd.OutOrStdout())
			tw = tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "PREBUILD OF\tPROJECT\tKEY\tSHAPE\tSIZE\tAGE\tSETUP")
			for _, p := range pre {
				fmt.Fprintln(tw, strings.Join(p, "\t"))
			}
			return tw.Flush()
		},
	}
	ls.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return ls
}

func newImagePruneCmd(g *globals) *cobra.Command {
	var keep int
	var asJSON, prebuilds bool
	prune := &cobra.Command{
		Use:   "prune --keep N | --prebuilds",
		Short: "Remove old image versions (keeping the newest N, latest, and any in use) or unused prebuilds",
		Long: `--keep N removes all but the newest N versions of each image, with their
warm templates and prebuilds. The latest version and every version a
machine still links to (in any fleet) are always kept.

--prebuilds removes every prebuild no machine links to, in every version
(the next spawn of its project makes it again, or fleet prebuild does).
With both, prebuilds go first, then versions.

--json prints the removed versions as a list; with --prebuilds, an object
{"versions": [...], "prebuilds": [...]}.`,
		Example: "  fleet image prune --keep 2\n  fleet image prune --keep 1 --json\n  fleet image prune --prebuilds\n  fleet image prune --keep 2 --prebuilds --json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if !cmd.Flags().Changed("keep") && !prebuilds {
				return errors.New("say how many versions to keep (--keep N), or remove unused prebuilds (--prebuilds)")
			}
			l, err := g.layout()
			if err != nil {
				return err
			}
			inUse, err := fleet.BaseImagesInUse(l)
			if err != nil {
				return fmt.Errorf("cannot tell which images machines use, so nothing was pruned: %w", err)
			}
			if prebuilds {
				return prunePrebuilds(cmd, imageStore(l), inUse, keep, cmd.Flags().Changed("keep"), asJSON)
			}
			removed, err := imageStore(l).Prune(keep, inUse)
			if asJSON {
				if removed == nil {
					removed = []images.Image{}
				}
				if jerr := printJSON(cmd, removed); jerr != nil {
					return jerr
				}
			} else {
				for _, i := range removed {
					fmt.Fprintf(cmd.OutOrStdout(), "removed %s@%s (%dM)\n", termsafe.Line(i.Name), termsafe.Line(i.Version), i.DiskBytes>>20)
				}
				if len(removed) == 0 && err == nil {
					fmt.Fprintln(cmd.OutOrStdout(), "nothing to prune")
				}
			}
			return err
		},
	}
	prune.Flags().IntVar(&keep, "keep", 0, "versions to keep per image (at least 1)")
	prune.Flags().BoolVar(&prebuilds, "prebuilds", false, "remove every prebuild no machine links to")
	prune.Flags().BoolVar(&asJSON, "json", false, "print what was removed as JSON")
	return prune
}

// prunePrebuilds is prune --prebuilds: the unused prebuilds, then (with
// --keep) the old versions.
func prunePrebuilds(cmd *cobra.Command, store images.Store, inUse map[string]bool, keep int, versions, asJSON bool) error {
	var out struct {
		Versions  []images.Image          `json:"versions"`
		Prebuilds []images.PrunedPrebuild `json:"prebuilds"`
	}
	var err error
	out.Prebuilds, err = store.PrunePrebuilds(inUse)
	if err == nil && versions {
		out.Versions, err = store.Prune(keep, inUse)
	}
	if asJSON {
		if out.Versions == nil {
			out.Versions = []images.Image{}
		}
		if out.Prebuilds == nil {
			out.Prebuilds = []images.PrunedPrebuild{}
		}
		if jerr := printJSON(cmd, out); jerr != nil {
			return jerr
		}
		return err
	}
	w := cmd.OutOrStdout()
	for _, p := range out.Prebuilds {
		fmt.Fprintf(w, "removed prebuild %s of %s for %s (%dM)\n", shortKey(p.Key), termsafe.Line(p.Image), manifestCell(p.Project), p.Bytes>>20)
	}
	for _, i := range out.Versions {
		fmt.Fprintf(w, "removed %s@%s (%dM)\n", termsafe.Line(i.Name), termsafe.Line(i.Version), i.DiskBytes>>20)
	}
	if err == nil && len(out.Prebuilds) == 0 {
		fmt.Fprintln(w, "no unused prebuilds to remove")
	}
	if err == nil && versions && len(out.Versions) == 0 {
		fmt.Fprintln(w, "no image versions to prune")
	}
	return err
}

// age is how long ago something was made, as a listing shows it: 45s,
// 12m, 5h, 3d.
func age(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// manifestCell is a table cell of text from a manifest: a cell (one clean
// line, no tab to shift the columns), "-" when empty.
func manifestCell(s string) string { return dash(cell(s)) }

// printJSON prints v as indented JSON, with every rune a terminal acts
// on escaped (the same JSON value: guest and registry strings are in it).
func printJSON(cmd *cobra.Command, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = cmd.OutOrStdout().Write(append(termsafe.JSON(b), '\n'))
	return err
}

// warmImage finds or makes img's warm template for machines of this
// shape.
func warmImage(cmd *cobra.Command, g *globals, img images.Image, cpus, mem int, net fleet.NetworkOverrides) (images.Template, bool, error) {
	req, err := (fleet.Project{}).Network(net)
	if err != nil {
		return images.Template{}, false, err
	}
	c, err := g.controller(cmd)
	if err != nil {
		return images.Template{}, false, err
	}
	defer c.Close()
	_, rec, err := req.Normalized(c.Driver)
	if err != nil {
		return images.Template{}, false, err
	}
	return c.Templates().Template(cmd.Context(), fleet.StoredImage(img, img.Disk), cpus, mem, rec)
}

func newImageWarmCmd(g *globals) *cobra.Command {
	var cpus int
	var memory, egressMode, creds string
	cmd := &cobra.Command{
		Use:   "warm NAME[@VERSION]",
		Short: "Make a warm template: one machine booted and saved, for spawn to restore",
		Long: `Boots one anonymous machine of the image (no project, token, user key or
open connection), waits until it is ready, and saves its RAM and device
state with its frozen disk under the image's folder. spawn restores clones
from it in seconds instead of booting each; every clone then gets
its own randomness, machine-id, hostname, host key, key, clock and tokens
over a host-only channel before it uses the network.

A template is keyed by everything that must match on restore: image
version, QEMU build, accelerator, machine type, CPU model, CPUs, memory
and network shape. spawn makes one on first use if none matches (not with
--no-warm); fleet image build makes the default shape's.`,
		Example: `  fleet image warm debian-12
  fleet image warm debian-12 --cpus 1 --memory 1G
  fleet spawn 4 --cpus 1 --memory 1G    # restores from it`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			mem, err := parseMemory(memory)
			if err != nil {
				return err
			}
			if cpus < 1 {
				return fmt.Errorf("--cpus must be at least 1")
			}
			l, err := g.layout()
			if err != nil {
				return err
			}
			img, err := imageStore(l).Resolve(args[0])
			if err != nil {
				return err
			}
			t, made, err := warmImage(cmd, g, img, cpus, mem, fleet.NetworkOverrides{Egress: egressMode, Credentials: creds})
			if err != nil {
				return err
			}
			if !made {
				fmt.Fprintf(cmd.ErrOrStderr(), "%s already has a warm template for %d CPUs and %d MiB\n", img.Name+"@"+img.Version, cpus, mem)
			}
			fmt.Fprintln(cmd.OutOrStdout(), t.Dir)
			return nil
		},
	}
	cmd.Flags().IntVar(&cpus, "cpus", fleet.DefaultCPUs, "virtual CPUs of the machines it is for")
	cmd.Flags().StringVar(&memory, "memory", defaultMemory, "memory of the machines it is for")
	cmd.Flags().StringVar(&egressMode, "egress", "", "network shape of the machines it is for: allowlist (default), none or open")
	cmd.Flags().StringVar(&creds, "credentials", "", "proxy (default), env or none: the proxy adds a forward")
	return cmd
}
