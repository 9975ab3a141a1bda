package builder

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/agentfleet/agentfleet/internal/execx/execxtest"
	"github.com/agentfleet/agentfleet/internal/vm"
	"github.com/agentfleet/agentfleet/provision"
)

func TestForArchSwapsKernelAndBootLoader(t *testing.T) {
	def, _ := Definition("debian-12", "")
	got := forArch(def.Packages, vm.ARM64)
	for _, want := range []string{"linux-image-cloud-arm64", "grub-efi-arm64", "openssh-server"} {
		if !slices.Contains(got, want) {
			t.Errorf("arm64 packages lack %s: %v", want, got)
		}
	}
	for _, p := range got {
		if strings.Contains(p, "amd64") || p == "grub-pc" {
			t.Errorf("arm64 packages keep %s", p)
		}
	}
	if !slices.Equal(forArch(def.Packages, vm.AMD64), def.Packages) {
		t.Error("amd64 packages changed")
	}
}

func TestMmdebstrapArgsNameTheArchitecture(t *testing.T) {
	args := MmdebstrapArgs(vm.ARM64, "bookworm", "http://m/debian", "/r", nil, []string{"a", "b"})
	if !slices.Contains(args, "--architectures=arm64") || !slices.Contains(args, "deb http://m/debian bookworm main") {
		t.Errorf("args %q", args)
	}
}

// arm64 disks are GPT with an EFI system partition first (UEFI firmware,
// no BIOS); amd64 disks keep their one MBR partition.
func TestDiskLayout(t *testing.T) {
	script, esp, root := diskLayout(vm.AMD64)
	if esp != 0 || root != 1 || !strings.Contains(script, "label: dos") {
		t.Errorf("amd64: %q esp=%d root=%d", script, esp, root)
	}
	script, esp, root = diskLayout(vm.ARM64)
	if esp != 1 || root != 2 || !strings.Contains(script, "label: gpt") || !strings.Contains(script, "type=U") {
		t.Errorf("arm64: %q esp=%d root=%d", script, esp, root)
	}
}

// What a foreign-architecture chroot bake needs is checked before anything
// is made, and each missing piece is named with its fix.
func TestCheckForeignChroot(t *testing.T) {
	dir := t.TempDir()
	if err := CheckForeignChroot(vm.ARM64, dir); err == nil || !strings.Contains(err.Error(), "mount -t binfmt_misc") {
		t.Errorf("unmounted: %v", err)
	}
	os.WriteFile(filepath.Join(dir, "register"), nil, 0o200)
	if err := CheckForeignChroot(vm.ARM64, dir); err == nil || !strings.Contains(err.Error(), "qemu-user-static") {
		t.Errorf("no handler: %v", err)
	}
	handler := filepath.Join(dir, "qemu-aarch64")
	os.WriteFile(handler, []byte("disabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: PF\n"), 0o644)
	if err := CheckForeignChroot(vm.ARM64, dir); err == nil || !strings.Contains(err.Error(), "update-binfmts --enable qemu-aarch64") {
		t.Errorf("disabled: %v", err)
	}
	os.WriteFile(handler, []byte("enabled\ninterpreter /usr/bin/qemu-aarch64\nflags: P\noffset 0\n"), 0o644)
	if err := CheckForeignChroot(vm.ARM64, dir); err == nil || !strings.Contains(err.Error(), "F flag") {
		t.Errorf("no F flag: %v", err)
	}
	os.WriteFile(handler, []byte("enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: PF\noffset 0\n"), 0o644)
	if err := CheckForeignChroot(vm.ARM64, dir); err != nil {
		t.Errorf("ready: %v", err)
	}
}

// --arch is parsed as users write it, and what an arm64 image cannot be
// is refused before anything is made.
func TestOptionsArch(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mirror builds need root")
	}
	o := Options{Name: "debian-12", Home: t.TempDir(), NoHostCA: true, Recipe: "base"}
	for in, want := range map[string]vm.Arch{"": vm.HostArch(), "aarch64": vm.ARM64, "x86_64": vm.AMD64} {
		o.Arch = in
		cfg, err := o.Config()
		if err != nil && !strings.Contains(err.Error(), "binfmt") {
			t.Fatalf("--arch %q: %v", in, err)
		}
		if err == nil && cfg.Arch != want {
			t.Errorf("--arch %q = %s, want %s", in, cfg.Arch, want)
		}
	}
	o.Arch = "sparc"
	if _, err := o.Config(); err == nil || !strings.Contains(err.Error(), "amd64 or arm64") {
		t.Errorf("sparc: %v", err)
	}
	o.Arch, o.Outputs = "arm64", []string{"ova"}
	if _, err := o.Config(); err == nil || !strings.Contains(err.Error(), "VirtualBox") {
		t.Errorf("arm64 ova: %v", err)
	}
	o.Name, o.Arch, o.Outputs, o.SourceURL, o.ChecksumURL = "ubuntu-24.04", "arm64", nil, "", ""
	if cfg, err := o.Config(); err == nil && !strings.HasSuffix(cfg.CloudImageURL, "-arm64.img") {
		t.Errorf("arm64 cloud image %s", cfg.CloudImageURL)
	}
}

func TestRecipeHashNamesArm64(t *testing.T) {
	c, _ := Definition("debian-12", "")
	amd := c.RecipeHash("http://a", "sha256:1", "2.1.0", "")
	c.Arch = vm.AMD64
	if c.RecipeHash("http://a", "sha256:1", "2.1.0", "") != amd {
		t.Error("naming amd64 changed the hash of the images baked before architectures")
	}
	c.Arch = vm.ARM64
	if c.RecipeHash("http://a", "sha256:1", "2.1.0", "") == amd {
		t.Error("arm64 has the amd64 hash")
	}
}

// Recipes whose fast-boot script rebuilds the initrd with its own module
// list get the small initrd from the start; the untrimmed recipe keeps the
// kernel package's own.
func TestBootstrapSmallInitrdOnlyWhereFastBootRebuildsIt(t *testing.T) {
	for _, tt := range []struct {
		recipe string
		hook   bool
	}{{"base", true}, {"full", true}, {"untrimmed", false}} {
		cfg := testConfig(t)
		cfg.Recipe, _ = provision.Get(tt.recipe)
		f := cfg.Runner.(*execxtest.Fake)
		mustContinue(t, &StepBootstrapRootfs{}, bag(cfg, "mirror", "http://m/debian", "workdir", t.TempDir()))
		calls := f.Calls()
		if len(calls) != 1 || !strings.HasPrefix(calls[0], "mmdebstrap ") {
			t.Fatalf("%s: calls %v", tt.recipe, calls)
		}
		got := strings.Contains(calls[0], smallInitrdHook)
		if got != tt.hook {
			t.Errorf("%s: small initrd hook %v, want %v", tt.recipe, got, tt.hook)
		}
	}
	const conf = "/etc/initramfs-tools/conf.d/90-agentfleet.conf"
	if script := string(mustScript(t, "85-fast-boot.sh")); !strings.Contains(smallInitrdHook, `echo MODULES=list > "$1`+conf+`"`) ||
		!strings.Contains(script, "conf="+conf+"\n") || !strings.Contains(script, `echo MODULES=list > "$conf"`) {
		t.Error("the hook and the fast-boot script no longer write the same setting")
	}
}

func mustScript(t *testing.T, name string) []byte {
	r, _ := provision.Get("full")
	for _, s := range r.Scripts {
		if s.Name == name {
			return s.Body
		}
	}
	t.Fatalf("no script %s", name)
	return nil
}
