package builder

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/agentfleet/agentfleet/images"
	"github.com/agentfleet/agentfleet/internal/vm"
	"github.com/hashicorp/packer-plugin-sdk/multistep"
)

// StepPublish adds the verified disk and its exports to the image store
// with a manifest, then promotes it to latest (an atomic symlink swap).
// It is the last step, so a failure anywhere before it leaves the old
// latest in place.
//
// Reads "config", "qcow2", "version", "recipe_hash", "source_digest",
// "mirror", "versions", "outputs", "boot". Writes "image". No cleanup: once added,
// a version belongs to the store (fleet image prune removes it).
type StepPublish struct{ Started time.Time }

func (s *StepPublish) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	cfg := state.Get("config").(*Config)
	disk := state.Get("qcow2").(string)
	sum, size, err := sha256File(disk)
	if err != nil {
		return halt(state, err)
	}
	versions, _ := state.Get("versions").(map[string]string)
	outputs, _ := state.Get("outputs").(map[string]string)
	boot, _ := state.Get("boot").(*vm.DirectBoot)
	if boot != nil {
		all := map[string]string{images.OutputKernel: boot.Kernel, images.OutputInitrd: boot.Initrd}
		for k, v := range outputs {
			all[k] = v
		}
		outputs = all
	}
	m := images.Manifest{
		Name: cfg.Name, Version: state.Get("version").(string),
		Source: describeSource(cfg, state), SourceDigest: state.Get("source_digest").(string),
		RecipeHash: state.Get("recipe_hash").(string), Recipe: cfg.Recipe.Name, Packages: versions, Arch: cfg.Arch.Or(),
		DiskSHA256: sum, DiskBytes: size, Outputs: map[string]images.Output{},
		BuiltAt: time.Now().UTC(), BuildSeconds: time.Since(s.Started).Seconds(),
	}
	if boot != nil {
		m.KernelCmdline = boot.Cmdline
	}
	for kind, p := range outputs {
		osum, osize, err := sha256File(p)
		if err != nil {
			return halt(state, err)
		}
		m.Outputs[kind] = images.Output{File: filepath.Base(p), SHA256: osum, Bytes: osize}
	}
	img, err := cfg.Store.Add(m, disk, outputs)
	if err != nil {
		return halt(state, err)
	}
	if err := cfg.Store.Promote(m.Name, m.Version); err != nil {
		return halt(state, err)
	}
	cfg.say("image %s@%s verified and promoted to latest (%d MiB)", m.Name, m.Version, size>>20)
	img.Latest = true
	state.Put("image", img)
	return multistep.ActionContinue
}

func (s *StepPublish) Cleanup(multistep.StateBag) {}

func describeSource(cfg *Config, state multistep.StateBag) string {
	if cfg.Source == SourceCloud {
		return cfg.CloudImageURL
	}
	mirror, _ := state.Get("mirror").(string)
	return fmt.Sprintf("mmdebstrap %s from %s", cfg.Suite, mirror)
}

func sha256File(p string) (string, int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, fmt.Errorf("digest %s: %w", p, err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

func ensureDir(d string) error { return os.MkdirAll(d, 0o755) }
