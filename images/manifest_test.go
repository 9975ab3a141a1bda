package images

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agentfleet/agentfleet/internal/layout"
	"github.com/agentfleet/agentfleet/internal/qcow2"
	"github.com/agentfleet/agentfleet/internal/qcow2/qcow2test"
	"github.com/agentfleet/agentfleet/internal/vm"
)

// A manifest as the builder writes one.
func builtManifest() Manifest {
	return Manifest{Name: "ubuntu-24.04", Version: "20261201-031500", Source: "https://cloud-images.ubuntu.com/noble/current/noble-server-cloudimg-amd64.img",
		SourceDigest: "sha256:" + strings.Repeat("ab", 32), RecipeHash: strings.Repeat("cd", 32), Recipe: "full",
		Packages:   map[string]string{"os": "Ubuntu 24.04.1 LTS", "kernel": "6.8.0-49-generic", "docker": "27.5.1", "node": "v24.12.0", "claude-code": "2.1.330 (Claude Code)"},
		DiskSHA256: strings.Repeat("0f", 32), DiskBytes: 3 << 30, Arch: vm.ARM64, KernelCmdline: "root=UUID=f6fa ro console=ttyS0,115200 fsck.mode=skip",
		Outputs: map[string]Output{OutputKernel: {File: "vmlinuz", SHA256: strings.Repeat("1a", 32), Bytes: 9 << 20}, "ova": {File: "ubuntu-24.04-20261201-031500.ova", SHA256: strings.Repeat("2b", 32), Bytes: 1 << 30}},
		BuiltAt: time.Now(), BuildSeconds: 512.5}
}

