package builder

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/agentfleet/agentfleet/internal/vm"

	"github.com/agentfleet/agentfleet/internal/bounded"
	guestcmd "github.com/agentfleet/agentfleet/internal/guest" // builder has a type guest
	"github.com/agentfleet/agentfleet/internal/termsafe"
	"github.com/hashicorp/packer-plugin-sdk/multistep"
)

// StepVerify boots a linked clone of the new disk exactly as a fleet
// machine boots (NoCloud seed, the agent user, a pinned host key) and runs
// the recipe's checks as the agent user. Only a disk that passes is cached
// or published; a cached disk passed when it was cached.
//
// Reads "config", "qcow2", "workdir", "recipe_hash", "versions",
// "cache_hit", "boot". Writes nothing. Cleanup deletes the verification VM unless
// the build failed and KeepOnFailure is set.
type StepVerify struct{ g *guest }

func (s *StepVerify) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	cfg := state.Get("config").(*Config)
	disk := state.Get("qcow2").(string)
	if _, hit := state.GetOk("cache_hit"); hit {
		cfg.say("verify: skipped, the cached disk passed when it was built")
		return multistep.ActionContinue
	}
	cfg.say("verify: booting a clone of the new image...")
	t0 := time.Now()
	// It boots as spawned machines will: its kernel directly, if it has one.
	boot, _ := state.Get("boot").(*vm.DirectBoot)
	g, err := bootGuest(ctx, cfg, "fleet-verify-"+cfg.Name, disk, filepath.Join(state.Get("workdir").(string), "verify-vm"), "agent", boot)
	if err != nil {
		return halt(state, fmt.Errorf("verify: %w", err))
	}
	s.g = g
	cfg.say("verify: SSH ready after %s", time.Since(t0).Round(time.Second))
	// Checks need the boot finished (dockerd starting, cloud-init done).
	r := guestcmd.OverSSH(g.spec.Name, g.client)
	_ = r.Run(ctx, guestcmd.Cmd{Step: "wait for the boot", Script: "systemctl is-system-running --wait"})
	for _, c := range cfg.Recipe.Checks {
		// stdout and stderr, as a person reads them: the first line says
		// what passed, the last lines why it failed.
		head, tail := bounded.NewBuffer(bounded.Line), bounded.NewTail(bounded.Stderr)
		out := io.MultiWriter(head, tail)
		err := r.Run(ctx, guestcmd.Cmd{Step: c.What, Script: c.Command, Stdout: out, Stderr: out})
		if code := guestcmd.ExitCode(err); code > 0 {
			return halt(state, fmt.Errorf("verify: %s failed (exit %d): %s; the image was not promoted", c.What, code, termsafe.Text(strings.TrimSpace(lastLines(string(tail.Bytes()), 8)))))
		}
		if err != nil {
			return halt(state, fmt.Errorf("verify: %w", err))
		}
		cfg.say("verify: %-34s ok %s", c.What, termsafe.Line(firstLine(head.String())))
	}
	if cfg.CacheDir != "" {
		cacheDisk(cfg, state, disk)
	}
	return multistep.ActionContinue
}

func (s *StepVerify) Cleanup(state multistep.StateBag) { s.g.cleanup(state, "verification") }

// cacheDisk keeps a verified disk, and what it contains, under its recipe
// hash so the same recipe never builds twice on this machine.
func cacheDisk(cfg *Config, state multistep.StateBag, disk string) {
	cached := cachePath(cfg, state.Get("recipe_hash").(string))
	if err := ensureDir(filepath.Dir(cached)); err != nil {
		return
	}
	if err := linkOrCopy(disk, cached); err != nil {
		cfg.say("could not cache the disk: %v", err)
		return
	}
	if v, ok := state.Get("versions").(map[string]string); ok {
		b, _ := json.Marshal(v)
		_ = os.WriteFile(cached+".versions.json", b, 0o644)
	}
	if boot, ok := state.Get("boot").(*vm.DirectBoot); ok {
		_ = linkOrCopy(boot.Kernel, cached+".vmlinuz")
		_ = linkOrCopy(boot.Initrd, cached+".initrd.img")
		_ = os.WriteFile(cached+".cmdline", []byte(boot.Cmdline), 0o644)
	}
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(strings.TrimSpace(s), "\n")
	if len(l) > 60 {
		l = l[:60] + "..."
	}
	return l
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
