package images

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentfleet/agentfleet/internal/qcow2/qcow2test"
	"github.com/agentfleet/agentfleet/internal/vm"
)

// addVersion stores a fake disk as name@version.
func addVersion(t *testing.T, s Store, name, version string) Image {
	t.Helper()
	disk := filepath.Join(t.TempDir(), "disk")
	if err := qcow2test.Write(disk, qcow2test.Options{Size: uint64(len(version)) << 20}); err != nil {
		t.Fatal(err)
	}
	img, err := s.Add(Manifest{Name: name, Version: version, RecipeHash: "r-" + version}, disk)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func TestAddStoresReadOnlyDiskAndDoesNotPromote(t *testing.T) {
	s := Store{Root: t.TempDir()}
	img := addVersion(t, s, "debian-12", "v1")
	fi, err := os.Stat(img.Disk)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o444 {
		t.Errorf("disk mode %v, want read-only", fi.Mode().Perm())
	}
	if _, err := s.Resolve("debian-12"); err == nil {
		t.Fatal("an added but unpromoted version must not resolve as latest")
	}
	if got, err := s.Resolve("debian-12@v1"); err != nil || got.RecipeHash != "r-v1" {
		t.Fatalf("resolve by version: %+v %v", got, err)
	}
	if _, err := s.Add(Manifest{Name: "debian-12", Version: "v1"}, img.Disk); err == nil {
		t.Fatal("adding an existing version must fail")
	}
	entries, _ := os.ReadDir(filepath.Join(s.Root, "debian-12"))
	if len(entries) != 1 {
		t.Fatalf("staging left behind: %v", entries)
	}
}

func TestResolveErrors(t *testing.T) {
	s := Store{Root: t.TempDir()}
	for ref, want := range map[string]string{
		"windows-95":             `unknown image "windows-95" (known images: ubuntu-24.04, debian-12)`,
		"debian-12":              "image debian-12 is not built yet; build it with: fleet image build debian-12",
		"debian-12@nope":         "image debian-12@nope: not in the store",
		"ubuntu-24.04@x/":        `image ubuntu-24.04@x/: version "x/" is not a version fleet takes`,
		"debian-12@../../../etc": `image debian-12@../../../etc: version "../../../etc" is not`,
		"debian-12@latest":       `image debian-12@latest: version "latest" is not`,
		"debian-12@\x1b]0;x\x07": `image debian-12@\e]0;x\x07: version "\e]0;x\x07" is not`,
	} {
		_, err := s.Resolve(ref)
		if err == nil || len(err.Error()) < len(want) || err.Error()[:len(want)] != want {
			t.Errorf("Resolve(%q) = %v, want prefix %q", ref, err, want)
		}
	}
}

func TestPromoteMovesLatestAtomically(t *testing.T) {
	s := Store{Root: t.TempDir()}
	addVersion(t, s, "debian-12", "v1")
	addVersion(t, s, "debian-12", "v2")
	if err := s.Promote("debian-12", "v1"); err != nil {
		t.Fatal(err)
	}
	if err := s.Promote("debian-12", "v9"); err == nil {
		t.Fatal("promoting a missing version must fail")
	}
	// A reader racing with repeated promotions sees v1 or v2, never nothing.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var bad error
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			img, err := s.Resolve("debian-12")
			if err != nil || (img.Version != "v1" && img.Version != "v2") {
				bad = err
				if err == nil {
					bad = os.ErrInvalid
				}
				return
			}
		}
	}()
	deadline := time.Now().Add(300 * time.Millisecond)
	for i := 0; time.Now().Before(deadline); i++ {
		v := []string{"v1", "v2"}[i%2]
		if err := s.Promote("debian-12", v); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	if bad != nil {
		t.Fatalf("reader saw a torn latest: %v", bad)
	}
}

func TestListNewestFirstWithLatestMarked(t *testing.T) {
	s := Store{Root: t.TempDir()}
	addVersion(t, s, "debian-12", "20260101-000000")
	addVersion(t, s, "debian-12", "20260301-000000")
	addVersion(t, s, "ubuntu-24.04", "20260201-000000")
	s.Promote("debian-12", "20260101-000000")
	os.MkdirAll(filepath.Join(s.Root, "debian-12", ".staging-x"), 0o755) // in-progress add
	imgs, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, i := range imgs {
		mark := ""
		if i.Latest {
			mark = "*"
		}
		got = append(got, i.Name+"@"+i.Version+mark)
	}
	want := []string{"debian-12@20260301-000000", "debian-12@20260101-000000*", "ubuntu-24.04@20260201-000000"}
	if len(got) != len(want) {
		t.Fatalf("got %v want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("got %v want %v", got, want)
		}
	}
}

