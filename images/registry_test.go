package images

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agentfleet/agentfleet/internal/qcow2/qcow2test"
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
	disk, dsum, dsize := qcowFile(t, filepath.Join(work, "disk"), diskBytes)
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

// qcowFile writes a valid qcow2 of n bytes (at least its header's), its
// tail random, and returns its path, SHA-256 and size.
func qcowFile(t *testing.T, p string, n int, o ...qcow2test.Options) (string, string, int64) {
	t.Helper()
	var opts qcow2test.Options
	if len(o) > 0 {
		opts = o[0]
	}
	if opts.ClusterBits == 0 {
		opts.ClusterBits = 12
	}
	b := qcow2test.Image(opts)
	if len(b) < n {
		tail := make([]byte, n-len(b))
		rand.Read(tail)
		b = append(b, tail...)
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return p, hex.EncodeToString(sum[:]), int64(len(b))
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

// craftedImage is a version folder written by hand, as someone with push
// access to a registry would: any manifest, any disk, with digests that
// match, so that only fleet's own checks stand in the way.
func craftedImage(t *testing.T, m Manifest, disk qcow2test.Options) Image {
	t.Helper()
	return craftedImageFiles(t, m, disk, nil)
}

// craftedImageFiles is craftedImage with the outputs' contents by kind
// ("output KIND" where files has none).
func craftedImageFiles(t *testing.T, m Manifest, disk qcow2test.Options, files map[string][]byte) Image {
	t.Helper()
	dir := t.TempDir()
	p, sum, size := qcowFile(t, filepath.Join(dir, DiskFile), 64<<10, disk)
	m.DiskSHA256, m.DiskBytes = sum, size
	// Push reads the outputs from files with names of its own; the
	// manifest it sends says what it says.
	pushed := map[string]Output{}
	for kind, o := range m.Outputs {
		b, ok := files[kind]
		if !ok {
			b = []byte("output " + kind)
		}
		os.WriteFile(filepath.Join(dir, "out-"+kind), b, 0o644)
		s := sha256.Sum256(b)
		o.SHA256, o.Bytes = hex.EncodeToString(s[:]), int64(len(b))
		m.Outputs[kind] = o
		pushed[kind] = Output{File: "out-" + kind, SHA256: o.SHA256, Bytes: o.Bytes}
	}
	b, _ := json.MarshalIndent(m, "", "  ")
	if err := os.WriteFile(filepath.Join(dir, ManifestFile), b, 0o644); err != nil {
		t.Fatal(err)
	}
	img := Image{Manifest: m, Dir: dir, Disk: p}
	img.Outputs = pushed
	return img
}

// storeState is everything under a store's root: names, link targets and
// file contents, to show that a refused pull changed nothing.
func storeState(t *testing.T, root string) string {
	t.Helper()
	var b strings.Builder
	filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if strings.HasPrefix(rel, ".uploads") {
			return nil
		}
		switch {
		case fi.Mode()&os.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			fmt.Fprintf(&b, "%s -> %s\n", rel, target)
		case fi.Mode().IsRegular():
			c, _ := os.ReadFile(p)
			fmt.Fprintf(&b, "%s %x\n", rel, sha256.Sum256(c))
		default:
			fmt.Fprintf(&b, "%s/\n", rel)
		}
		return nil
	})
	return b.String()
}

// A pushed image whose disk names a host file pulls nothing: the digests
// match, but the header is refused, and the store (its latest included)
// is as it was.
func TestPullRefusesADiskThatNamesAHostFile(t *testing.T) {
	reg := registrytest.Start(t, "", "")
	ctx := context.Background()
	secret := filepath.Join(t.TempDir(), "id_ed25519")
	os.WriteFile(secret, []byte("-----BEGIN OPENSSH PRIVATE KEY-----\nthe host's key\n"), 0o600)
	// The store already has a good version, which stays latest.
	_, goodImg := storedImage(t, "20261201-010000", 80<<10)
	if _, err := open(t, reg.Addr+"/fleet/good").Push(ctx, goodImg); err != nil {
		t.Fatal(err)
	}
	dst := Store{Root: t.TempDir()}
	if _, err := open(t, reg.Addr+"/fleet/good").Pull(ctx, dst); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		disk qcow2test.Options
		want string
	}{
		"a backing file":              {qcow2test.Options{Backing: secret, BackingFormat: "raw"}, `names the backing file "` + secret + `"`},
		"a v2 backing file":           {qcow2test.Options{Version: 2, Backing: secret}, "names the backing file"},
		"an external data file":       {qcow2test.Options{DataFile: secret, Incompatible: 1 << 2}, "external file"},
		"an unknown incompatible bit": {qcow2test.Options{Incompatible: 1 << 12}, "incompatible feature bits"},
		"an encrypted disk":           {qcow2test.Options{CryptMethod: 2}, "encrypted"},
		"qcow version 9":              {qcow2test.Options{Version: 9}, "version 9"},
	} {
		t.Run(name, func(t *testing.T) {
			img := craftedImage(t, Manifest{Name: "debian-12", Version: "20261202-000000", Recipe: "full", BuiltAt: time.Now()}, tc.disk)
			repo := reg.Addr + "/fleet/" + strings.ReplaceAll(name, " ", "-")
			if _, err := open(t, repo).Push(ctx, img); err != nil {
				t.Fatal(err)
			}
			before := storeState(t, dst.Root)
			_, err := open(t, repo).Pull(ctx, dst)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "nothing is promoted") || strings.Contains(err.Error(), "\n") {
				t.Fatalf("pull: %v", err)
			}
			if after := storeState(t, dst.Root); after != before {
				t.Fatalf("a refused pull changed the store:\n%s\nwas:\n%s", after, before)
			}
			if got, err := dst.Resolve("debian-12"); err != nil || got.Version != goodImg.Version {
				t.Fatalf("latest is now %q, %v", got.Version, err)
			}
		})
	}
}

