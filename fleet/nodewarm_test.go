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

// A node's store: a template is found only by its image digest and the
// node driver's own key, is checked like the controller's (an overlay on
// the node's copy of the image), and --no-warm never makes one. A bad
// digest or a driver that cannot save state is an error, not a boot.
func TestNodeTemplatesFindsOnlyItsOwnShape(t *testing.T) {
	store := t.TempDir()
	disk := filepath.Join(t.TempDir(), "sha256-x")
	os.WriteFile(disk, []byte("image"), 0o644)
	digest := strings.Repeat("ab", 32)
	s := vm.Spec{Name: "p-1", BaseImage: disk, BaseImageSHA256: digest, CPUs: 1, MemoryMiB: 1024}
	nt := NodeTemplates{}
	ctx := context.Background()

	if _, err := nt.Template(ctx, snapDriver{t: t}, store, s, false); err == nil || !strings.Contains(err.Error(), "--no-warm makes none") {
		t.Fatalf("an empty store, --no-warm: %v", err)
	}
	bad := s
	bad.BaseImageSHA256 = "../../etc"
	if _, err := nt.Template(ctx, snapDriver{t: t}, store, bad, true); err == nil || !strings.Contains(err.Error(), "no sha256 digest") {
		t.Fatalf("a bad digest: %v", err)
	}
	if _, err := nt.Template(ctx, fakeDriver{}, store, s, true); err == nil || !strings.Contains(err.Error(), "cannot save machine state") {
		t.Fatalf("a driver without snapshots: %v", err)
	}

	// A template published for this digest and snapDriver's key "k".
	img := images.Image{Dir: filepath.Join(store, digest[:32]), Disk: disk}
	key := "image=sha256:" + digest + " k"
	staged := filepath.Join(img.Dir, layout.WarmFolder, "staged")
	os.MkdirAll(staged, 0o700)
	for _, f := range []string{images.TemplateMemory, images.TemplateState} {
		os.WriteFile(filepath.Join(staged, f), []byte(f), 0o600)
	}
	if err := qcow2test.Write(filepath.Join(staged, images.TemplateDisk), qcow2test.Options{Backing: disk, BackingFormat: "qcow2"}); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(staged, images.TemplateMeta), []byte(`{"key":"`+key+`"}`), 0o600)
	if _, err := images.PublishTemplate(img, key, staged); err != nil {
		t.Fatal(err)
	}
	tp, err := nt.Template(ctx, snapDriver{t: t}, store, s, false)
	if err != nil || !strings.HasPrefix(tp.Disk, img.Dir) || filepath.Base(tp.Memory) != images.TemplateMemory {
		t.Fatalf("found %+v, %v", tp, err)
	}
	// Another image (digest) has none: snapDriver fails the test if one
	// were made, and --no-warm says there is none.
	other := s
	other.BaseImageSHA256 = strings.Repeat("cd", 32)
	if _, err := nt.Template(ctx, snapDriver{t: t}, store, other, false); err == nil {
		t.Fatal("another image's machine found this image's template")
	}
	// A node copy that is not the disk the template's overlay names.
	moved := s
	moved.BaseImage = filepath.Join(t.TempDir(), "elsewhere")
	os.WriteFile(moved.BaseImage, []byte("image"), 0o644)
	if _, err := nt.Template(ctx, snapDriver{t: t}, store, moved, false); err == nil {
		t.Fatal("a template on another disk was used")
	}
}

// A driver whose machines run on other hosts never makes a template here:
// spawn asks each node for its own, as --cold and --no-warm say.
func TestHostWarmFollowsTheWarmFlags(t *testing.T) {
	img := ImageRef{Name: "debian-12", Version: "v1", Recipe: "full"}
	for _, tc := range []struct {
		req  SpawnRequest
		want vm.HostWarm
		say  string
	}{
		{SpawnRequest{Image: img}, vm.HostWarmMake, "a node without one makes it first"},
		{SpawnRequest{Image: img, Warm: WarmExisting}, vm.HostWarmExisting, "--no-warm"},
		{SpawnRequest{Image: img, Warm: WarmNever}, vm.HostWarmOff, "cold boot: --cold"},
		{SpawnRequest{Image: ImageRef{Name: "debian-12", Version: "v1", Recipe: "base"}}, vm.HostWarmOff, "has no guest agent"},
	} {
		var out bytes.Buffer
		c := &Controller{Layout: Layout{Root: t.TempDir()}, Fleet: "w", Driver: fakeDriver{}, Progress: &out}
		if got := c.Templates().hostWarm(tc.req); got != tc.want || !strings.Contains(out.String(), tc.say) {
			t.Errorf("%+v: %d, said %q", tc.req.Warm, got, out.String())
		}
	}
}