func TestPruneKeepsNewestLatestAndInUse(t *testing.T) {
	s := Store{Root: t.TempDir()}
	var all []Image
	for _, v := range []string{"v1", "v2", "v3", "v4", "v5"} {
		all = append(all, addVersion(t, s, "debian-12", v))
	}
	s.Promote("debian-12", "v2")                // an older version is latest (new ones failed checks)
	inUse := map[string]bool{all[0].Disk: true} // a machine still links to v1
	removed, err := s.Prune(2, inUse)
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 1 || removed[0].Version != "v3" {
		t.Fatalf("removed %+v, want only v3", removed)
	}
	left, _ := s.List()
	var vs []string
	for _, i := range left {
		vs = append(vs, i.Version)
	}
	if len(vs) != 4 || vs[0] != "v5" || vs[1] != "v4" || vs[2] != "v2" || vs[3] != "v1" {
		t.Fatalf("left %v", vs)
	}
	if _, err := s.Resolve("debian-12"); err != nil {
		t.Fatalf("latest broken after prune: %v", err)
	}
	if _, err := s.Prune(0, nil); err == nil {
		t.Fatal("--keep 0 must be refused")
	}
}

func TestPruneKeepsAVersionWhoseOVAIsInUse(t *testing.T) {
	s := Store{Root: t.TempDir()}
	var all []Image
	for _, v := range []string{"v1", "v2", "v3"} {
		all = append(all, addVersion(t, s, "debian-12", v))
	}
	// A VirtualBox machine was made from v1's OVA.
	inUse := map[string]bool{filepath.Join(all[0].Dir, "debian-12-v1.ova"): true}
	removed, err := s.Prune(1, inUse)
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 1 || removed[0].Version != "v2" {
		t.Fatalf("removed %+v, want only v2", removed)
	}
}

// A warm template belongs to its image version: found only under its exact
// key, read-only once published, and a machine linked to it keeps the
// version from being pruned.
func TestWarmTemplatesAreKeyedAndKeepTheirVersion(t *testing.T) {
	dir := t.TempDir()
	img := Image{Dir: dir, Disk: filepath.Join(dir, DiskFile)}
	staged := filepath.Join(img.Dir, "staging")
	os.MkdirAll(staged, 0o755)
	qcow2test.Write(filepath.Join(staged, TemplateDisk), qcow2test.Options{Backing: img.Disk, BackingFormat: "qcow2"})
	os.WriteFile(filepath.Join(staged, TemplateState), []byte("state"), 0o644)
	os.WriteFile(filepath.Join(staged, TemplateMeta), []byte(`{"key":"k1","cpus":1,"memory_mib":1024}`), 0o644)
	// A 1 GiB guest that touched one page: its RAM file is sparse.
	mem, _ := os.Create(filepath.Join(staged, TemplateMemory))
	mem.Truncate(1 << 30)
	mem.WriteAt(make([]byte, 4096), 1<<20)
	mem.Close()
	tpl, err := PublishTemplate(img, "k1", staged)
	if err != nil {
		t.Fatal(err)
	}
	if tpl.Bytes < 4096 || tpl.Bytes > 1<<20 || tpl.CPUs != 1 {
		t.Errorf("template %+v: its size must count the blocks used, not the RAM file's length", tpl)
	}
	if _, ok := FindTemplate(img, "k2"); ok {
		t.Error("a template was found under another key")
	}
	for _, f := range []string{tpl.State(), tpl.Disk()} {
		if fi, _ := os.Stat(f); fi.Mode().Perm()&0o222 != 0 {
			t.Errorf("a published template's %s is writable", filepath.Base(f))
		}
	}
	if fi, _ := os.Stat(tpl.Memory()); fi.Mode().Perm()&0o022 != 0 {
		t.Error("a published template's memory is writable by others")
	}
	// A template dir whose recorded key differs from the one it is filed
	// under (a hash collision, or a hand edit) is not used.
	os.Chmod(filepath.Join(tpl.Dir, TemplateMeta), 0o644)
	os.WriteFile(filepath.Join(tpl.Dir, TemplateMeta), []byte(`{"key":"other"}`), 0o644)
	if _, ok := FindTemplate(img, "k1"); ok {
		t.Error("a template whose recorded key differs was used")
	}
	if !usesDir(map[string]bool{tpl.Disk(): true}, img.Dir) {
		t.Error("a machine linked to a warm template does not keep its version")
	}
}

