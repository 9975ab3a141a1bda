// Package builder bakes base images as a packer-plugin-sdk multistep
// pipeline: one step per file, each documenting the state keys it reads
// and writes and cleaning up only what it created.
//
// Two sources feed one provision step through the SDK's Communicator
// interface: a root file system built from a package mirror (provisioned
// in a chroot, at host speed) or a cloud image booted under QEMU
// (provisioned over SSH). Every image is then verified in a booted clone
// before it is promoted.
//
// State keys used across steps:
//
//	"config"        *Config          (input)
//	"workdir"       string           scratch folder for this build
//	"mirror"        string           package mirror URL (mirror sources)
//	"source_image"  string           verified cloud image (cloud sources)
//	"source_digest" string           sha256 of the source: cloud image or the mirror's InRelease
//	"claude_version" string          Claude Code version the recipe installs
//	"recipe_hash"   string           digest of recipe, source and versions
//	"rootfs"        string           root file system folder (mirror sources)
//	"communicator"  Communicator            chroot or SSH, for the provision step
//	"build_disk"    string           qcow2 written by the SSH provisioning (cloud sources)
//	"raw"           string           raw bootable disk (mirror sources)
//	"qcow2"         string           finished, generalized qcow2 disk
//	"versions"      map[string]string kernel, docker, node, claude-code in the image
//	"outputs"       map[string]string exported files by kind (qcow2, ova, vagrant)
//	"version"       string           the version this build will store (input)
//	"image"         images.Image     the stored (and promoted) image
//	"skipped"       bool             --if-changed found nothing new
//	"error"         error            set by the step that halted
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
	"runtime"
	"strings"
	"time"

	"github.com/agentfleet/agentfleet/images"
	"github.com/agentfleet/agentfleet/internal/execx"
	"github.com/agentfleet/agentfleet/internal/layout"
	"github.com/agentfleet/agentfleet/internal/vm"
	"github.com/agentfleet/agentfleet/provision"
	"github.com/hashicorp/packer-plugin-sdk/multistep"
)

// recipeVersion changes whenever the build steps change what they produce.
const recipeVersion = "agentfleet-image-v2"

// Source kinds.
const (
	SourceMirror = "mirror" // root file system from a package mirror, chroot provisioning
	SourceCloud  = "cloud"  // official cloud image, booted and provisioned over SSH
)

// Config is one image build.
type Config struct {
	Name        string  // image name, e.g. "debian-12"
	Arch        vm.Arch // the guest's architecture ("" is amd64)
	Source      string  // SourceMirror or SourceCloud
	Distro      string  // "debian" or "ubuntu"
	Suite       string  // distribution suite, e.g. "bookworm" (mirror sources)
	Components  []string
	Mirror      string // package mirror; empty: read from /etc/apt
	AptRoot     string // where to read apt sources from ("/" normally)
	Packages    []string
	DiskSizeGiB int
	MinFreeMiB  int64 // free space a build needs under TmpDir (0: half the disk size)
	// CloudImageURL and ChecksumURL locate a cloud image and its SHA256SUMS
	// (cloud sources).
	CloudImageURL string
	ChecksumURL   string

	Recipe provision.Recipe
	// CACerts are PEM certificates the image trusts besides the
	// distribution's (HostCACerts: this host's locally added ones).
	CACerts       []byte
	ClaudeVersion string // npm version or dist-tag; "" means latest
	NpmRegistry   string // "" means https://registry.npmjs.org/
	// NodeVersion is lts (default), system, a major or a version.
	NodeVersion string
	Outputs     []string
	IfChanged   bool // skip when recipe, source and versions match latest
	Accel       string
	BootTimeout time.Duration

	Store         images.Store
	CacheDir      string // content-keyed cache of sources and built disks ("" disables)
	TmpDir        string // scratch space on the store's file system
	Runner        execx.Runner
	Progress      io.Writer
	KeepOnFailure bool
}

// OutputKinds lists what a build can export besides the store's disk.
var OutputKinds = []string{"qcow2", "ova", "vagrant"}

var debianPackages = []string{
	"systemd-sysv", "udev", "kmod", "dbus", "grub-pc", "openssh-server", "cloud-init",
	"sudo", "iproute2", "netbase", "ca-certificates", "e2fsprogs", "systemd-resolved",
}

