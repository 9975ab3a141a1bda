package main

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"text/tabwriter"

	"github.com/agentfleet/agentfleet/builder"
	"github.com/agentfleet/agentfleet/internal/execx"
	"github.com/spf13/cobra"
	"os"
)

func newImageCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "image", Short: "Build and list base images"}
	var mirror string
	var keep bool
	build := &cobra.Command{
		Use:   "build NAME",
		Short: "Build a base image (debian-12) and promote it to latest",
		Long: `Builds a bootable image from a package mirror: root file system with
mmdebstrap, provisioned in a chroot, made disk-bootable with GRUB, stored as
qcow2 under FLEET_HOME/images/NAME/VERSION and promoted to latest. Needs root
(loop devices, mount, chroot). A disk built from the same recipe is reused
from the cache (FLEET_CACHE, default FLEET_HOME/cache).`,
		Example: `  sudo fleet image build debian-12
  sudo fleet image build debian-12 --mirror http://mirror.internal/debian`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := builder.Definition(args[0])
			if err != nil {
				return err
			}
			if os.Geteuid() != 0 {
				return fmt.Errorf("building an image needs root (loop devices, mount, chroot); run it with sudo")
			}
			l, err := g.layout()
			if err != nil {
				return err
			}
			cfg.Mirror, cfg.KeepOnFailure = mirror, keep
			cfg.Store = imageStore(l)
			cfg.TmpDir = filepath.Join(l.Root, "tmp")
			cfg.CacheDir = os.Getenv("FLEET_CACHE")
			if cfg.CacheDir == "" {
				cfg.CacheDir = filepath.Join(l.Root, "cache")
			}
			cfg.Runner = execx.Local{}
			cfg.Progress = cmd.ErrOrStderr()
			res, err := builder.Build(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s@%s\n", res.Image.Name, res.Image.Version)
			return nil
		},
	}
	build.Flags().StringVar(&mirror, "mirror", "", "package mirror URL (default: the one in /etc/apt)")
	build.Flags().BoolVar(&keep, "keep-on-failure", false, "keep the build folder when the build fails")
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
			imgs, err := imageStore(l).List()
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(imgs)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tVERSION\tLATEST\tSIZE\tBUILT")
			for _, i := range imgs {
				latest := ""
				if i.Latest {
					latest = "*"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%dM\t%s\n", i.Name, i.Version, latest, i.DiskBytes>>20, i.BuiltAt.Format("2006-01-02 15:04"))
			}
			return tw.Flush()
		},
	}
	ls.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.AddCommand(build, ls)
	return cmd
}
