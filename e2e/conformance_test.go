//go:build linux

package e2e

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/agentfleet/agentfleet/images"
	"github.com/agentfleet/agentfleet/internal/execx"
	"github.com/agentfleet/agentfleet/internal/sshx"
	"github.com/agentfleet/agentfleet/internal/vm"
	"github.com/agentfleet/agentfleet/internal/vm/qemu"
	"github.com/agentfleet/agentfleet/internal/vm/vmtest"
	"github.com/agentfleet/agentfleet/provision"
)

// The driver conformance suite against QEMU with real VMs (the VirtualBox
// driver runs the same suite over its fake in unit tests): the lifecycle,
// the guest agent and the snapshot steps (suspend, resume, discard, save
// state) on one machine, three cold boots and one restore.
func TestQEMUDriverConformance(t *testing.T) {
	requireE2E(t)
	parallelVM(t)
	img, err := images.Store{Root: filepath.Join(fleetHome, "images")}.Resolve("debian-12")
	if err != nil {
		t.Fatal(err)
	}
	client, err := sshx.NewKeyPair("conformance")
	if err != nil {
		t.Fatal(err)
	}
	d := qemu.New(execx.Local{}, "", nil)
	vmtest.Run(t, vmtest.Harness{
		Driver: d,
		Spec: func(t *testing.T, name string) vm.Spec {
			hk, err := sshx.NewKeyPair("")
			if err != nil {
				t.Fatal(err)
			}
			return vm.Spec{Name: name, Dir: filepath.Join(t.TempDir(), name), BaseImage: img.Disk, CPUs: 1, MemoryMiB: 1024,
				Seed: vm.Seed{InstanceID: "i-" + name, Hostname: name, User: "agent", AuthorizedKey: client.AuthorizedKey,
					HostKeyPrivate: string(hk.PrivatePEM), HostKeyPublic: hk.AuthorizedKey}}
		},
		ClientKey: client, User: "agent", BootTimeout: d.Capabilities().BootTimeout + 2*time.Minute,
		// The snapshot steps run whatever the image; the guest agent's
		// only on images that have it (those warm templates are made of).
		GuestAgent: provision.CanWarm(img.Recipe),
	})
}
