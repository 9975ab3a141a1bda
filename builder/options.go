package builder

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/agentfleet/agentfleet/images"
	"github.com/agentfleet/agentfleet/internal/execx"
	"github.com/agentfleet/agentfleet/internal/layout"
	"github.com/agentfleet/agentfleet/internal/vm"
	"github.com/agentfleet/agentfleet/internal/vm/qemu"
	"github.com/agentfleet/agentfleet/provision"
)

// Options are a user's choices for one build: the flags of
// `fleet image build` and the fields of the Packer plugin's source block.
// Both front ends turn them into a Config here, so they build the same
// image from the same choices.
type Options struct {
	Name          string   // image name: ubuntu-24.04 or debian-12
	Arch          string   // amd64 or arm64 ("" is the host's)
	Mirror        string   // build from this package mirror
	SourceURL     string   // build from the cloud image at this URL...
	ChecksumURL   string   // ...listed in this SHA256SUMS file
	Recipe        string   // provision recipe ("" means full)
	ClaudeVersion string   // npm version or dist-tag ("" means latest)
	NpmRegistry   string   // "" means https://registry.npmjs.org/
	NodeVersion   string   // lts ("" too), system, a major or a version
	Outputs       []string // exports besides the store's disk
	CACertFiles   []string // PEM files of extra CAs the image trusts
	ScriptFiles   []string // the user's own scripts, run after the toolchain
	NoHostCA      bool     // do not copy this host's added CAs
	IfChanged     bool
	KeepOnFailure bool

	Home        string        // FLEET_HOME: the store lives under Home/images
	CacheDir    string        // "" means FLEET_CACHE, else Home/cache
	Accel       string        // "" means the fastest this host offers
	BootTimeout time.Duration // 0 means qemu.BootTimeout(accel)
}

// Config checks the options and returns the build they describe. It
// makes nothing: every error here leaves the machine as it was.
func (o Options) Config() (Config, error) {
	source := ""
	if o.Mirror != "" {
		source = SourceMirror
	}
	if o.SourceURL != "" || o.ChecksumURL != "" {
		if o.Mirror != "" {
			return Config{}, errors.New("a mirror and a cloud image URL pick different sources: give one")
		}
		source = SourceCloud
	}
	cfg, err := Definition(o.Name, source)
	if err != nil {
		return Config{}, err
	}
	if cfg.Arch, err = vm.ParseArch(o.Arch); err != nil {
		return Config{}, err
	}
	cfg.Packages = forArch(cfg.Packages, cfg.Arch)
	if cfg.Arch != vm.AMD64 {
		cfg.CloudImageURL = strings.ReplaceAll(cfg.CloudImageURL, "-amd64.", "-"+string(cfg.Arch)+".")
	}
	if o.SourceURL != "" {
		cfg.CloudImageURL = o.SourceURL
	}
	if o.ChecksumURL != "" {
		cfg.ChecksumURL = o.ChecksumURL
	}
	recipe := o.Recipe
	if recipe == "" {
		recipe = "full"
	}
	if cfg.Recipe, err = provision.Get(recipe); err != nil {
		return Config{}, err
	}
	extra, err := readScripts(o.ScriptFiles)
	if err != nil {
		return Config{}, err
	}
	cfg.Recipe = cfg.Recipe.WithUserScripts(extra)
	if cfg.Source == SourceMirror && os.Geteuid() != 0 {
		return Config{}, fmt.Errorf("building %s from a package mirror needs root (loop devices, mount, chroot); run it with sudo", cfg.Name)
	}
	if o.Home == "" {
		return Config{}, errors.New("no fleet home for the image store")
	}
	cfg.Mirror, cfg.KeepOnFailure, cfg.IfChanged = o.Mirror, o.KeepOnFailure, o.IfChanged
	cfg.ClaudeVersion, cfg.NpmRegistry = o.ClaudeVersion, o.NpmRegistry
	if err := ValidNodeVersion(o.NodeVersion); err != nil {
		return Config{}, err
	}
	cfg.NodeVersion = o.NodeVersion
	cfg.Outputs = o.Outputs
	accel := qemu.Accel(o.Accel)
	if accel == "" {
		accel = qemu.DetectAccel()
	}
	cfg.Accel, cfg.BootTimeout = string(accel), o.BootTimeout
	if cfg.BootTimeout == 0 {
		cfg.BootTimeout = qemu.BootTimeout(accel)
		if cfg.Arch != vm.HostArch() { // emulated whatever the accelerator
			cfg.BootTimeout = qemu.BootTimeout(qemu.AccelTCG)
		}
	}
	cfg.Store = images.Store{Root: layout.Paths{Root: o.Home}.ImagesDir()}
	cfg.TmpDir = layout.Paths{Root: o.Home}.TmpDir()
	cfg.CacheDir = o.CacheDir
	if cfg.CacheDir == "" {
		cfg.CacheDir = os.Getenv("FLEET_CACHE")
	}
	if cfg.CacheDir == "" {
		cfg.CacheDir = layout.Paths{Root: o.Home}.CacheDir()
	}
	if !o.NoHostCA {
		if cfg.CACerts, err = HostCACerts("/"); err != nil {
			return Config{}, err
		}
	}
	for _, f := range o.CACertFiles {
		b, err := os.ReadFile(f)
		if err != nil {
			return Config{}, fmt.Errorf("CA certificate: %w", err)
		}
		if !strings.Contains(string(b), "BEGIN CERTIFICATE") {
			return Config{}, fmt.Errorf("CA certificate %s: not a PEM certificate", f)
		}
		cfg.CACerts = append(append(cfg.CACerts, b...), '\n')
	}
	cfg.Runner = execx.Local{}
	return cfg, cfg.Validate()
}

// readScripts loads the user's scripts. Their names become file names in
// the image, so anything but letters, digits, dot, dash and underscore is
// replaced.
func readScripts(paths []string) ([]provision.Script, error) {
	var out []provision.Script
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("provision script: %w", err)
		}
		if len(strings.TrimSpace(string(b))) == 0 {
			return nil, fmt.Errorf("provision script %s is empty", p)
		}
		name := strings.Map(func(r rune) rune {
			if r == '.' || r == '-' || r == '_' || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9') {
				return r
			}
			return '_'
		}, filepath.Base(p))
		out = append(out, provision.Script{Name: name, Body: b})
	}
	return out, nil
}