func TestManifestCheckRefusesEveryHostileField(t *testing.T) {
	if err := builtManifest().Check(); err != nil {
		t.Fatalf("a built manifest: %v", err)
	}
	old := builtManifest()
	old.Arch, old.Outputs, old.Packages, old.DiskSHA256 = "", nil, nil, "" // before arch and digests were recorded
	if err := old.Check(); err != nil {
		t.Fatalf("an old manifest: %v", err)
	}
	for name, mod := range map[string]func(*Manifest){
		"unknown name":            func(m *Manifest) { m.Name = "windows-95" },
		"name with a path":        func(m *Manifest) { m.Name = "../debian-12" },
		"version ..":              func(m *Manifest) { m.Version = ".." },
		"version .":               func(m *Manifest) { m.Version = "." },
		"version with a slash":    func(m *Manifest) { m.Version = "a/b" },
		"version latest":          func(m *Manifest) { m.Version = "latest" },
		"version latest-amd64":    func(m *Manifest) { m.Version = "latest-amd64" },
		"version latest.tmp":      func(m *Manifest) { m.Version = "latest.tmp" },
		"hidden version":          func(m *Manifest) { m.Version = ".staging-x" },
		"empty version":           func(m *Manifest) { m.Version = "" },
		"long version":            func(m *Manifest) { m.Version = strings.Repeat("9", 65) },
		"version with a NUL":      func(m *Manifest) { m.Version = "v1\x00" },
		"arch escaping":           func(m *Manifest) { m.Arch = "../../../../tmp/x" },
		"arch riscv64":            func(m *Manifest) { m.Arch = "riscv64" },
		"arch x86_64 spelling":    func(m *Manifest) { m.Arch = "x86_64" },
		"arch AMD64":              func(m *Manifest) { m.Arch = "AMD64" },
		"recipe with escapes":     func(m *Manifest) { m.Recipe = "full\x1b[2J" },
		"recipe with a space":     func(m *Manifest) { m.Recipe = "full base" },
		"recipe hash with escape": func(m *Manifest) { m.RecipeHash = "ab\x1b]0;t\x07" },
		"source digest newline":   func(m *Manifest) { m.SourceDigest = "sha256:ab\nwarning: fine" },
		"source with CR":          func(m *Manifest) { m.Source = "https://x/\rfleet: ok" },
		"source with bidi":        func(m *Manifest) { m.Source = "https://x/\u202egpj.exe" },
		"source too long":         func(m *Manifest) { m.Source = strings.Repeat("a", 3000) },
		"source invalid UTF-8":    func(m *Manifest) { m.Source = "https://x/\xff\xfe" },
		"cmdline with a newline":  func(m *Manifest) { m.KernelCmdline = "ro\ninit=/bin/sh" },
		"cmdline with a C1 CSI":   func(m *Manifest) { m.KernelCmdline = "ro \u009b2J" },
		"cmdline too long":        func(m *Manifest) { m.KernelCmdline = strings.Repeat("a ", 3000) },
		"disk sha256 short":       func(m *Manifest) { m.DiskSHA256 = "abc" },
		"disk sha256 not hex":     func(m *Manifest) { m.DiskSHA256 = strings.Repeat("zz", 32) },
		"disk sha256 uppercase":   func(m *Manifest) { m.DiskSHA256 = strings.Repeat("AB", 32) },
		"disk sha256 escape":      func(m *Manifest) { m.DiskSHA256 = "\x1b[2J" + strings.Repeat("a", 60) },
		"negative disk size":      func(m *Manifest) { m.DiskBytes = -1 },
		"negative build time":     func(m *Manifest) { m.BuildSeconds = -5 },
		"package value escape":    func(m *Manifest) { m.Packages["docker"] = "27\x1b[1A\x1b[2K" },
		"package value tab":       func(m *Manifest) { m.Packages["docker"] = "27\tx" },
		"package name escape":     func(m *Manifest) { m.Packages["\x1b[31mdocker"] = "27" },
		"package value too long":  func(m *Manifest) { m.Packages["node"] = strings.Repeat("1", 300) },
		"many packages": func(m *Manifest) {
			for i := 0; i < 100; i++ {
				m.Packages[strings.Repeat("p", i+1)] = "1"
			}
		},
		"output kind escape":     func(m *Manifest) { m.Outputs["\x1b]8;;http://x\x07ova"] = Output{File: "x.ova"} },
		"output kind slash":      func(m *Manifest) { m.Outputs["a/b"] = Output{File: "x.ova"} },
		"output file traversal":  func(m *Manifest) { m.Outputs["ova"] = Output{File: "../../.ssh/authorized_keys"} },
		"output file absolute":   func(m *Manifest) { m.Outputs["ova"] = Output{File: "/etc/passwd"} },
		"output file hidden":     func(m *Manifest) { m.Outputs["ova"] = Output{File: ".bashrc"} },
		"output file empty":      func(m *Manifest) { m.Outputs["ova"] = Output{File: ""} },
		"output file manifest":   func(m *Manifest) { m.Outputs["ova"] = Output{File: ManifestFile} },
		"output file disk":       func(m *Manifest) { m.Outputs["ova"] = Output{File: DiskFile} },
		"output file warm":       func(m *Manifest) { m.Outputs["ova"] = Output{File: "warm"} },
		"two outputs, one file":  func(m *Manifest) { m.Outputs["initrd"] = Output{File: "vmlinuz"} },
		"output sha256 not hex":  func(m *Manifest) { m.Outputs["ova"] = Output{File: "x.ova", SHA256: "nope"} },
		"negative output size":   func(m *Manifest) { m.Outputs["ova"] = Output{File: "x.ova", Bytes: -1} },
		"output file with space": func(m *Manifest) { m.Outputs["ova"] = Output{File: "x .ova"} },
		"unknown output kind":    func(m *Manifest) { m.Outputs["vhd"] = Output{File: "x.vhd"} },
		"output kind by case":    func(m *Manifest) { m.Outputs["OVA"] = Output{File: "x2.ova"} },
	} {
		m := builtManifest()
		mod(&m)
		err := m.Check()
		if err == nil {
			t.Errorf("%s accepted", name)
			continue
		}
		if strings.ContainsAny(err.Error(), "\n\r\t\x1b\x07\x00") || strings.Contains(err.Error(), "\u202e") || strings.Contains(err.Error(), "\u009b") {
			t.Errorf("%s: the error is not one clean line: %q", name, err)
		}
	}
}

// writeVersion writes a version folder by hand, as someone who can
// write the store (or an older fleet's pull) might have left it.
func writeVersion(t *testing.T, s Store, folder string, m Manifest, disk qcow2test.Options) string {
	t.Helper()
	dir := filepath.Join(s.Root, "debian-12", folder)
	os.MkdirAll(dir, 0o755)
	if err := qcow2test.Write(filepath.Join(dir, DiskFile), disk); err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(m)
	os.WriteFile(filepath.Join(dir, ManifestFile), b, 0o644)
	return dir
}

