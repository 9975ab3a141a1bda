package main

import (
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/agentfleet/agentfleet/images"
	"github.com/agentfleet/agentfleet/internal/layout"
	"github.com/agentfleet/agentfleet/internal/termsafe"
	"github.com/spf13/cobra"
)

func openRemote(cmd *cobra.Command, g *globals, ref string, plainHTTP bool) (*images.Remote, images.Store, error) {
	l, err := g.layout()
	if err != nil {
		return nil, images.Store{}, err
	}
	store := imageStore(l)
	r, err := images.OpenRemote(ref, plainHTTP, filepath.Join(store.Root, layout.UploadsFolder))
	if err != nil {
		return nil, store, err
	}
	// Progress names what the registry sent: cleaned for the terminal.
	r.Progress = func(format string, args ...any) {
		fmt.Fprintln(cmd.ErrOrStderr(), termsafe.Line(fmt.Sprintf(format, args...)))
	}
	return r, store, nil
}

func newImagePushCmd(g *globals) *cobra.Command {
	var plainHTTP bool
	cmd := &cobra.Command{
		Use:   "push NAME[@VERSION] REGISTRY/REPOSITORY[:TAG]",
		Short: "Send a stored image (disk, manifest, exports) to an OCI registry",
		Long: `Uploads the image version (latest unless @VERSION) to any OCI distribution
registry as one artifact: the image's manifest as its config, the disk and
each export as layers with the digests the manifest records. Without a
tag it is tagged with its version and latest. Blobs the registry already
has are skipped, and each blob goes in chunks: a push cut off part way
continues where the registry says it stopped. Credentials come from the
Docker config (DOCKER_CONFIG or ~/.docker/config.json) and its credential
helpers: docker login, or any tool that writes them. Loopback registries
are spoken to over plain HTTP; --plain-http says so for others.`,
		Example: `  fleet image push debian-12 registry.corp:5000/agentfleet/debian-12
  fleet image push debian-12@20261201-031500 localhost:5000/fleet/debian-12:nightly`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, store, err := openRemote(cmd, g, args[1], plainHTTP)
			if err != nil {
				return err
			}
			img, err := store.Resolve(args[0])
			if err != nil {
				return err
			}
			start := time.Now()
			desc, err := r.Push(cmd.Context(), img)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "pushed %s@%s to %s in %s\n", img.Name, img.Version, args[1], time.Since(start).Round(100*time.Millisecond))
			fmt.Fprintln(cmd.OutOrStdout(), desc.Digest)
			return nil
		},
	}
	cmd.Flags().BoolVar(&plainHTTP, "plain-http", false, "speak HTTP, not HTTPS, to the registry (automatic on loopback)")
	return cmd
}

func newImagePullCmd(g *globals) *cobra.Command {
	var plainHTTP, ifChanged bool
	cmd := &cobra.Command{
		Use:   "pull REGISTRY/REPOSITORY[:TAG]",
		Short: "Fetch an image from an OCI registry, check every digest, then promote it",
		Long: `Downloads the image at the reference (tag latest unless given) into the
store: each blob is hashed as it arrives and must match both the
registry's descriptor and the image's own manifest, or nothing is
promoted. The pulled version is read-only like a baked one and becomes
the name's latest. A version already here with the same disk is not
downloaded again (exit 3 with --if-changed, for cron). Credentials as for
push.

Exit status: 0 pulled (or already here), 3 already here with --if-changed, 1 failed.`,
		Example: `  fleet image pull registry.corp:5000/agentfleet/debian-12
  # laptops, after the nightly push:
  30 7 * * * fleet image pull registry.corp:5000/agentfleet/debian-12 --if-changed; [ $? -ne 1 ]`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, store, err := openRemote(cmd, g, args[0], plainHTTP)
			if err != nil {
				return err
			}
			start := time.Now()
			img, err := r.Pull(cmd.Context(), store)
			if errors.Is(err, images.ErrUpToDate) {
				fmt.Fprintf(cmd.ErrOrStderr(), "%s@%s is already here\n", termsafe.Line(img.Name), termsafe.Line(img.Version))
				fmt.Fprintf(cmd.OutOrStdout(), "%s@%s\n", termsafe.Line(img.Name), termsafe.Line(img.Version))
				if ifChanged {
					return exitError{exitSkipped}
				}
				return nil
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "pulled %s@%s in %s, verified and promoted to latest\n", termsafe.Line(img.Name), termsafe.Line(img.Version), time.Since(start).Round(100*time.Millisecond))
			fmt.Fprintf(cmd.OutOrStdout(), "%s@%s\n", termsafe.Line(img.Name), termsafe.Line(img.Version))
			return nil
		},
	}
	cmd.Flags().BoolVar(&plainHTTP, "plain-http", false, "speak HTTP, not HTTPS, to the registry (automatic on loopback)")
	cmd.Flags().BoolVar(&ifChanged, "if-changed", false, "exit 3, doing nothing, when the registry's image is already here")
	return cmd
}
