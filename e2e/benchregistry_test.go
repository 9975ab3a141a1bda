//go:build linux

package e2e

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/agentfleet/agentfleet/internal/registrytest"
)

// benchRegistry: push and pull of the suite's image over loopback against
// a plain cp of the same files.
func benchRegistry(t *testing.T, add func(what, value, target string)) {
	reg := registrytest.Start(t, "", "")
	img := imageLs(t)[0]
	var files []string
	files = append(files, filepath.Join(img.Dir, "disk.qcow2"))
	for _, o := range img.Outputs {
		files = append(files, filepath.Join(img.Dir, o.File))
	}
	dst := t.TempDir()
	t0 := time.Now()
	if out, err := exec.Command("cp", append(files, dst)...).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	cp := time.Since(t0)
	ref := reg.Addr + "/bench/debian-12"
	t0 = time.Now()
	mustFleet(t, 10*time.Minute, "image", "push", "debian-12", ref)
	push := time.Since(t0)
	t0 = time.Now()
	if r := fleetWithEnv(t, 10*time.Minute, []string{"FLEET_HOME=" + t.TempDir()}, "image", "pull", ref); r.code != 0 {
		t.Fatal(r.stderr)
	}
	pull := time.Since(t0)
	mib := float64(img.DiskBytes) / (1 << 20)
	add("image push / cp, loopback registry", fmt.Sprintf("%.2f (%s vs %s, %.0f MiB/s)", push.Seconds()/cp.Seconds(), push.Round(100*time.Millisecond), cp.Round(100*time.Millisecond), mib/push.Seconds()), "")
	add("image pull (verified) / cp, loopback registry", fmt.Sprintf("%.2f (%s vs %s, %.0f MiB/s)", pull.Seconds()/cp.Seconds(), pull.Round(100*time.Millisecond), cp.Round(100*time.Millisecond), mib/pull.Seconds()), "")
}