// A store written before these checks (or by hand) is checked on every
// load: List leaves a bad version out and says why, Resolve and Promote
// refuse it in one line, and no link is ever made from its fields.
func TestLoadChecksTheManifestAndTheDiskEveryTime(t *testing.T) {
	top := t.TempDir()
	s := Store{Root: filepath.Join(top, "store")}
	victim := filepath.Join(top, "victim")
	os.WriteFile(victim, []byte("outside"), 0o644)
	addVersion(t, s, "debian-12", "v1")
	if err := s.Promote("debian-12", "v1"); err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(top, "id_ed25519")
	os.WriteFile(secret, []byte("key"), 0o600)
	m := func(version string, arch vm.Arch) Manifest {
		return Manifest{Name: "debian-12", Version: version, Arch: arch}
	}
	bad := map[string]string{
		"v2": "architecture", "v3": "names the backing file", "v4": `version "../../victim" is not`,
		"v5": "it is for debian-12@v1", "v6": "it is for ubuntu-24.04@v6", "v7": "external file", "v8": "symbolic link", "v9": "corrupt manifest",
		"v10": "not a regular file",
	}
	writeVersion(t, s, "v2", m("v2", "../../../../victim"), qcow2test.Options{})
	writeVersion(t, s, "v3", m("v3", ""), qcow2test.Options{Backing: secret, BackingFormat: "raw"})
	writeVersion(t, s, "v4", m("../../victim", ""), qcow2test.Options{})
	writeVersion(t, s, "v5", m("v1", ""), qcow2test.Options{})
	writeVersion(t, s, "v6", Manifest{Name: "ubuntu-24.04", Version: "v6"}, qcow2test.Options{})
	writeVersion(t, s, "v7", m("v7", ""), qcow2test.Options{DataFile: secret, Incompatible: qcow2.IncompatDataFile})
	d8 := writeVersion(t, s, "v8", m("v8", ""), qcow2test.Options{})
	os.Remove(filepath.Join(d8, ManifestFile))
	os.Symlink(filepath.Join(s.Root, "debian-12", "v1", ManifestFile), filepath.Join(d8, ManifestFile))
	d9 := writeVersion(t, s, "v9", m("v9", ""), qcow2test.Options{})
	os.WriteFile(filepath.Join(d9, ManifestFile), []byte("{\x1b[2J"), 0o644)
	d10 := writeVersion(t, s, "v10", m("v10", ""), qcow2test.Options{})
	os.Remove(filepath.Join(d10, DiskFile))
	os.Symlink(filepath.Join(s.Root, "debian-12", "v1", DiskFile), filepath.Join(d10, DiskFile))

	imgs, skipped, err := s.Scan()
	if err != nil || len(imgs) != 1 || imgs[0].Version != "v1" {
		t.Fatalf("listed %+v, %v", imgs, err)
	}
	why := map[string]string{}
	for _, sk := range skipped {
		why[sk.Version] = sk.Err.Error()
	}
	for v, want := range bad {
		if !strings.Contains(why[v], want) {
			t.Errorf("%s skipped for %q, want %q", v, why[v], want)
		}
		_, rerr := s.Resolve("debian-12@" + v)
		perr := s.Promote("debian-12", v)
		for _, err := range []error{rerr, perr} {
			if err == nil || !strings.Contains(err.Error(), want) || strings.ContainsAny(err.Error(), "\n\x1b") {
				t.Errorf("%s: %q, want one line with %q", v, err, want)
			}
		}
	}
	if b, err := os.ReadFile(victim); err != nil || string(b) != "outside" {
		t.Fatal("the file outside the store changed")
	}
	if latest, _ := s.Resolve("debian-12"); latest.Version != "v1" {
		t.Fatalf("latest moved to %q", latest.Version)
	}
	// A bad version is never pruned by mistake nor counted.
	if removed, err := s.Prune(1, nil); err != nil || len(removed) != 0 {
		t.Fatalf("prune: %+v %v", removed, err)
	}
	// A good version whose disk was swapped after it was stored is
	// refused at its next use.
	v1 := filepath.Join(s.Root, "debian-12", "v1", DiskFile)
	os.Chmod(v1, 0o644)
	qcow2test.Write(v1, qcow2test.Options{Backing: secret})
	if _, err := s.Resolve("debian-12"); !errors.Is(err, qcow2.ErrRefused) {
		t.Fatalf("a swapped disk: %v", err)
	}
}

