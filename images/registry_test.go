package images

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agentfleet/agentfleet/internal/registrytest"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// storedImage adds a small image with a disk and a kernel output to a
// fresh store, as a bake would.
func storedImage(t *testing.T, version string, diskBytes int) (Store, Image) {
	t.Helper()
	s := Store{Root: t.TempDir()}
	work := t.TempDir()
	file := func(name string, n int) (string, string, int64) {
		b := make([]byte, n)
		rand.Read(b)
		p := filepath.Join(work, name)
		os.WriteFile(p, b, 0o644)
		sum := sha256.Sum256(b)
		return p, hex.EncodeToString(sum[:]), int64(n)
	}
	disk, dsum, dsize := file("disk", diskBytes)
	kern, ksum, ksize := file("vmlinuz", 3000)
	m := Manifest{Name: "debian-12", Version: version, Recipe: "base", DiskSHA256: dsum, DiskBytes: dsize,
		Outputs: map[string]Output{OutputKernel: {File: "vmlinuz", SHA256: ksum, Bytes: ksize}}, BuiltAt: time.Now()}
	img, err := s.Add(m, disk, map[string]string{OutputKernel: kern})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Promote(m.Name, m.Version); err != nil {
		t.Fatal(err)
	}
	return s, img
}

func open(t *testing.T, ref string) *Remote {
	r, err := OpenRemote(ref, false, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func same(t *testing.T, a, b string) {
	t.Helper()
	x, _ := os.ReadFile(a)
	y, _ := os.ReadFile(b)
	if string(x) != string(y) || len(x) == 0 {
		t.Fatalf("%s and %s differ", a, b)
	}
}

func TestPushPullThroughARealRegistry(t *testing.T) {
	reg := registrytest.Start(t, "", "")
	old := ChunkSize
	ChunkSize = 100 << 10 // several chunks per disk
	defer func() { ChunkSize = old }()
	_, img := storedImage(t, "20261201-030000", 350<<10)
	ctx := context.Background()
	if _, err := open(t, reg.Addr+"/fleet/debian-12").Push(ctx, img); err != nil {
		t.Fatal(err)
	}
	// Into a fresh store: every file arrives, read-only, promoted.
	dst := Store{Root: t.TempDir()}
	got, err := open(t, reg.Addr+"/fleet/debian-12:latest").Pull(ctx, dst)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Latest || got.DiskSHA256 != img.DiskSHA256 || got.DirectBoot() != nil && got.KernelCmdline == "" {
		t.Fatalf("%+v", got)
	}
	same(t, img.Disk, got.Disk)
	same(t, filepath.Join(img.Dir, "vmlinuz"), filepath.Join(got.Dir, "vmlinuz"))
	if fi, _ := os.Stat(got.Disk); fi.Mode().Perm()&0o222 != 0 {
		t.Errorf("a pulled disk is writable: %v", fi.Mode())
	}
	if r, _ := dst.Resolve("debian-12"); r.Version != img.Version {
		t.Errorf("latest is %q", r.Version)
	}
	// Again: nothing to do. By version tag too.
	if _, err := open(t, reg.Addr+"/fleet/debian-12:"+img.Version).Pull(ctx, dst); !errors.Is(err, ErrUpToDate) {
		t.Fatalf("second pull: %v", err)
	}
	// A second push sends no blob again.
	r := open(t, reg.Addr+"/fleet/debian-12")
	var said []string
	r.Progress = func(f string, a ...any) { said = append(said, f) }
	if _, err := r.Push(ctx, img); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(strings.Join(said, "\n"), "already in the registry"); n != 2 {
		t.Errorf("second push: %v", said)
	}
}

func TestPushResumesACutOffUpload(t *testing.T) {
	reg := registrytest.Start(t, "", "")
	old := ChunkSize
	ChunkSize = 64 << 10
	defer func() { ChunkSize = old }()
	_, img := storedImage(t, "20261201-040000", 640<<10)
	state := t.TempDir()
	r, _ := OpenRemote(reg.Addr+"/fleet/debian-12", false, state)
	// Cancel after the fourth chunk of the disk.
	ctx, cancel := context.WithCancel(context.Background())
	chunks := 0
	r.Progress = func(f string, a ...any) {
		if strings.Contains(f, "of %d MiB") && a[0] == DiskFile {
			if chunks++; chunks == 4 {
				cancel()
			}
		}
	}
	if _, err := r.Push(ctx, img); err == nil {
		t.Fatal("a cancelled push succeeded")
	}
	r2, _ := OpenRemote(reg.Addr+"/fleet/debian-12", false, state)
	var resumed string
	r2.Progress = func(f string, a ...any) {
		if strings.HasPrefix(f, "%s: resuming") {
			resumed = f
		}
	}
	if _, err := r2.Push(context.Background(), img); err != nil {
		t.Fatal(err)
	}
	if resumed == "" {
		t.Error("the second push started the disk over")
	}
	dst := Store{Root: t.TempDir()}
	got, err := open(t, reg.Addr+"/fleet/debian-12").Pull(context.Background(), dst)
	if err != nil {
		t.Fatal(err)
	}
	same(t, img.Disk, got.Disk)
}

func TestPullRefusesACorruptedBlob(t *testing.T) {
	reg := registrytest.Start(t, "", "")
	_, img := storedImage(t, "20261201-050000", 200<<10)
	ctx := context.Background()
	if _, err := open(t, reg.Addr+"/fleet/debian-12").Push(ctx, img); err != nil {
		t.Fatal(err)
	}
	blob := reg.BlobPath("sha256:" + img.DiskSHA256)
	f, err := os.OpenFile(blob, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("corrupted"), 1000)
	f.Close()
	dst := Store{Root: t.TempDir()}
	_, err = open(t, reg.Addr+"/fleet/debian-12").Pull(ctx, dst)
	if err == nil || !strings.Contains(err.Error(), "does not match its digest") {
		t.Fatalf("pull of a corrupted disk: %v", err)
	}
	if imgs, _ := dst.List(); len(imgs) != 0 {
		t.Fatalf("something was stored: %v", imgs)
	}
	if _, err := dst.Resolve("debian-12"); err == nil {
		t.Fatal("a latest was promoted")
	}
	left, _ := filepath.Glob(filepath.Join(dst.Root, "debian-12", ".*"))
	if len(left) != 0 {
		t.Fatalf("staging left behind: %v", left)
	}
}

func TestPullThroughBasicAuthFromADockerConfig(t *testing.T) {
	reg := registrytest.Start(t, "fleet", "s3cret-pass")
	_, img := storedImage(t, "20261201-060000", 50<<10)
	ctx := context.Background()
	t.Setenv("DOCKER_CONFIG", t.TempDir()) // no login: refused
	if _, err := open(t, reg.Addr+"/fleet/debian-12").Push(ctx, img); err == nil {
		t.Fatal("a push without credentials went through")
	}
	t.Setenv("DOCKER_CONFIG", reg.DockerConfig)
	if _, err := open(t, reg.Addr+"/fleet/debian-12").Push(ctx, img); err != nil {
		t.Fatal(err)
	}
	if _, err := open(t, reg.Addr+"/fleet/debian-12").Pull(ctx, Store{Root: t.TempDir()}); err != nil {
		t.Fatal(err)
	}
}

// A registry (or someone who can write to it) that lies about the layers.
func TestCheckLayersRefusesWhatTheManifestDoesNotName(t *testing.T) {
	m := Manifest{DiskSHA256: strings.Repeat("a", 64), DiskBytes: 10,
		Outputs: map[string]Output{OutputKernel: {File: "vmlinuz", SHA256: strings.Repeat("b", 64), Bytes: 5}}}
	d := func(mt, title, kind, sum string, size int64) ocispec.Descriptor {
		return ocispec.Descriptor{MediaType: mt, Digest: digest.NewDigestFromEncoded(digest.SHA256, sum), Size: size,
			Annotations: map[string]string{ocispec.AnnotationTitle: title, OutputAnnotation: kind}}
	}
	disk := d(DiskMediaType, DiskFile, "", strings.Repeat("a", 64), 10)
	kern := d(OutputMediaType, "vmlinuz", OutputKernel, strings.Repeat("b", 64), 5)
	if err := checkLayers([]ocispec.Descriptor{disk, kern}, m); err != nil {
		t.Fatal(err)
	}
	for name, layers := range map[string][]ocispec.Descriptor{
		"path traversal":     {disk, d(OutputMediaType, "../../.ssh/authorized_keys", OutputKernel, strings.Repeat("b", 64), 5)},
		"hidden file":        {disk, d(OutputMediaType, ".bashrc", OutputKernel, strings.Repeat("b", 64), 5)},
		"manifest overwrite": {disk, d(OutputMediaType, ManifestFile, OutputKernel, strings.Repeat("b", 64), 5)},
		"wrong digest":       {d(DiskMediaType, DiskFile, "", strings.Repeat("c", 64), 10), kern},
		"wrong size":         {d(DiskMediaType, DiskFile, "", strings.Repeat("a", 64), 11), kern},
		"missing output":     {disk},
		"extra layer":        {disk, kern, d(OutputMediaType, "extra", "ova", strings.Repeat("b", 64), 5)},
		"two disks":          {disk, disk},
		"other media type":   {disk, d("application/x-sh", "vmlinuz", OutputKernel, strings.Repeat("b", 64), 5)},
		"renamed disk":       {d(DiskMediaType, "disk.img", "", strings.Repeat("a", 64), 10), kern},
	} {
		if err := checkLayers(layers, m); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
}
