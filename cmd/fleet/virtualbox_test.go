package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/agentfleet/agentfleet/images"
	"github.com/agentfleet/agentfleet/internal/qcow2/qcow2test"
	"github.com/agentfleet/agentfleet/internal/vm/virtualbox/vboxtest"
)

// fleetCLI runs the fleet command in this process.
func fleetCLI(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	root := newRootCmd()
	var out, errb bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return out.String(), errb.String(), err
}

// TestSpawnEightOnVirtualBox runs `fleet spawn 8 --provider virtualbox`
// against the strict fake VBoxManage, whose fake guests answer SSH with the
// pinned keys: VirtualBox itself cannot run where this is tested.
func TestSpawnEightOnVirtualBox(t *testing.T) {
	fake := vboxtest.Fake(t)
	home, vbox := t.TempDir(), t.TempDir()
	t.Setenv("PATH", filepath.Dir(fake)+":"+os.Getenv("PATH"))
	t.Setenv("FLEET_HOME", home)
	t.Setenv("FAKE_VBOX_HOME", vbox)
	t.Setenv("FAKE_VBOX_GUEST", "1")
	t.Setenv("FAKE_VBOX_BOOT_MS", "500")
	t.Setenv("FLEET_PROVIDER", "")

	// An image with an OVA, as `fleet image build --output qcow2,ova` stores it.
	src := t.TempDir()
	disk := filepath.Join(src, "disk.qcow2")
	qcow2test.Write(disk, qcow2test.Options{})
	ova := vboxtest.WriteOVA(t, filepath.Join(src, "debian-12-v1.ova"))
	store := images.Store{Root: filepath.Join(home, "images")}
	m := images.Manifest{Name: "debian-12", Version: "v1", Outputs: map[string]images.Output{"ova": {File: "debian-12-v1.ova"}}}
	if _, err := store.Add(m, disk, map[string]string{"ova": ova}); err != nil {
		t.Fatal(err)
	}
	store.Promote("debian-12", "v1")
	t.Cleanup(func() { fleetCLI(t, "destroy", "--all", "--force", "--name", "vb") })

	common := []string{"--name", "vb", "--provider", "virtualbox", "--image", "debian-12", "--sync", "none", "--memory", "512M", "--cpus", "1"}
	_, stderr, err := fleetCLI(t, append([]string{"spawn", "2"}, common...)...)
	if err == nil || !strings.Contains(err.Error(), "virtualbox driver cannot cut a guest off the network") {
		t.Fatalf("default egress on VirtualBox must be refused with the reason, got %v %s", err, stderr)
	}
	stdout, stderr, err := fleetCLI(t, append([]string{"spawn", "8", "--egress", "open", "--credentials", "env"}, common...)...)
	if err != nil {
		t.Fatalf("spawn 8: %v\n%s", err, stderr)
	}
	if strings.Count(stdout, "vb-") != 8 || strings.Contains(stderr, "locked") {
		t.Fatalf("spawn 8 printed:\n%s\n%s", stdout, stderr)
	}

	out, _, err := fleetCLI(t, "ls", "--json", "--name", "vb")
	if err != nil {
		t.Fatal(err)
	}
	var rows []struct{ Name, State, Provider string }
	json.Unmarshal([]byte(out), &rows)
	if len(rows) != 8 {
		t.Fatalf("ls: %s", out)
	}
	for _, r := range rows {
		if r.State != "running" || r.Provider != "virtualbox" {
			t.Errorf("%s is %s on %s", r.Name, r.State, r.Provider)
		}
	}
	out, stderr, err = fleetCLI(t, "exec", "--all", "--name", "vb", "--", "hostname")
	if err != nil || strings.Count(out, "fake guest") != 8 {
		t.Fatalf("exec --all: %v\n%s%s", err, out, stderr)
	}
	if _, _, err := fleetCLI(t, "spawn", "1", "--name", "vb", "--provider", "qemu"); err == nil || !strings.Contains(err.Error(), "fleet vb runs on virtualbox") {
		t.Errorf("changing an existing fleet's provider: %v", err)
	}
	if _, stderr, err := fleetCLI(t, "destroy", "--all", "--force", "--name", "vb"); err != nil {
		t.Fatalf("destroy: %v %s", err, stderr)
	}
	list := exec.Command(fake, "list", "vms")
	list.Env = os.Environ()
	if out, _ := list.CombinedOutput(); strings.TrimSpace(string(out)) != "" {
		t.Errorf("VirtualBox still has: %s", out)
	}
}
