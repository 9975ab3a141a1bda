package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/agentfleet/agentfleet/images"
	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"
)

func TestPrepareMapsTheSourceBlockOntoTheSameOptions(t *testing.T) {
	home := t.TempDir()
	script := filepath.Join(home, "corp.sh")
	os.WriteFile(script, []byte("echo corp\n"), 0o644)
	var b Builder
	_, _, err := b.Prepare(map[string]any{
		"image_name": "ubuntu-24.04", "recipe": "base", "claude_version": "2.1.0", "scripts": []string{script},
		"outputs": []string{"ova"}, "no_host_ca": true, "if_changed": true,
		"fleet_home": home, "cache_dir": filepath.Join(home, "c"), "accelerator": "tcg",
		"boot_timeout": "7m", "packer_on_error": "abort",
	})
	if err != nil {
		t.Fatal(err)
	}
	c := b.build
	if c.Name != "ubuntu-24.04" || c.Recipe.Name != "base" || c.ClaudeVersion != "2.1.0" || !c.IfChanged {
		t.Errorf("choices lost: %+v", c)
	}
	if len(c.Outputs) != 1 || c.Outputs[0] != "ova" || c.CACerts != nil {
		t.Errorf("outputs %v, CA certs %q", c.Outputs, c.CACerts)
	}
	if c.Store.Root != filepath.Join(home, "images") || c.CacheDir != filepath.Join(home, "c") {
		t.Errorf("store %s cache %s", c.Store.Root, c.CacheDir)
	}
	var names []string
	for _, s := range c.Recipe.Scripts {
		names = append(names, s.Name)
	}
	if !slices.Contains(names, "user-1-corp.sh") {
		t.Errorf("script not in the recipe: %v", names)
	}
	if c.Accel != "tcg" || c.BootTimeout != 7*time.Minute {
		t.Errorf("accel %s boot timeout %s", c.Accel, c.BootTimeout)
	}
	if !c.KeepOnFailure {
		t.Error("-on-error=abort must keep what failed, as --keep-on-failure does")
	}
}

// arch in the source block is --arch: an arm64 cloud image, and the
// VirtualBox exports it cannot have refused.
func TestPrepareArch(t *testing.T) {
	home := t.TempDir()
	var b Builder
	if _, _, err := b.Prepare(map[string]any{"image_name": "ubuntu-24.04", "arch": "aarch64", "fleet_home": home, "no_host_ca": true}); err != nil {
		t.Fatal(err)
	}
	if b.build.Arch != "arm64" || !strings.HasSuffix(b.build.CloudImageURL, "noble-server-cloudimg-arm64.img") {
		t.Errorf("arch %q image %s", b.build.Arch, b.build.CloudImageURL)
	}
	var b2 Builder
	if _, _, err := b2.Prepare(map[string]any{"image_name": "ubuntu-24.04", "arch": "arm64", "outputs": []string{"vagrant"}, "fleet_home": home, "no_host_ca": true}); err == nil {
		t.Error("an arm64 vagrant box was accepted")
	}
}

func TestPrepareRejectsBadBlocks(t *testing.T) {
	home := t.TempDir()
	for _, tc := range []struct {
		name string
		raw  map[string]any
		want string
	}{
		{"no image", map[string]any{"fleet_home": home}, "image_name is required"},
		{"unknown image", map[string]any{"image_name": "fedora", "fleet_home": home}, `unknown image "fedora"`},
		{"unknown output", map[string]any{"image_name": "ubuntu-24.04", "outputs": []string{"vhd"}, "fleet_home": home}, `unknown output "vhd"`},
		{"unknown key", map[string]any{"image_name": "ubuntu-24.04", "disk_size": 9, "fleet_home": home}, "disk_size"},
		{"bad duration", map[string]any{"image_name": "ubuntu-24.04", "boot_timeout": "soon", "fleet_home": home}, "boot_timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b Builder
			_, _, err := b.Prepare(tc.raw)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
	if entries, _ := os.ReadDir(home); len(entries) != 0 {
		t.Fatalf("Prepare made files: %v", entries)
	}
}

// A provisioner block would reach the image through the communicator the
// hook gets; it must fail before anything is built or stored.
func TestRunRefusesProvisionerBlocksBeforeBuilding(t *testing.T) {
	home := t.TempDir()
	var b Builder
	if _, _, err := b.Prepare(map[string]any{"image_name": "ubuntu-24.04", "no_host_ca": true, "fleet_home": home}); err != nil {
		t.Fatal(err)
	}
	hook := &packersdk.MockHook{}
	hook.RunFunc = func(ctx context.Context) error {
		err := hook.RunComm.Start(ctx, &packersdk.RemoteCmd{Command: "apt-get install -y cowsay"})
		if ctx.Err() == nil {
			t.Error("the refusal must cancel provisioning, or Packer's shell provisioner retries it for 5 minutes")
		}
		return err
	}
	art, err := b.Run(context.Background(), packersdk.TestUi(t), hook)
	if !errors.Is(err, errProvisioners) || art != nil {
		t.Fatalf("got %v, %v", art, err)
	}
	if hook.RunName != packersdk.HookProvision {
		t.Errorf("hook run as %q", hook.RunName)
	}
	if entries, _ := os.ReadDir(home); len(entries) != 0 {
		t.Fatalf("a refused build made files: %v", entries)
	}
}

func TestUiWriterSaysWholeLines(t *testing.T) {
	ui := &packersdk.MockUi{}
	w := &uiWriter{ui: ui}
	w.Write([]byte("download 10%\rdownload 5"))
	w.Write([]byte("0%\rdone\nverify: ok\n\n"))
	w.Write([]byte("tail"))
	w.Flush()
	var got []string
	for _, m := range ui.SayMessages {
		got = append(got, m.Message)
	}
	want := "download 10%|download 50%|done|verify: ok|tail"
	if strings.Join(got, "|") != want {
		t.Fatalf("said %q, want %q", strings.Join(got, "|"), want)
	}
}

func TestArtifactNamesTheStoredVersionAndExports(t *testing.T) {
	a := &Artifact{
		Image:   images.Image{Manifest: images.Manifest{Name: "debian-12", Version: "20261121-010203"}, Disk: "/h/images/debian-12/20261121-010203/disk.qcow2"},
		Outputs: map[string]string{"ova": "/h/x.ova", "qcow2": "/h/x.qcow2"},
	}
	if a.Id() != "debian-12@20261121-010203" || a.BuilderId() != BuilderID {
		t.Errorf("id %s builder %s", a.Id(), a.BuilderId())
	}
	if got := strings.Join(a.Files(), ","); got != a.Image.Disk+",/h/x.ova,/h/x.qcow2" {
		t.Errorf("files %s", got)
	}
	if !strings.Contains(a.String(), "stored and promoted") || !strings.Contains(a.String(), "ova: /h/x.ova") {
		t.Errorf("string %q", a.String())
	}
	if a.State("image_version") != "20261121-010203" || a.State("nope") != nil {
		t.Error("state")
	}
	if err := a.Destroy(); err != nil {
		t.Error(err)
	}
	a.Skipped = true
	if !strings.Contains(a.String(), "unchanged, still latest") {
		t.Errorf("skipped string %q", a.String())
	}
}
