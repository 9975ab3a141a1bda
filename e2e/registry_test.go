//go:build linux

package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agentfleet/agentfleet/internal/registrytest"
)

// The suite's image through a real registry on loopback, behind basic
// auth: pushed, pulled into a fresh FLEET_HOME and spawned from; a second
// pull does nothing; a corrupted blob promotes nothing.
func TestImageThroughARegistry(t *testing.T) {
	requireE2E(t)
	t.Parallel()
	reg := registrytest.Start(t, "fleet", "e2e-pass")
	ref := reg.Addr + "/agentfleet/debian-12"
	login := []string{"DOCKER_CONFIG=" + reg.DockerConfig}
	if r := fleetWithEnv(t, time.Minute, []string{"DOCKER_CONFIG=" + t.TempDir()}, "image", "push", "debian-12", ref); r.code == 0 || !strings.Contains(r.stderr, "asks for a login") || !strings.Contains(r.stderr, "docker login "+reg.Addr) {
		t.Fatalf("a push without a login: %d %s", r.code, r.stderr)
	}
	start := time.Now()
	r := fleetWithEnv(t, 10*time.Minute, login, "image", "push", "debian-12", ref)
	if r.code != 0 {
		t.Fatalf("push: %s", r.stderr)
	}
	t.Logf("push took %s", time.Since(start).Round(time.Second))
	local := imageLs(t)[0]

	laptop := t.TempDir() // a fresh FLEET_HOME, as on a laptop
	env := append([]string{"FLEET_HOME=" + laptop}, login...)
	start = time.Now()
	if r := fleetWithEnv(t, 10*time.Minute, env, "image", "pull", ref); r.code != 0 || !strings.Contains(r.stdout, "debian-12@"+local.Version) {
		t.Fatalf("pull: %d %s %s", r.code, r.stdout, r.stderr)
	}
	t.Logf("pull took %s", time.Since(start).Round(time.Second))
	pulled := imageLs(t, "FLEET_HOME="+laptop)
	if len(pulled) != 1 || pulled[0].Version != local.Version || !pulled[0].Latest {
		t.Fatalf("image ls after pull: %+v", pulled)
	}
	if r := fleetWithEnv(t, time.Minute, env, "image", "pull", ref, "--if-changed"); r.code != 3 || !strings.Contains(r.stderr, "already here") {
		t.Fatalf("second pull: %d %s", r.code, r.stderr)
	}
	spawn := append(env, "FLEET_HOME="+laptop)
	defer fleetWithEnv(t, 5*time.Minute, spawn, "destroy", "--all", "--force", "--name", "pulled")
	if r := fleetWithEnv(t, bootDeadline, spawn, "spawn", "1", "--name", "pulled", "--sync", "none", "--cold"); r.code != 0 {
		t.Fatalf("spawn from the pulled image: %s", r.stderr)
	}
	if r := fleetWithEnv(t, time.Minute, spawn, "exec", "pulled-1", "--name", "pulled", "--", "cat", "/etc/debian_version"); r.code != 0 || !strings.HasPrefix(r.stdout, "12") {
		t.Fatalf("exec in the machine from the pulled image: %s %s", r.stdout, r.stderr)
	}

	// The kernel's blob changed in the registry's storage: the disk comes
	// in whole, then the kernel fails its digest, and nothing is promoted.
	kernel := filepath.Join(local.Dir, local.Outputs["kernel"].File)
	if _, err := os.Stat(kernel); err != nil {
		t.Fatalf("the suite's image has no kernel output: %v", err)
	}
	blob := reg.BlobPath("sha256:" + local.Outputs["kernel"].SHA256)
	f, err := os.OpenFile(blob, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("tampered"), 4096)
	f.Close()
	other := t.TempDir()
	r = fleetWithEnv(t, 10*time.Minute, append([]string{"FLEET_HOME=" + other}, login...), "image", "pull", ref)
	if r.code == 0 || !strings.Contains(r.stderr, "does not match its digest") {
		t.Fatalf("pull of a tampered image: %d %s", r.code, r.stderr)
	}
	if imgs := imageLs(t, "FLEET_HOME="+other); len(imgs) != 0 {
		t.Fatalf("a tampered pull stored %+v", imgs)
	}
	left, _ := filepath.Glob(filepath.Join(other, "images", "debian-12", "*"))
	if len(left) != 0 {
		t.Fatalf("a tampered pull left %v", left)
	}
}
