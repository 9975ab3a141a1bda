package fleet

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/agentfleet/agentfleet/images"
	"github.com/agentfleet/agentfleet/internal/layout"
	"github.com/agentfleet/agentfleet/internal/qcow2/qcow2test"
	"github.com/agentfleet/agentfleet/internal/vm"
)

// snapDriver can save state; anything that would boot a machine fails the
// test, so a decision to make a template shows.
type snapDriver struct {
	vm.Driver
	vm.Snapshotter
	t *testing.T
}

func (snapDriver) Name() string { return "snap" }
func (snapDriver) Capabilities() vm.Capabilities {
	return vm.Capabilities{Snapshots: true, ForwardIP: "10.0.2.100"}
}
func (snapDriver) StateKey(context.Context, vm.Spec) (string, error) { return "k", nil }
func (d snapDriver) Create(context.Context, vm.Spec) error {
	d.t.Error("a template was being made")
	return os.ErrInvalid
}

// Where a spawn cannot or may not restore, it boots cold and says why in
// one line; --no-warm restores from a template that exists and makes none.
func TestWarmTemplateDecidesAndSaysWhy(t *testing.T) {
	imgDir := t.TempDir()
	img := ImageRef{Name: "debian-12", Version: "v1", Disk: filepath.Join(imgDir, layout.ImageDisk), Recipe: "full"}
	cases := []struct {
		name   string
		driver vm.Driver
		req    SpawnRequest
		want   string
	}{
		{"--cold", snapDriver{t: t}, SpawnRequest{Image: img, Warm: WarmNever}, "cold boot: --cold"},
		{"a driver that cannot save state", fakeDriver{}, SpawnRequest{Image: img}, "the fake driver cannot restore saved machines"},
		{"a shared folder", snapDriver{t: t}, SpawnRequest{Image: img, Workspace: WorkspaceRequest{Mode: SyncShared}}, "--sync shared: a live virtiofs share cannot be saved"},
		{"an image without the guest agent", snapDriver{t: t}, SpawnRequest{Image: ImageRef{Name: "debian-12", Version: "v1", Disk: img.Disk, Recipe: "base"}}, "(recipe base) has no guest agent"},
		{"--no-warm and no template", snapDriver{t: t}, SpawnRequest{Image: img, CPUs: 2, MemoryMiB: 1024, Warm: WarmExisting}, "no warm template of debian-12@v1 for 2 CPUs and 1024 MiB, and --no-warm makes none"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			c := &Controller{Layout: Layout{Root: t.TempDir()}, Fleet: "w", Driver: tc.driver, Progress: &out, Self: "/usr/bin/fleet"}
			if tpl := c.warmTemplate(context.Background(), tc.req, nil); tpl != nil {
				t.Fatalf("restores from %+v", tpl)
			}
			if !strings.Contains(out.String(), tc.want) || strings.Count(strings.TrimSpace(out.String()), "\n") != 0 {
				t.Errorf("said %q, want one line with %q", out.String(), tc.want)
			}
		})
	}
	t.Run("--no-warm with a template", func(t *testing.T) {
		staged := filepath.Join(imgDir, layout.WarmFolder, "staged")
		os.MkdirAll(staged, 0o755)
		for _, f := range []string{images.TemplateMemory, images.TemplateState} {
			os.WriteFile(filepath.Join(staged, f), []byte(f), 0o644)
		}
		// The template's disk is an overlay on the image's, as the store checks.
		if err := qcow2test.Write(filepath.Join(staged, images.TemplateDisk), qcow2test.Options{Backing: img.Disk, BackingFormat: "qcow2"}); err != nil {
			t.Fatal(err)
		}
		key := "image=debian-12@v1 k"
		os.WriteFile(filepath.Join(staged, images.TemplateMeta), []byte(`{"key":"`+key+`"}`), 0o644)
		if _, err := images.PublishTemplate(images.Image{Dir: imgDir, Disk: img.Disk}, key, staged); err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		c := &Controller{Layout: Layout{Root: t.TempDir()}, Fleet: "w", Driver: snapDriver{t: t}, Progress: &out, Self: "/usr/bin/fleet"}
		tpl := c.warmTemplate(context.Background(), SpawnRequest{Image: img, Warm: WarmExisting}, nil)
		if tpl == nil || tpl.Key != key || out.Len() != 0 {
			t.Errorf("template %+v, said %q", tpl, out.String())
		}
	})
}
