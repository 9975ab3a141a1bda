//go:build linux

package e2e

import (
	"fmt"
	"testing"
	"time"
)

// benchARM64: the light base recipe baked for arm64 (in a chroot under
// qemu-user-static) against the same recipe for amd64 (native chroot),
// each from scratch with a cache of its own; then a machine of each booted
// cold to SSH under TCG, side by side.
func benchARM64(t *testing.T, add func(what, value, target string)) {
	bake := func(arch string) (time.Duration, []string) {
		env := []string{"FLEET_HOME=" + t.TempDir(), "FLEET_CACHE=" + t.TempDir()}
		t0 := time.Now()
		if r := fleetWithEnv(t, 60*time.Minute, env, "image", "build", "debian-12", "--arch", arch, "--recipe", "base", "--no-warm"); r.code != 0 {
			t.Fatalf("%s bake: %s", arch, r.stderr)
		}
		return time.Since(t0), env
	}
	boot := func(arch string, env []string) time.Duration {
		name := "boot" + arch
		t0 := time.Now()
		if r := fleetWithEnv(t, bootDeadline, env, "spawn", "1", "--name", name, "--arch", arch, "--cold", "--sync", "none", "--egress", "open", "--credentials", "none"); r.code != 0 {
			t.Fatalf("%s spawn: %s", arch, r.stderr)
		}
		d := time.Since(t0)
		fleetWithEnv(t, 5*time.Minute, env, "destroy", "--all", "--force", "--name", name)
		return d
	}
	amdBake, amdEnv := bake("amd64")
	armBake, armEnv := bake("arm64")
	add("base recipe bake, arm64 (qemu-user-static) / amd64 (native chroot)", fmt.Sprintf("%.2f (%s vs %s)", armBake.Seconds()/amdBake.Seconds(), armBake.Round(time.Second), amdBake.Round(time.Second)), "")
	amdBoot, armBoot := boot("amd64", amdEnv), boot("arm64", armEnv)
	add("boot to SSH under TCG, aarch64 (UEFI) / x86_64", fmt.Sprintf("%.2f (%s vs %s)", armBoot.Seconds()/amdBoot.Seconds(), armBoot.Round(time.Second), amdBoot.Round(time.Second)), "")
}
