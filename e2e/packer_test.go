//go:build linux

package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// packerRun runs the real Packer binary with the plugin installed under
// pluginDir and returns its combined output and exit status.
func packerRun(t *testing.T, packer string, env []string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, packer, args...)
	cmd.Env = env
	cmd.Dir = repoRoot()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("packer %v: %v", args, err)
	}
	t.Logf("packer %s -> %d\n%s", strings.Join(args, " "), code, out.String())
	return out.String(), code
}

func repoRoot() string {
	_, self, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(self), "..")
}

// goBuild builds pkg from the module in dir into out.
func goBuild(t *testing.T, dir, out, pkg string) {
	t.Helper()
	start := time.Now()
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = dir
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	t.Logf("built %s in %s", filepath.Base(out), time.Since(start).Round(time.Second))
}

// The plugin under a real `packer build` (Packer v1.11.2, built from
// tools/packer): images/ubuntu-24.04.pkr.hcl, pointed at debian-12 since
// Ubuntu's cloud images cannot be reached here. The recipe matches the
// image TestMain baked, so the build takes its verified disk from the
// cache; what this proves is the Packer path itself: HCL config into the
// builder, validation errors, provisioner refusal, store and promote, the
// artifact, and if_changed.
func TestPackerPluginBuildsIntoTheStore(t *testing.T) {
	requireE2E(t)
	bin := t.TempDir()
	packer, plugin := filepath.Join(bin, "packer"), filepath.Join(bin, "packer-plugin-agentfleet")
	goBuild(t, filepath.Join(repoRoot(), "tools", "packer"), packer, "github.com/hashicorp/packer")
	goBuild(t, repoRoot(), plugin, "./cmd/packer-plugin-agentfleet")

	home := t.TempDir()
	env := fleetEnv("FLEET_HOME="+home, "PACKER_PLUGIN_PATH="+filepath.Join(bin, "plugins"),
		"PACKER_CONFIG_DIR="+filepath.Join(bin, "config"), "CHECKPOINT_DISABLE=1")
	if out, code := packerRun(t, packer, env, "plugins", "install", "--path", plugin, "github.com/agentfleet/agentfleet"); code != 0 {
		t.Fatalf("plugin install failed: %s", out)
	}
	template := filepath.Join("images", "ubuntu-24.04.pkr.hcl")

	t.Run("validate accepts the default template and names a bad image", func(t *testing.T) {
		if out, code := packerRun(t, packer, env, "validate", template); code != 0 {
			t.Fatalf("default template invalid: %s", out)
		}
		out, code := packerRun(t, packer, env, "validate", "-var", "image_name=fedora-40", template)
		if code == 0 || !strings.Contains(out, `unknown image "fedora-40"`) {
			t.Fatalf("want an unknown image error, got %d: %s", code, out)
		}
	})

	t.Run("provisioner blocks are refused before anything is built", func(t *testing.T) {
		withShell := filepath.Join(t.TempDir(), "shell.pkr.hcl")
		os.WriteFile(withShell, []byte(`source "agentfleet" "x" {
  image_name = "debian-12"
}
build {
  sources = ["source.agentfleet.x"]
  provisioner "shell" {
    inline = ["touch /etc/changed-behind-the-recipe"]
  }
}
`), 0o644)
		out, code := packerRun(t, packer, env, "build", "-color=false", withShell)
		if code == 0 || !strings.Contains(out, "provisioner blocks") {
			t.Fatalf("want the refusal, got %d: %s", code, out)
		}
		if rows := imageLs(t, "FLEET_HOME="+home); len(rows) != 0 {
			t.Fatalf("a refused build stored %v", rows)
		}
	})

	// The Claude Code that TestMain's image has: a release published
	// during the run must not turn the cache hit into a second bake.
	claude := "latest"
	for _, r := range imageLs(t) {
		if r.Name == "debian-12" && r.Latest && r.Packages["claude-code"] != "" {
			claude = r.Packages["claude-code"]
		}
	}
	var version string
	t.Run("packer build stores and promotes the image", func(t *testing.T) {
		out, code := packerRun(t, packer, env, "build", "-color=false", "-var", "claude_version="+claude,
			"-var", "image_name=debian-12", "-var", "outputs=[]", "-var", "fleet_home="+home, template)
		if code != 0 {
			t.Fatalf("packer build failed: %s", out)
		}
		rows := imageLs(t, "FLEET_HOME="+home)
		if len(rows) != 1 || !rows[0].Latest || rows[0].Packages["claude-code"] == "" {
			t.Fatalf("store after packer build: %+v", rows)
		}
		version = rows[0].Version
		if !strings.Contains(out, "agentfleet image debian-12@"+version+" (stored and promoted): "+rows[0].Disk) {
			t.Errorf("artifact line missing from: %s", out)
		}
	})

	t.Run("if_changed builds nothing when nothing changed", func(t *testing.T) {
		out, code := packerRun(t, packer, env, "build", "-color=false", "-var", "claude_version="+claude,
			"-var", "image_name=debian-12", "-var", "outputs=[]", "-var", "if_changed=true", "-var", "fleet_home="+home, template)
		if code != 0 || !strings.Contains(out, "up to date") {
			t.Fatalf("want an up-to-date no-op, got %d: %s", code, out)
		}
		rows := imageLs(t, "FLEET_HOME="+home)
		if len(rows) != 1 || rows[0].Version != version {
			t.Fatalf("if_changed made a version: %+v", rows)
		}
	})
}
