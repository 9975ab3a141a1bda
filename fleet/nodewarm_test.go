package fleet

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

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
	digest := strings.Repeat("ab", 32)
	disk := filepath.Join(t.TempDir(), "sha256-"+digest)
	os.WriteFile(disk, []byte("image"), 0o644)
	s := vm.Spec{Name: "p-1", BaseImage: disk, BaseImageSHA256: digest, CPUs: 1, MemoryMiB: 1024}
	nt := NodeTemplates{}
	ctx := context.Background()

	if _, err := nt.Template(ctx, snapDriver{t: t}, store, s, false); err == nil || !strings.Contains(err.Error(), "--no-warm makes none") {
		t.Fatalf("an empty store, --no-warm: %v", err)
	}
	bad := s
	bad.BaseImageSHA256 = "../../etc"
	if _, err := nt.Template(ctx, snapDriver{t: t}, store, bad, true); err == nil || !strings.Contains(err.Error(), "not named by its sha256 digest") {
		t.Fatalf("a bad digest: %v", err)
	}
	// A digest that is not the copy's (the request named it twice).
	lying := s
	lying.BaseImageSHA256 = strings.Repeat("cd", 32)
	if _, err := nt.Template(ctx, snapDriver{t: t}, store, lying, false); err == nil || !strings.Contains(err.Error(), "not named by its sha256 digest") {
		t.Fatalf("a digest that is not the copy's: %v", err)
	}
	if _, err := nt.Template(ctx, fakeDriver{}, store, s, true); err == nil || !strings.Contains(err.Error(), "cannot save machine state") {
		t.Fatalf("a driver without snapshots: %v", err)
	}

	// A template published for this digest and snapDriver's key "k".
	img := images.Image{Dir: filepath.Join(store, digest[:16]), Disk: disk}
	host, _ := os.Hostname()
	key := "image=sha256:" + digest + " node=" + host + " boot=firmware k"
	if _, err := images.PublishTemplate(img, key, restage(t, img, disk, key)); err != nil {
		t.Fatal(err)
	}
	tp, err := nt.Template(ctx, snapDriver{t: t}, store, s, false)
	if err != nil || !strings.HasPrefix(tp.Disk, img.Dir) || filepath.Base(tp.Memory) != images.TemplateMemory {
		t.Fatalf("found %+v, %v", tp, err)
	}
	// Forget removes it; a folder that is no template is refused.
	if err := nt.Forget(ctx, tp); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Dir(tp.Disk)); !os.IsNotExist(err) {
		t.Errorf("forgotten template still there: %v", err)
	}
	if err := nt.Forget(ctx, vm.Template{Disk: filepath.Join(store, "disk.qcow2")}); err == nil {
		t.Error("Forget removed a folder that is no template's")
	}
	// The same image's template made by another node (a node_dir several
	// nodes share) is not this node's.
	otherKey := "image=sha256:" + digest + " node=othernode boot=firmware k"
	if _, err := images.PublishTemplate(img, otherKey, restage(t, img, disk, otherKey)); err != nil {
		t.Fatal(err)
	}
	if _, err := nt.Template(ctx, snapDriver{t: t}, store, s, false); err == nil {
		t.Fatal("another node's template was used")
	}
	if _, err := images.PublishTemplate(img, key, restage(t, img, disk, key)); err != nil {
		t.Fatal(err)
	}
	// A node copy that is not the disk the template's overlay names.
	moved := s
	moved.BaseImage = filepath.Join(t.TempDir(), "sha256-"+digest)
	os.WriteFile(moved.BaseImage, []byte("image"), 0o644)
	if _, err := nt.Template(ctx, snapDriver{t: t}, store, moved, false); err == nil {
		t.Fatal("a template on another disk was used")
	}
	if _, err := nt.Template(ctx, snapDriver{t: t}, store, s, false); err != nil {
		t.Fatalf("its own copy's template: %v", err)
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

// restage writes a template's files for key in img's warm folder, as a
// maker would before publishing them.
func restage(t *testing.T, img images.Image, disk, key string) string {
	t.Helper()
	staged := filepath.Join(img.Dir, layout.WarmFolder, layout.TemplateStagingPrefix+randomHex(4))
	os.MkdirAll(staged, 0o700)
	for _, f := range []string{images.TemplateMemory, images.TemplateState} {
		os.WriteFile(filepath.Join(staged, f), []byte(f), 0o600)
	}
	if err := qcow2test.Write(filepath.Join(staged, images.TemplateDisk), qcow2test.Options{Backing: disk, BackingFormat: "qcow2"}); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(staged, images.TemplateMeta), []byte(`{"key":"`+key+`"}`), 0o600)
	return staged
}

// The template machine's proxies serve its own folder, as the
// controller's do, never the job's; the credential stays out of it.
func TestNodeTemplateShapeServesItsOwnFolder(t *testing.T) {
	s := vm.Spec{Name: "p-1", Dir: "/n/job-7", CPUs: 1, MemoryMiB: 1024, Network: vm.Network{Restrict: true,
		Env:      []string{"FLEET_UPSTREAM_CREDENTIAL=api_key:sk-ant-x"},
		Forwards: []vm.Forward{{GuestPort: 3128, Command: []string{"/f", "__proxy", "egress", "/n/job-7"}}}}}
	got := nodeTemplateShape(s, "fleet-warm-1", "/n/templates/x/warm/.make-1")
	if len(got.Network.Env) != 0 || !got.Network.Restrict || got.Network.Forwards[0].GuestPort != 3128 ||
		strings.Join(got.Network.Forwards[0].Command, " ") != "/f __proxy egress /n/templates/x/warm/.make-1" || got.Seed.HostKeyPrivate != "" {
		t.Errorf("shape %+v", got)
	}
	if s.Network.Forwards[0].Command[3] != "/n/job-7" {
		t.Error("the job's own spec was changed")
	}
	if bootKey(nil) != "firmware" || bootKey(&vm.DirectBoot{Kernel: "/a/sha256-1", Cmdline: "x"}) == bootKey(&vm.DirectBoot{Kernel: "/a/sha256-1", Cmdline: "y"}) {
		t.Error("the boot key does not tell command lines apart")
	}
}

