package qemu

import (
	"encoding/json"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
)

// An aarch64 machine needs UEFI firmware: the "virt" board has no BIOS.
// QEMU's packages describe the firmware they ship in JSON descriptors
// (QEMU's docs/interop/firmware.json), in the same place on Debian
// (qemu-efi-aarch64 adds /usr/share/qemu/firmware/60-edk2-aarch64.json)
// and in Homebrew's QEMU (share/qemu/firmware under its prefix), so fleet
// reads those instead of guessing file names.

// FirmwareEnv overrides the search with a firmware file (raw, loaded as
// the code flash).
const FirmwareEnv = "FLEET_AARCH64_FIRMWARE"

// FirmwareDirs are searched in order; a descriptor in an earlier folder
// overrides one of the same name in a later one, as the spec says.
var FirmwareDirs = []string{
	"/etc/qemu/firmware",
	"/usr/local/share/qemu/firmware",
	"/usr/share/qemu/firmware",
	"/opt/homebrew/share/qemu/firmware", // Homebrew on Apple Silicon
	"/usr/local/opt/qemu/share/qemu/firmware",
}

type firmwareDescriptor struct {
	InterfaceTypes []string `json:"interface-types"`
	Mapping        struct {
		Device     string `json:"device"`
		Executable struct {
			Filename string `json:"filename"`
			Format   string `json:"format"`
		} `json:"executable"`
	} `json:"mapping"`
	Targets []struct {
		Architecture string   `json:"architecture"`
		Machines     []string `json:"machines"`
	} `json:"targets"`
	Features []string `json:"features"`
}

// usableFor says whether the descriptor is plain UEFI in a raw flash image
// for arch's "virt" machine: no Secure Boot with enrolled keys (the
// guest's kernel is not signed for it) and nothing that needs SMM.
func (f firmwareDescriptor) usableFor(arch string) bool {
	if !slices.Contains(f.InterfaceTypes, "uefi") || f.Mapping.Device != "flash" || f.Mapping.Executable.Filename == "" {
		return false
	}
	if format := f.Mapping.Executable.Format; format != "" && format != "raw" {
		return false
	}
	for _, bad := range []string{"secure-boot", "enrolled-keys", "requires-smm", "amd-sev", "intel-tdx"} {
		if slices.Contains(f.Features, bad) {
			return false
		}
	}
	for _, t := range f.Targets {
		if t.Architecture != arch {
			continue
		}
		// Descriptors name machine types by glob ("virt-*"); any
		// versioned virt stands for the one fleet starts.
		for _, m := range t.Machines {
			if ok, _ := path.Match(m, "virt-7.2"); ok || m == "virt" {
				return true
			}
		}
	}
	return false
}

// FindFirmware returns the UEFI code flash for arch's virt machine: the
// FLEET_AARCH64_FIRMWARE file if set, else the first usable descriptor's
// (descriptors sort by name, which is their priority).
func FindFirmware(arch string, dirs []string) (string, error) {
	if f := os.Getenv(FirmwareEnv); f != "" {
		if _, err := os.Stat(f); err != nil {
			return "", fmt.Errorf("%s: %w", FirmwareEnv, err)
		}
		return f, nil
	}
	byName := map[string]string{}
	for _, d := range dirs {
		entries, _ := os.ReadDir(d)
		for _, e := range entries {
			if _, seen := byName[e.Name()]; !seen && strings.HasSuffix(e.Name(), ".json") {
				byName[e.Name()] = filepath.Join(d, e.Name())
			}
		}
	}
	names := make([]string, 0, len(byName))
	for n := range byName {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		b, err := os.ReadFile(byName[n])
		if err != nil {
			continue
		}
		var f firmwareDescriptor
		if json.Unmarshal(b, &f) != nil || !f.usableFor(arch) {
			continue
		}
		if _, err := os.Stat(f.Mapping.Executable.Filename); err == nil {
			return f.Mapping.Executable.Filename, nil
		}
	}
	return "", fmt.Errorf("no UEFI firmware for %s guests (%s; or set %s to its code flash file)", arch, installHint(pkgFirmware), FirmwareEnv)
}
