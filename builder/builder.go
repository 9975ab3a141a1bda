// Package builder bakes base images as a packer-plugin-sdk multistep
// pipeline: one step per file, each documenting the state keys it reads
// and writes and cleaning up only what it created.
//
// State keys used across steps:
//
//	"config"   *Config          (input)
//	"workdir"  string           scratch folder for this build
//	"mirror"   string           Debian mirror URL
//	"rootfs"   string           root file system folder
//	"raw"      string           raw bootable disk
//	"qcow2"    string           finished qcow2 disk
//	"image"    images.Image     the stored (and promoted) image
//	"error"    error            set by the step that halted
package builder

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/agentfleet/agentfleet/images"
	"github.com/agentfleet/agentfleet/internal/execx"
	"github.com/agentfleet/agentfleet/provision"
	"github.com/hashicorp/packer-plugin-sdk/multistep"
)

// recipeVersion changes whenever the build steps change what they produce.
const recipeVersion = "debian-rootfs-v1"

// Config is one image build.
type Config struct {
	Name          string // image name, e.g. "debian-12"
	Suite         string // distribution suite, e.g. "bookworm"
	Mirror        string // package mirror; empty: read from /etc/apt
	AptRoot       string // where to read apt sources from ("/" normally)
	Packages      []string
	DiskSizeGiB   int
	Store         images.Store
	CacheDir      string // content-keyed cache of built disks ("" disables)
	TmpDir        string // scratch space on the store's file system
	Runner        execx.Runner
	Progress      io.Writer
	KeepOnFailure bool
}

// Definition returns the build settings for a known image name.
func Definition(name string) (Config, error) {
	switch name {
	case "debian-12":
		return Config{
			Name: "debian-12", Suite: "bookworm", DiskSizeGiB: 10,
			Packages: []string{
				"systemd-sysv", "udev", "kmod", "dbus", "linux-image-cloud-amd64", "grub-pc",
				"openssh-server", "cloud-init", "sudo", "iproute2", "netbase",
				"ca-certificates", "e2fsprogs", "systemd-resolved",
			},
		}, nil
	case "ubuntu-24.04":
		return Config{}, errors.New("ubuntu-24.04 is built from the Ubuntu cloud image, which this build of fleet cannot fetch yet; use debian-12")
	}
	return Config{}, fmt.Errorf("unknown image %q (known images: %s)", name, strings.Join(images.Known, ", "))
}

// RecipeHash digests everything that decides the image's content.
func (c Config) RecipeHash(mirror string) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s\n%s\n%s\n%d\n%s\n", recipeVersion, c.Name, c.Suite, mirror, c.DiskSizeGiB, strings.Join(c.Packages, ","))
	h.Write([]byte(provision.Hash(provision.RootfsScripts())))
	return hex.EncodeToString(h.Sum(nil))
}

func (c *Config) say(format string, args ...any) {
	if c.Progress != nil {
		fmt.Fprintf(c.Progress, format+"\n", args...)
	}
}

// Result says what Build did.
type Result struct {
	Image  images.Image
	Cached bool // the disk came from the cache, nothing was rebuilt
}

// Build runs the pipeline and stores and promotes the image.
func Build(ctx context.Context, cfg Config) (Result, error) {
	start := time.Now()
	state := new(multistep.BasicStateBag)
	state.Put("config", &cfg)
	steps := []multistep.Step{
		&StepWorkDir{},
		&StepResolveMirror{},
		&StepCheckCache{},
		&StepBootstrapRootfs{},
		&StepProvisionChroot{},
		&StepAssembleDisk{},
		&StepConvert{},
		&StepPublish{Started: start},
	}
	runner := &multistep.BasicRunner{Steps: steps}
	runner.Run(ctx, state)
	if err, ok := state.GetOk("error"); ok {
		return Result{}, err.(error)
	}
	if _, cancelled := state.GetOk(multistep.StateCancelled); cancelled || ctx.Err() != nil {
		return Result{}, fmt.Errorf("image build cancelled: %w", context.Cause(ctx))
	}
	img, ok := state.GetOk("image")
	if !ok {
		return Result{}, errors.New("image build finished without an image")
	}
	_, cached := state.GetOk("cache_hit")
	return Result{Image: img.(images.Image), Cached: cached}, nil
}

// halt records err and stops the pipeline.
func halt(state multistep.StateBag, err error) multistep.StepAction {
	state.Put("error", err)
	return multistep.ActionHalt
}

func failed(state multistep.StateBag) bool {
	_, cancelled := state.GetOk(multistep.StateCancelled)
	_, halted := state.GetOk(multistep.StateHalted)
	return cancelled || halted
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// cachePath is where a finished disk for this recipe is kept.
func cachePath(cfg *Config, hash string) string {
	return filepath.Join(cfg.CacheDir, "images", cfg.Name+"-"+hash[:16]+".qcow2")
}