// A half-made template older than the sweep's age goes; a fresh one (a
// maker at work) stays.
func TestSweepStagingRemovesOnlyStaleMakes(t *testing.T) {
	warm := t.TempDir()
	old, fresh, kept := filepath.Join(warm, layout.TemplateStagingPrefix+"old"), filepath.Join(warm, layout.TemplateStagingPrefix+"new"), filepath.Join(warm, "0123")
	for _, d := range []string{old, fresh, kept} {
		os.Mkdir(d, 0o700)
	}
	past := time.Now().Add(-2 * time.Hour)
	os.Chtimes(old, past, past)
	os.Chtimes(kept, past, past)
	sweepStaging(warm, time.Hour)
	for d, want := range map[string]bool{old: false, fresh: true, kept: true} {
		if _, err := os.Stat(d); (err == nil) != want {
			t.Errorf("%s: exists %v, want %v", filepath.Base(d), err == nil, want)
		}
	}
}

// A node's prebuild is found only for the key asked for on this node's
// own template key, checked like the controller's; a machine that was not
// restored from the node's template is never saved as one.
func TestNodePrebuildsAreFoundOnlyByTheirKeyOnThisNodesTemplate(t *testing.T) {
	store := t.TempDir()
	digest := strings.Repeat("ab", 32)
	disk := filepath.Join(t.TempDir(), "sha256-"+digest)
	os.WriteFile(disk, []byte("image"), 0o644)
	s := vm.Spec{Name: "p-1", BaseImage: disk, BaseImageSHA256: digest, CPUs: 1, MemoryMiB: 1024, HostPrebuild: "setup=npm ci inputs=abc"}
	nt := NodeTemplates{}
	ctx := context.Background()
	if _, err := nt.Prebuild(ctx, snapDriver{t: t}, store, s); err == nil || !strings.Contains(err.Error(), "no prebuild of this project on this node") {
		t.Fatalf("an empty store: %v", err)
	}
	img := images.Image{Dir: filepath.Join(store, digest[:16]), Disk: disk}
	host, _ := os.Hostname()
	tkey := "image=sha256:" + digest + " node=" + host + " boot=firmware k"
	if _, err := nt.Prebuild(ctx, snapDriver{t: t}, store, s); err == nil {
		t.Fatal("a prebuild without its warm template was found")
	}
	wt, err := images.PublishTemplate(img, tkey, restage(t, img, disk, tkey))
	if err != nil {
		t.Fatal(err)
	}
	publish := func(key string) {
		t.Helper()
		staged := restage(t, img, disk, key)
		os.WriteFile(filepath.Join(staged, images.TemplateMeta), []byte(`{"key":"`+key+`","kind":"prebuild","template_key":"`+tkey+`"}`), 0o600)
		if _, err := images.PublishPrebuild(img, key, staged); err != nil {
			t.Fatal(err)
		}
	}
	// Another project's, and this project's made on another node.
	publish(nodePrebuildKey(tkey, wt, "setup=npm ci inputs=other"))
	publish(nodePrebuildKey(strings.Replace(tkey, host, "othernode", 1), wt, s.HostPrebuild))
	if _, err := nt.Prebuild(ctx, snapDriver{t: t}, store, s); err == nil {
		t.Fatal("another project's or node's prebuild was used")
	}
	publish(nodePrebuildKey(tkey, wt, s.HostPrebuild))
	p, err := nt.Prebuild(ctx, snapDriver{t: t}, store, s)
	if err != nil || !strings.HasPrefix(p.Disk, filepath.Join(img.Dir, layout.PrebuildFolder)) {
		t.Fatalf("its own: %+v %v", p, err)
	}
	// Its template removed and made again (a failed restore): the old
	// prebuild overlays a disk that is gone, and is not used.
	if err := nt.Forget(ctx, wt.VM()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond)
	staged := restage(t, img, disk, tkey)
	os.WriteFile(filepath.Join(staged, images.TemplateMeta), []byte(`{"key":"`+tkey+`","created_at":"`+time.Now().UTC().Format(time.RFC3339Nano)+`"}`), 0o600)
	if _, err := images.PublishTemplate(img, tkey, staged); err != nil {
		t.Fatal(err)
	}
	if _, err := nt.Prebuild(ctx, snapDriver{t: t}, store, s); err == nil {
		t.Fatal("a prebuild of a removed template was used on its remade one")
	}
	// Forget takes a prebuild that did not restore, too.
	if err := nt.Forget(ctx, p); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Dir(p.Disk)); !os.IsNotExist(err) {
		t.Fatal("a forgotten prebuild is still there")
	}
	if _, err := nt.SavePrebuild(ctx, snapDriver{t: t}, store, s, "k2", vm.PrebuildInfo{}); err == nil || !strings.Contains(err.Error(), "not restored from this node's warm template") {
		t.Fatalf("a booted machine saved: %v", err)
	}
}