// A pushed manifest whose fields would become paths, links or terminal
// text outside what fleet takes is refused before anything is written:
// an arch like "../../../../victim" once made Promote replace a file
// outside the store with a symlink.
func TestPullRefusesAHostileManifest(t *testing.T) {
	reg := registrytest.Start(t, "", "")
	ctx := context.Background()
	top := t.TempDir()
	dst := Store{Root: filepath.Join(top, "store")}
	os.MkdirAll(dst.Root, 0o755)
	victim := filepath.Join(top, "victim")
	os.WriteFile(victim, []byte("a file outside the store"), 0o644)
	// Where the old latestOf put arch "../../../../victim": the victim.
	if filepath.Join(dst.Root, "debian-12", "latest-../../../../victim") != victim {
		t.Fatal("the test's path arithmetic is wrong")
	}
	base := func() Manifest {
		return Manifest{Name: "debian-12", Version: "20261203-000000", Recipe: "full", BuiltAt: time.Now()}
	}
	for name, mod := range map[string]func(*Manifest){
		"arch escaping the store": func(m *Manifest) { m.Arch = "../../../../victim" },
		"arch with a slash":       func(m *Manifest) { m.Arch = "amd64/../../x" },
		"unknown arch":            func(m *Manifest) { m.Arch = "riscv64" },
		"version escaping":        func(m *Manifest) { m.Version = "../../victim" },
		"version latest":          func(m *Manifest) { m.Version = "latest" },
		"version latest-arm64":    func(m *Manifest) { m.Version = "latest-arm64" },
		"output file escaping": func(m *Manifest) {
			m.Outputs = map[string]Output{OutputKernel: {File: "../../../victim"}}
		},
		"output over the manifest": func(m *Manifest) { m.Outputs = map[string]Output{OutputKernel: {File: ManifestFile}} },
		"output over the disk":     func(m *Manifest) { m.Outputs = map[string]Output{"ova": {File: DiskFile}} },
		"escape in the cmdline":    func(m *Manifest) { m.KernelCmdline = "root=/dev/vda \x1b]0;pwned\x07" },
		"escape in a package":      func(m *Manifest) { m.Packages = map[string]string{"docker": "27\x1b[2K\rwarning: none"} },
		"escape in the source":     func(m *Manifest) { m.Source = "https://x/\x1b[1A\x1b[2Kok" },
		"escape in the recipe":     func(m *Manifest) { m.Recipe = "full\x1b[31m" },
		"negative build time":      func(m *Manifest) { m.BuildSeconds = -1 },
	} {
		t.Run(name, func(t *testing.T) {
			m := base()
			mod(&m)
			img := craftedImage(t, m, qcow2test.Options{})
			repo := reg.Addr + "/fleet/" + strings.ReplaceAll(name, " ", "-") + ":t"
			if _, err := open(t, repo).Push(ctx, img); err != nil {
				t.Fatal(err)
			}
			before := storeState(t, top)
			_, err := open(t, repo).Pull(ctx, dst)
			if err == nil || !strings.Contains(err.Error(), "does not take") || strings.ContainsAny(err.Error(), "\n\r\x1b\x07") {
				t.Fatalf("pull: %q", err)
			}
			if after := storeState(t, top); after != before {
				t.Fatalf("a refused pull changed files:\n%s\nwas:\n%s", after, before)
			}
			if b, _ := os.ReadFile(victim); string(b) != "a file outside the store" {
				t.Fatal("the victim changed")
			}
		})
	}
}

// A node pulls each file of a pushed image by its digest alone: the bytes
// are the file's; a digest the registry lacks says to push.
func TestOpenBlobGivesAPushedFileByItsDigest(t *testing.T) {
	reg := registrytest.Start(t, "", "")
	_, img := storedImage(t, "20261201-030000", 200<<10)
	ctx := context.Background()
	ref := reg.Addr + "/fleet/debian-12"
	if _, err := open(t, ref).Push(ctx, img); err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadFile(img.Disk)
	rc, err := OpenBlob(ctx, ref, false, img.DiskSHA256, int64(len(want)))
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("blob: %d bytes (want %d), %v", len(got), len(want), err)
	}
	// A size below the blob's: the reader stops one byte past it, so the
	// caller sees a longer file than it was told.
	rc, err = OpenBlob(ctx, ref, false, img.DiskSHA256, 10)
	if err == nil {
		b, _ := io.ReadAll(rc)
		rc.Close()
		if len(b) > 11 {
			t.Errorf("read %d bytes of a blob said to be 10", len(b))
		}
	}
	missing := strings.Repeat("ab", 32)
	if _, err := OpenBlob(ctx, ref, false, missing, 5); err == nil || !strings.Contains(err.Error(), "has no blob sha256:"+missing) || !strings.Contains(err.Error(), "fleet image push") {
		t.Errorf("a blob the registry lacks: %v", err)
	}
	for _, bad := range []string{"", "../../etc/passwd", strings.Repeat("g", 64)} {
		if _, err := OpenBlob(ctx, ref, false, bad, 5); err == nil || !strings.Contains(err.Error(), "not a sha256") {
			t.Errorf("digest %q: %v", bad, err)
		}
	}
}