func TestLatestOfNamesOnlyKnownArchitectures(t *testing.T) {
	for arch, want := range map[vm.Arch]string{"": "latest", vm.AMD64: "latest", vm.ARM64: "latest-arm64"} {
		if got, err := latestOf(arch); err != nil || got != want {
			t.Errorf("latestOf(%q) = %q, %v", arch, got, err)
		}
	}
	for _, arch := range []vm.Arch{"../../x", "arm64/../../x", "riscv64", "arm64\x00", "ARM64"} {
		if got, err := latestOf(arch); err == nil {
			t.Errorf("latestOf(%q) = %q", arch, got)
		}
	}
}

// Add stores nothing that fails its checks: a manifest the store would
// refuse to load, or a disk that names another file.
func TestAddRefusesWhatLoadWouldRefuse(t *testing.T) {
	s := Store{Root: t.TempDir()}
	work := t.TempDir()
	for name, tc := range map[string]struct {
		m    Manifest
		disk qcow2test.Options
		want string
	}{
		"hostile arch":        {Manifest{Name: "debian-12", Version: "v1", Arch: "../../../x"}, qcow2test.Options{}, "architecture"},
		"hostile version":     {Manifest{Name: "debian-12", Version: "../../x"}, qcow2test.Options{}, "version"},
		"backing file":        {Manifest{Name: "debian-12", Version: "v1"}, qcow2test.Options{Backing: "/etc/shadow"}, "backing file"},
		"unknown feature bit": {Manifest{Name: "debian-12", Version: "v1"}, qcow2test.Options{Incompatible: 1 << 30}, "incompatible"},
	} {
		disk := filepath.Join(work, "disk")
		qcow2test.Write(disk, tc.disk)
		if _, err := s.Add(tc.m, disk); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v", name, err)
		}
		if _, err := os.Stat(disk); err != nil {
			t.Errorf("%s: a refused disk was moved: %v", name, err)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(s.Root, "*", "*")); len(left) != 0 {
		t.Fatalf("a refused add left %v", left)
	}
}

// A template's files are checked before a clone uses them: its disk is
// an overlay on its own image's disk and nothing else, and none of its
// files is a link to a host file.
func TestTemplatesAreCheckedBeforeUse(t *testing.T) {
	s := Store{Root: t.TempDir()}
	img := addVersion(t, s, "debian-12", "v1")
	publish := func(key string, disk qcow2test.Options, memLink string) bool {
		staged := filepath.Join(img.Dir, layout.WarmFolder, layout.TemplateStagingPrefix+key)
		os.MkdirAll(staged, 0o755)
		qcow2test.Write(filepath.Join(staged, TemplateDisk), disk)
		os.WriteFile(filepath.Join(staged, TemplateState), []byte("state"), 0o644)
		os.WriteFile(filepath.Join(staged, TemplateMeta), []byte(`{"key":"`+key+`"}`), 0o644)
		if memLink != "" {
			os.Symlink(memLink, filepath.Join(staged, TemplateMemory))
		} else {
			os.WriteFile(filepath.Join(staged, TemplateMemory), []byte("ram"), 0o644)
		}
		_, err := PublishTemplate(img, key, staged)
		_, found := FindTemplate(img, key)
		if (err == nil) != found {
			t.Errorf("%s: published %v, found %v", key, err, found)
		}
		return found
	}
	secret := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(secret, []byte("secret"), 0o600)
	if !publish("good", qcow2test.Options{Backing: img.Disk, BackingFormat: "qcow2"}, "") {
		t.Fatal("a good template was refused")
	}
	for key, tc := range map[string]struct {
		disk qcow2test.Options
		mem  string
	}{
		"another-backing": {qcow2test.Options{Backing: secret, BackingFormat: "qcow2"}, ""},
		"raw-backing":     {qcow2test.Options{Backing: img.Disk, BackingFormat: "raw"}, ""},
		"data-file":       {qcow2test.Options{Backing: img.Disk, BackingFormat: "qcow2", DataFile: secret, Incompatible: qcow2.IncompatDataFile}, ""},
		"no-backing":      {qcow2test.Options{}, ""},
		"memory-link":     {qcow2test.Options{Backing: img.Disk, BackingFormat: "qcow2"}, secret},
	} {
		if publish(key, tc.disk, tc.mem) {
			t.Errorf("template %s was used", key)
		}
	}
	if n := len(Templates(img)); n != 1 {
		t.Errorf("%d templates listed, want the good one", n)
	}
}
