package builder

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"path"
	"strings"

	"github.com/agentfleet/agentfleet/internal/execx"
	"github.com/hashicorp/packer-plugin-sdk/multistep"
)

// scriptDir is where scripts are uploaded in the image; generalize empties
// /tmp, so nothing of the build ships.
const scriptDir = "/tmp/fleet-provision"

// StepProvision runs the recipe's numbered scripts, in order, as root,
// through whichever Communicator the source step provided: a chroot for
// mirror sources, SSH for cloud images.
// A failing script stops the build with its name, exit status and the
// last lines of its output.
//
// Reads "config", "communicator", "claude_version"; skipped on a cache hit.
// Writes "versions" (from /etc/agentfleet/versions.json). No cleanup: the
// step that made the communicator removes the machine or the mounts.
type StepProvision struct{}

func (s *StepProvision) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	if _, ok := state.GetOk("qcow2"); ok {
		return multistep.ActionContinue
	}
	cfg := state.Get("config").(*Config)
	comm := state.Get("communicator").(Communicator)
	env := s.env(cfg, state)
	// Uploading into a missing folder would write a file named like it.
	if code, err := comm.Run(ctx, "mkdir -p "+scriptDir, io.Discard); err != nil || code != 0 {
		return halt(state, fmt.Errorf("create %s in the image: exit %d %v", scriptDir, code, err))
	}
	if len(cfg.CACerts) > 0 {
		if err := comm.Upload(path.Join(scriptDir, "extra-ca.crt"), bytes.NewReader(cfg.CACerts)); err != nil {
			return halt(state, fmt.Errorf("upload CA certificates: %w", err))
		}
	}
	for i, sc := range cfg.Recipe.Scripts {
		dst := path.Join(scriptDir, sc.Name)
		if err := comm.Upload(dst, bytes.NewReader(sc.Body)); err != nil {
			return halt(state, fmt.Errorf("upload %s: %w", sc.Name, err))
		}
		cfg.say("provision [%d/%d] %s", i+1, len(cfg.Recipe.Scripts), sc.Name)
		ui := &scriptOutput{out: cfg.Progress}
		code, err := comm.Run(ctx, s.command(cfg, env, dst), ui)
		ui.Flush()
		if err != nil {
			return halt(state, fmt.Errorf("provision script %s: %w", sc.Name, err))
		}
		if code != 0 {
			return halt(state, fmt.Errorf("provision script %s failed with exit status %d; its last output:\n%s", sc.Name, code, ui.Tail()))
		}
	}
	var versions bytes.Buffer
	if err := comm.Download("/etc/agentfleet/versions.json", &versions); err == nil {
		if v, err := parseVersions(versions.Bytes()); err == nil {
			state.Put("versions", v)
		}
	}
	return multistep.ActionContinue
}

func (s *StepProvision) Cleanup(multistep.StateBag) {}

// env is what every script sees.
func (s *StepProvision) env(cfg *Config, state multistep.StateBag) []string {
	claude, _ := state.Get("claude_version").(string)
	node, _ := state.Get("node").(NodeRelease)
	source := "rootfs"
	if cfg.Source == SourceCloud {
		source = "ssh"
	}
	return []string{
		"FLEET_SOURCE=" + source,
		"FLEET_CLAUDE_VERSION=" + claude,
		"FLEET_NPM_REGISTRY=" + cfg.NpmRegistry,
		"FLEET_NODE_VERSION=" + node.Version,
		"FLEET_NODE_TARBALL=" + node.Tarball,
		"FLEET_NODE_INTEGRITY=" + node.Integrity,
		"FLEET_NPM_TARBALL=" + node.NpmTarball,
		"FLEET_NPM_INTEGRITY=" + node.NpmIntegrity,
		"FLEET_AGENT_USER=agent",
		"DEBIAN_FRONTEND=noninteractive",
	}
}

// command runs one uploaded script as root: directly in a chroot, through
// sudo over SSH (the build user is not root).
func (s *StepProvision) command(cfg *Config, env []string, script string) string {
	args := append([]string{"env"}, env...)
	args = append(args, "/bin/sh", script)
	cmd := execx.ShellJoin(args)
	if cfg.Source == SourceCloud {
		cmd = "sudo -n " + cmd
	}
	return cmd + " 2>&1"
}

// parseVersions reads versions.json into a flat map.
func parseVersions(b []byte) (map[string]string, error) {
	out := map[string]string{}
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, err
	}
	for k, v := range out {
		out[k] = strings.TrimSpace(v)
	}
	return out, nil
}