// An image boots its kernel directly only with a kernel, an initrd and a
// command line; paths are in its own folder.
func TestDirectBootNeedsKernelInitrdAndCmdline(t *testing.T) {
	img := Image{Dir: "/img/v1", Manifest: Manifest{KernelCmdline: "root=UUID=x ro",
		Outputs: map[string]Output{OutputKernel: {File: "vmlinuz"}, OutputInitrd: {File: "initrd.img"}}}}
	b := img.DirectBoot()
	if b == nil || b.Kernel != "/img/v1/vmlinuz" || b.Initrd != "/img/v1/initrd.img" || b.Cmdline != "root=UUID=x ro" {
		t.Fatalf("direct boot %+v", b)
	}
	for _, broken := range []Image{
		{Dir: "/img/v1", Manifest: Manifest{Outputs: img.Outputs}},
		{Dir: "/img/v1", Manifest: Manifest{KernelCmdline: "x", Outputs: map[string]Output{OutputKernel: {File: "vmlinuz"}}}},
		{Dir: "/img/v1"},
	} {
		if broken.DirectBoot() != nil {
			t.Errorf("%+v boots directly", broken.Manifest)
		}
	}
}

// Each architecture has its own latest: a nightly arm64 build does not
// replace the amd64 image spawn uses, a bare name means this host's
// architecture first, and prune keeps the newest of each.
func TestLatestIsPerArchitecture(t *testing.T) {
	s := Store{Root: t.TempDir()}
	add := func(version string, arch vm.Arch) {
		disk := filepath.Join(t.TempDir(), "disk")
		qcow2test.Write(disk, qcow2test.Options{})
		if _, err := s.Add(Manifest{Name: "debian-12", Version: version, Arch: arch}, disk); err != nil {
			t.Fatal(err)
		}
		if err := s.Promote("debian-12", version); err != nil {
			t.Fatal(err)
		}
	}
	other := vm.ARM64
	if vm.HostArch() == vm.ARM64 {
		other = vm.AMD64
	}
	add("20260101-000000", other)
	// Only the other architecture is built: a bare name finds it.
	if img, err := s.Resolve("debian-12"); err != nil || img.Version != "20260101-000000" {
		t.Fatalf("only %s built: %+v %v", other, img.Version, err)
	}
	if _, err := s.ResolveArch("debian-12", vm.HostArch()); err == nil || !strings.Contains(err.Error(), "--arch "+string(vm.HostArch())) {
		t.Errorf("no %s build: %v", vm.HostArch(), err)
	}
	add("20260102-000000", vm.HostArch())
	add("20260103-000000", other)
	if img, _ := s.Resolve("debian-12"); img.Version != "20260102-000000" {
		t.Errorf("bare name = %s, want this host's architecture's latest", img.Version)
	}
	if img, _ := s.ResolveArch("debian-12", other); img.Version != "20260103-000000" || img.Arch.Or() != other {
		t.Errorf("--arch %s = %s", other, img.Version)
	}
	list, _ := s.List()
	latest := 0
	for _, img := range list {
		if img.Latest {
			latest++
		}
	}
	if latest != 2 {
		t.Errorf("%d versions marked latest, want one per architecture", latest)
	}
	removed, err := s.Prune(1, nil)
	if err != nil || len(removed) != 1 || removed[0].Version != "20260101-000000" {
		t.Errorf("prune --keep 1 removed %+v, %v; want only the older %s", removed, err, other)
	}
}

// Manifests from before architectures were recorded are amd64, and keep
// their "latest".
func TestOldManifestsAreAMD64(t *testing.T) {
	s := Store{Root: t.TempDir()}
	addVersion(t, s, "debian-12", "v1")
	if err := s.Promote("debian-12", "v1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(s.Root, "debian-12", "latest")); err != nil {
		t.Fatalf("amd64 latest link: %v", err)
	}
	img, err := s.ResolveArch("debian-12", vm.AMD64)
	if err != nil || img.Arch.Or() != vm.AMD64 || !img.Latest {
		t.Fatalf("%+v %v", img, err)
	}
}

func TestTemplateOfDisk(t *testing.T) {
	tpl := Template{Dir: filepath.Join("/h", "images", "ubuntu", "7", "warm", "0b1c")}
	if got, ok := TemplateOfDisk(tpl.Disk()); !ok || got.Memory() != tpl.Memory() {
		t.Errorf("a template's disk: %+v %v", got, ok)
	}
	for _, disk := range []string{"/h/images/ubuntu/7/disk.qcow2", "/h/warm/k/other.qcow2", "", "disk.qcow2", "/"} {
		if _, ok := TemplateOfDisk(disk); ok {
			t.Errorf("%q taken for a template's disk", disk)
		}
	}
}
