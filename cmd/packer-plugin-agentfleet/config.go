//go:generate go run -modfile=../../tools/sdc/go.mod github.com/hashicorp/packer-plugin-sdk/cmd/packer-sdc mapstructure-to-hcl2 -type Config

package main

import (
	"time"

	"github.com/hashicorp/packer-plugin-sdk/common"
	"github.com/hashicorp/packer-plugin-sdk/template/interpolate"
)

// Config is the `source "agentfleet" "NAME" { ... }` block. Each field is
// one `fleet image build` flag under the same meaning; the build itself
// is the same builder.Options → builder.Build path the CLI takes.
type Config struct {
	common.PackerConfig `mapstructure:",squash"`

	// Image to bake: ubuntu-24.04 or debian-12.
	ImageName string `mapstructure:"image_name" required:"true"`
	// Build from this package mirror (root file system, chroot provisioning).
	Mirror string `mapstructure:"mirror"`
	// Build from the cloud image at this URL, listed in checksum_url's SHA256SUMS.
	SourceURL   string `mapstructure:"source_url"`
	ChecksumURL string `mapstructure:"checksum_url"`
	// Guest architecture: amd64 or arm64 (default: the host's). arm64 on
	// an amd64 host provisions under qemu-user-static.
	Arch string `mapstructure:"arch"`
	// Provision recipe: full (default) or base.
	Recipe string `mapstructure:"recipe"`
	// Claude Code npm version or dist-tag (default latest).
	ClaudeVersion string `mapstructure:"claude_version"`
	NpmRegistry   string `mapstructure:"npm_registry"`
	// Node.js: lts (default), system (the distribution's), a major or a version.
	NodeVersion string `mapstructure:"node_version"`
	// Exports besides the store's disk: qcow2, ova, vagrant.
	Outputs []string `mapstructure:"outputs"`
	// Your own shell scripts, run as root after the toolchain and before
	// generalize; part of the recipe hash. This, not a provisioner block,
	// is how a template adds to the image.
	Scripts []string `mapstructure:"scripts"`
	// PEM files of extra certificate authorities the image trusts.
	CACerts  []string `mapstructure:"ca_certs"`
	NoHostCA bool     `mapstructure:"no_host_ca"`
	// Skip (no new version) when recipe, source and versions match latest.
	IfChanged bool `mapstructure:"if_changed"`
	// Image store root (default: FLEET_HOME, as for the fleet command).
	FleetHome string `mapstructure:"fleet_home"`
	// Content-keyed cache of sources and built disks (default FLEET_CACHE).
	CacheDir string `mapstructure:"cache_dir"`
	// QEMU accelerator: kvm, hvf or tcg (default: the fastest available).
	Accelerator string        `mapstructure:"accelerator"`
	BootTimeout time.Duration `mapstructure:"boot_timeout"`

	ctx interpolate.Context
}
