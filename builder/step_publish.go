package builder

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/agentfleet/agentfleet/images"
	"github.com/hashicorp/packer-plugin-sdk/multistep"
)

// StepPublish adds the disk to the image store with its manifest and
// promotes it to latest.
//
// Reads "config", "qcow2", "mirror", "recipe_hash". Writes "image".
// No cleanup: once added, a version belongs to the store.
type StepPublish struct{ Started time.Time }

func (s *StepPublish) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	cfg := state.Get("config").(*Config)
	disk := state.Get("qcow2").(string)
	sum, size, err := sha256File(disk)
	if err != nil {
		return halt(state, err)
	}
	mirror := state.Get("mirror").(string)
	m := images.Manifest{
		Name: cfg.Name, Version: images.NewVersion(time.Now()),
		Source: describeSource(cfg, mirror), SourceDigest: state.Get("recipe_hash").(string),
		RecipeHash: state.Get("recipe_hash").(string), DiskSHA256: sum, DiskBytes: size,
		BuiltAt: time.Now().UTC(), BuildSeconds: time.Since(s.Started).Seconds(),
	}
	img, err := cfg.Store.Add(m, disk)
	if err != nil {
		return halt(state, err)
	}
	if err := cfg.Store.Promote(m.Name, m.Version); err != nil {
		return halt(state, err)
	}
	cfg.say("image %s@%s ready (%d MiB)", m.Name, m.Version, size>>20)
	img.Latest = true
	state.Put("image", img)
	return multistep.ActionContinue
}

func (s *StepPublish) Cleanup(multistep.StateBag) {}

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