// Definition returns the build settings for a known image name and
// source kind ("" for the image's default: a cloud image for
// ubuntu-24.04, the package mirror for debian-12).
func Definition(name, source string) (Config, error) {
	recipe, _ := provision.Get("full")
	if source != "" && source != SourceMirror && source != SourceCloud {
		return Config{}, fmt.Errorf("unknown source kind %q", source)
	}
	switch name {
	case "debian-12":
		if source == SourceCloud {
			return Config{Name: name, Source: SourceCloud, Distro: "debian", DiskSizeGiB: 10, Recipe: recipe}, nil
		}
		return Config{
			Name: name, Source: SourceMirror, Distro: "debian", Suite: "bookworm", Components: []string{"main"},
			DiskSizeGiB: 10, Recipe: recipe,
			Packages: append([]string{"linux-image-cloud-amd64"}, debianPackages...),
		}, nil
	case "ubuntu-24.04":
		if source == SourceMirror {
			return Config{
				Name: name, Source: SourceMirror, Distro: "ubuntu", Suite: "noble", Components: []string{"main", "universe"},
				DiskSizeGiB: 10, Recipe: recipe,
				Packages: append([]string{"linux-image-virtual"}, debianPackages...),
			}, nil
		}
		base := "https://cloud-images.ubuntu.com/noble/current/"
		return Config{
			Name: name, Source: SourceCloud, Distro: "ubuntu", DiskSizeGiB: 10, Recipe: recipe,
			CloudImageURL: base + "noble-server-cloudimg-amd64.img", ChecksumURL: base + "SHA256SUMS",
		}, nil
	}
	return Config{}, fmt.Errorf("unknown image %q (known images: %s)", name, strings.Join(images.Known, ", "))
}

// RecipeHash digests everything that decides the image's content: the
// build steps, the source (mirror and its package index, or the cloud
// image's digest), the packages, the provision scripts and the resolved
// Claude Code version. Equal hashes mean an equal image.
func (c Config) RecipeHash(mirror, sourceDigest, claudeVersion, nodeVersion string) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s\n%s\n%s\n%s\n%s\n%d\n%s\n%s\n%s\n", recipeVersion, c.Name, c.Source, c.Suite,
		strings.Join(c.Components, ","), mirror, c.DiskSizeGiB, strings.Join(c.Packages, ","), sourceDigest, claudeVersion)
	if nodeVersion != "" {
		fmt.Fprintf(h, "node %s\n", nodeVersion)
	}
	// amd64, the only architecture before there were two, adds nothing,
	// so the images baked then keep their hash (and cached disks).
	if c.Arch.Or() != vm.AMD64 {
		fmt.Fprintf(h, "arch %s\n", c.Arch)
	}
	h.Write([]byte(c.Recipe.Hash()))
	h.Write(c.CACerts)
	return hex.EncodeToString(h.Sum(nil))
}

func (c *Config) say(format string, args ...any) {
	if c.Progress != nil {
		fmt.Fprintf(c.Progress, format+"\n", args...)
	}
}

func (c *Config) bootTimeout() time.Duration {
	if c.BootTimeout > 0 {
		return c.BootTimeout
	}
	return 10 * time.Minute
}

// Validate checks the config before anything is made.
func (c *Config) Validate() error {
	if c.Recipe.Name == "" {
		return errors.New("no provision recipe")
	}
	for _, o := range c.Outputs {
		ok := false
		for _, k := range OutputKinds {
			ok = ok || o == k
		}
		if !ok {
			return fmt.Errorf("unknown output %q (outputs: %s)", o, strings.Join(OutputKinds, ", "))
		}
	}
	if c.Source != SourceCloud && runtime.GOOS != "linux" {
		// mmdebstrap, chroot, bind mounts and loop devices are Linux's.
		return fmt.Errorf("%s from a package mirror is a chroot bake, which needs a Linux host; on %s pull an image a Linux host baked (fleet image pull REF), or bake from a cloud image (--source-url and --checksum-url), which boots and provisions over SSH", c.Name, runtime.GOOS)
	}
	if c.Arch.Or() != vm.AMD64 {
		for _, o := range c.Outputs {
			if o == "ova" || o == "vagrant" {
				return fmt.Errorf("the %s output is a VirtualBox machine, which fleet makes for amd64 images only; an %s image exports as qcow2", o, c.Arch)
			}
		}
	}
	if c.Source == SourceMirror && c.Arch.Or() != vm.HostArch() {
		if err := CheckForeignChroot(c.Arch, "/proc/sys/fs/binfmt_misc"); err != nil {
			return err
		}
	}
	if c.Source == SourceCloud && (c.CloudImageURL == "" || c.ChecksumURL == "") {
		return fmt.Errorf("%s from a cloud image needs --source-url and --checksum-url (a SHA256SUMS file)", c.Name)
	}
	if c.Runner == nil {
		c.Runner = execx.Local{}
	}
	return nil
}

