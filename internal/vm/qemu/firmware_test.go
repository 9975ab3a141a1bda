package qemu

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeDescriptor(t *testing.T, dir, name, fw, features string) {
	t.Helper()
	os.MkdirAll(dir, 0o755)
	body := `{"interface-types":["uefi"],"mapping":{"device":"flash","executable":{"filename":"` + fw + `","format":"raw"}},` +
		`"targets":[{"architecture":"aarch64","machines":["virt-*"]}],"features":[` + features + `]}`
	if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

// The firmware is found from QEMU's descriptors as Debian and Homebrew
// install them: Secure Boot builds with enrolled keys are passed over (the
// guest kernel is not signed for them), a descriptor whose file is missing
// is skipped, an earlier folder's descriptor overrides a later one's of the
// same name, and the environment overrides them all.
func TestFindFirmware(t *testing.T) {
	t.Setenv(FirmwareEnv, "")
	root := t.TempDir()
	code := filepath.Join(root, "AAVMF_CODE.fd")
	secure := filepath.Join(root, "AAVMF_CODE.ms.fd")
	for _, f := range []string{code, secure} {
		os.WriteFile(f, []byte("fd"), 0o644)
	}
	etc, share := filepath.Join(root, "etc"), filepath.Join(root, "share")
	writeDescriptor(t, share, "40-edk2-aarch64-secure-enrolled.json", secure, `"secure-boot","enrolled-keys"`)
	writeDescriptor(t, share, "50-missing.json", filepath.Join(root, "gone.fd"), ``)
	writeDescriptor(t, share, "60-edk2-aarch64.json", code, `"verbose-static"`)
	os.WriteFile(filepath.Join(share, "10-broken.json"), []byte("{not json"), 0o644)
	os.WriteFile(filepath.Join(share, "20-x86.json"), []byte(`{"interface-types":["uefi"],"mapping":{"device":"flash","executable":{"filename":"`+code+`"}},"targets":[{"architecture":"x86_64","machines":["pc-q35-*"]}]}`), 0o644)

	got, err := FindFirmware("aarch64", []string{etc, share})
	if err != nil || got != code {
		t.Fatalf("FindFirmware = %q, %v; want %s", got, err, code)
	}
	if _, err := FindFirmware("riscv64", []string{etc, share}); err == nil || !strings.Contains(err.Error(), "qemu-efi-aarch64") {
		t.Errorf("no firmware: %v", err)
	}
	// A local descriptor of the same name wins, as QEMU's spec says.
	other := filepath.Join(root, "mine.fd")
	os.WriteFile(other, []byte("fd"), 0o644)
	writeDescriptor(t, etc, "60-edk2-aarch64.json", other, ``)
	if got, _ := FindFirmware("aarch64", []string{etc, share}); got != other {
		t.Errorf("override: got %s, want %s", got, other)
	}
	t.Setenv(FirmwareEnv, code)
	if got, _ := FindFirmware("aarch64", nil); got != code {
		t.Errorf("env: got %s", got)
	}
	t.Setenv(FirmwareEnv, filepath.Join(root, "nope.fd"))
	if _, err := FindFirmware("aarch64", nil); err == nil {
		t.Error("a missing file named by the environment was accepted")
	}
}

// This host's Debian descriptors, when qemu-efi-aarch64 is installed.
func TestFindFirmwareOnThisHost(t *testing.T) {
	t.Setenv(FirmwareEnv, "")
	if _, err := os.Stat("/usr/share/qemu/firmware/60-edk2-aarch64.json"); err != nil {
		t.Skip("qemu-efi-aarch64 is not installed")
	}
	got, err := FindFirmware("aarch64", FirmwareDirs)
	if err != nil || !strings.HasSuffix(got, "AAVMF_CODE.fd") {
		t.Fatalf("got %q, %v", got, err)
	}
}
