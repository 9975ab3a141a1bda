package qemu

import (
	"bytes"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// DetectAccel picks the fastest accelerator this host offers.
func DetectAccel() Accel {
	switch runtime.GOOS {
	case "linux":
		if ok, _ := KVMUsable(); ok {
			return AccelKVM
		}
	case "darwin":
		// Hypervisor.framework runs guests of the host's own architecture
		// (arm64 images on Apple Silicon); the driver emulates any other.
		if ok, _ := HVFUsable(); ok {
			return AccelHVF
		}
	}
	return AccelTCG
}

// hasVirtFlag reports whether a /proc/cpuinfo "flags" line names vmx or svm.
func hasVirtFlag(cpuinfo []byte) bool {
	for _, line := range bytes.Split(cpuinfo, []byte("\n")) {
		if !bytes.HasPrefix(line, []byte("flags")) {
			continue
		}
		for _, f := range bytes.Fields(line) {
			if string(f) == "vmx" || string(f) == "svm" {
				return true
			}
		}
	}
	return false
}

// BootTimeout is how long to wait for a guest's SSH: software emulation
// boots several times slower, and FLEET_BOOT_TIMEOUT (a Go duration)
// overrides both.
func BootTimeout(a Accel) time.Duration {
	if v, err := time.ParseDuration(os.Getenv("FLEET_BOOT_TIMEOUT")); err == nil && v > 0 {
		return v
	}
	if a == AccelTCG {
		return 10 * time.Minute
	}
	return 3 * time.Minute
}

// TCGCacheEnv sizes TCG's translation cache in MiB (Driver.TCGCacheMiB),
// for measuring what it costs and saves; unset is QEMU's default.
const TCGCacheEnv = "FLEET_TCG_TB_MIB"

// ParseTCGCache reads a TCGCacheEnv value: "" is 0, QEMU's default; else
// MiB within what QEMU 7.2 takes on a 64-bit host (1 MiB to 2 GiB).
func ParseTCGCache(v string) (int, error) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > 2048 {
		return 0, fmt.Errorf("%s=%q: want a translation cache size in MiB, 1 to 2048", TCGCacheEnv, v)
	}
	return n, nil
}