// Result says what Build did.
type Result struct {
	Image   images.Image
	Cached  bool              // the disk came from the cache, nothing was rebuilt
	Skipped bool              // --if-changed: nothing changed, nothing built
	Outputs map[string]string // exported files by kind
}

// Steps returns the pipeline for cfg's source.
func Steps(cfg *Config, started time.Time) []multistep.Step {
	steps := []multistep.Step{&StepWorkDir{}}
	if cfg.Source == SourceCloud {
		steps = append(steps, &StepFetchSource{})
	} else {
		steps = append(steps, &StepResolveMirror{})
	}
	steps = append(steps, &StepResolveVersions{}, &StepIfChanged{}, &StepCheckCache{})
	if cfg.Source == SourceCloud {
		steps = append(steps, &StepBootSource{}, &StepProvision{}, &StepShutdown{})
	} else {
		chroot := &StepChroot{}
		steps = append(steps, &StepBootstrapRootfs{}, chroot, &StepProvision{}, &StepChrootDone{Chroot: chroot}, &StepAssembleDisk{})
	}
	return append(steps, &StepConvert{}, &StepVerify{}, &StepExport{}, &StepPublish{Started: started})
}

// Build runs the pipeline: on success the image is stored and promoted;
// on failure or cancel nothing is promoted and every step has removed
// what it made (unless KeepOnFailure).
func Build(ctx context.Context, cfg Config) (Result, error) {
	if err := cfg.Validate(); err != nil {
		return Result{}, err
	}
	state := new(multistep.BasicStateBag)
	started := time.Now()
	state.Put("config", &cfg)
	state.Put("version", images.NewVersion(started))
	runner := &multistep.BasicRunner{Steps: Steps(&cfg, started)}
	runner.Run(ctx, state)
	if err, ok := state.GetOk("error"); ok {
		return Result{}, err.(error)
	}
	if _, cancelled := state.GetOk(multistep.StateCancelled); cancelled || ctx.Err() != nil {
		return Result{}, fmt.Errorf("image build cancelled: %w", context.Cause(ctx))
	}
	if _, skipped := state.GetOk("skipped"); skipped {
		img, _ := state.Get("image").(images.Image)
		return Result{Image: img, Skipped: true}, nil
	}
	img, ok := state.GetOk("image")
	if !ok {
		return Result{}, errors.New("image build finished without an image")
	}
	_, cached := state.GetOk("cache_hit")
	outputs, _ := state.Get("outputs").(map[string]string)
	return Result{Image: img.(images.Image), Cached: cached, Outputs: outputs}, nil
}

// halt records err and stops the pipeline.
func halt(state multistep.StateBag, err error) multistep.StepAction {
	state.Put("error", err)
	return multistep.ActionHalt
}

func failed(state multistep.StateBag) bool {
	// A halt without an error is --if-changed skipping: not a failure.
	_, cancelled := state.GetOk(multistep.StateCancelled)
	_, errored := state.GetOk("error")
	return cancelled || errored
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// cachePath is where a finished disk for this recipe is kept.
// directBoot says whether the image's kernel is copied out to be started
// directly: for trimmed recipes on disks this builder assembles. A cloud
// image keeps its own boot setup.
func (c *Config) directBoot() bool { return c.Recipe.DirectBoot() && c.Source != SourceCloud }

func cachePath(cfg *Config, hash string) string {
	return filepath.Join(cfg.CacheDir, layout.CacheImagesFolder, cfg.Name+"-"+hash[:16]+".qcow2")
}

// HostCACerts returns the certificate authorities this host's
// administrator added (/usr/local/share/ca-certificates), which the
// image needs when the network path intercepts TLS.
func HostCACerts(root string) ([]byte, error) {
	files, _ := filepath.Glob(filepath.Join(root, "usr", "local", "share", "ca-certificates", "*.crt"))
	files2, _ := filepath.Glob(filepath.Join(root, "usr", "local", "share", "ca-certificates", "*", "*.crt"))
	var out []byte
	for _, f := range append(files, files2...) {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		out = append(out, b...)
		if len(b) > 0 && b[len(b)-1] != '\n' {
			out = append(out, '\n')
		}
	}
	return out, nil
}
