package builder

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"time"

	"github.com/agentfleet/agentfleet/internal/layout"
	"github.com/agentfleet/agentfleet/internal/sshx"
	"github.com/agentfleet/agentfleet/internal/vm"
	"github.com/agentfleet/agentfleet/internal/vm/qemu"
	"github.com/hashicorp/packer-plugin-sdk/multistep"
	"golang.org/x/crypto/ssh"
)

// guest is a VM the builder boots from a disk: to provision a cloud image
// over SSH, or to verify a finished image. Its disk is a linked clone, so
// the disk it boots from is never written.
type guest struct {
	driver *qemu.Driver
	spec   vm.Spec
	target sshx.Target
	client *ssh.Client
}

// bootGuest clones base into dir, boots it with a throwaway key for user
// and a host key generated here, and waits for SSH with that key pinned.
func bootGuest(ctx context.Context, cfg *Config, name, base, dir, user string, boot *vm.DirectBoot) (*guest, error) {
	client, err := sshx.NewKeyPair("fleet-build")
	if err != nil {
		return nil, err
	}
	host, err := sshx.NewKeyPair("")
	if err != nil {
		return nil, err
	}
	signer, err := ssh.ParsePrivateKey(client.PrivatePEM)
	if err != nil {
		return nil, err
	}
	hostKey, err := sshx.ParseAuthorizedKey(host.AuthorizedKey)
	if err != nil {
		return nil, err
	}
	id := make([]byte, 8)
	_, _ = rand.Read(id)
	g := &guest{
		driver: qemu.New(cfg.Runner, qemu.Accel(cfg.Accel), nil),
		spec: vm.Spec{Name: name, Dir: dir, BaseImage: base, Arch: cfg.Arch, CPUs: 2, MemoryMiB: 2048, Seed: vm.Seed{
			InstanceID: hex.EncodeToString(id), Hostname: name, User: user, AuthorizedKey: client.AuthorizedKey,
			HostKeyPrivate: string(host.PrivatePEM), HostKeyPublic: host.AuthorizedKey,
		}, Boot: boot},
	}
	if err := g.driver.ValidateArch(ctx, cfg.Arch); err != nil {
		return nil, err
	}
	if err := g.driver.Create(ctx, g.spec); err != nil {
		return nil, err
	}
	rt, err := g.driver.Start(ctx, g.spec)
	if err != nil {
		g.stop(false)
		return nil, fmt.Errorf("boot %s: %w", name, err)
	}
	g.target = sshx.Target{Addr: rt.SSHAddr, User: user, Signer: signer, HostKey: hostKey}
	wctx, cancel := context.WithTimeout(ctx, cfg.bootTimeout())
	defer cancel()
	g.client, err = sshx.WaitReady(wctx, g.target, sshx.DefaultBackoff)
	if err != nil {
		g.stop(false)
		return nil, fmt.Errorf("%s never answered on SSH (serial console: %s): %w", name, filepath.Join(dir, layout.SerialFile), err)
	}
	return g, nil
}

// shutdown powers the guest off gracefully, keeping its disk.
func (g *guest) shutdown(ctx context.Context) error {
	if g.client != nil {
		g.client.Close()
		g.client = nil
	}
	return g.driver.Stop(ctx, g.spec, 3*time.Minute)
}

// cleanup is a step's cleanup of the guest it booted (nil: none): the
// guest is deleted, or with --keep-on-failure after a failed build only
// stopped, its disk kept for debugging.
func (g *guest) cleanup(state multistep.StateBag, role string) {
	if g == nil {
		return
	}
	cfg := state.Get("config").(*Config)
	keep := failed(state) && cfg.KeepOnFailure
	if keep {
		cfg.say("keeping the %s VM's disk for debugging: %s (the VM is stopped)", role, g.spec.Dir)
	}
	g.stop(keep)
}

// stop forces the guest off on a fresh context, so that it also runs after
// Ctrl-C, and deletes its clone unless keepDisk.
func (g *guest) stop(keepDisk bool) {
	if g.client != nil {
		g.client.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if keepDisk {
		_ = g.driver.Stop(ctx, g.spec, 0)
		return
	}
	_ = g.driver.Delete(ctx, g.spec)
}
