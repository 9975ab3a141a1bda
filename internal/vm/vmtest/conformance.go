// Package vmtest is the conformance suite every vm.Driver passes: the QEMU
// driver in e2e (real VMs), the VirtualBox driver in unit tests (over its
// strict fake VBoxManage). One suite, so the drivers cannot drift apart in
// what fleet relies on.
package vmtest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/agentfleet/agentfleet/internal/sshx"
	"github.com/agentfleet/agentfleet/internal/vm"
	"golang.org/x/crypto/ssh"
)

// Harness is what the suite needs besides the driver.
type Harness struct {
	Driver vm.Driver
	// Spec returns a fresh machine spec (its own Dir, a base image, a seed
	// with a pinned host key and ClientKey's public half authorized).
	Spec      func(t *testing.T, name string) vm.Spec
	ClientKey sshx.KeyPair
	User      string
	// BootTimeout bounds each wait for SSH (long under TCG).
	BootTimeout time.Duration
}

// Run exercises the lifecycle fleet relies on: create makes a stopped
// machine, start boots it to an SSH handshake with the pinned key, start is
// idempotent, stop powers it off and it starts again, delete removes it
// (twice is fine) and a deleted machine cannot start.
func Run(t *testing.T, h Harness) {
	ctx := context.Background()
	d := h.Driver
	s := h.Spec(t, "conf-1")
	signer, err := ssh.ParsePrivateKey(h.ClientKey.PrivatePEM)
	if err != nil {
		t.Fatal(err)
	}
	hostKey, err := sshx.ParseAuthorizedKey(s.Seed.HostKeyPublic)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Delete(context.Background(), s) })

	status := func(want vm.Power) vm.Status {
		t.Helper()
		st, err := d.Status(ctx, s)
		if err != nil {
			t.Fatalf("status: %v", err)
		}
		if st.Power != want {
			t.Fatalf("status: %s, want %s", st.Power, want)
		}
		return st
	}
	handshake := func(rt vm.Runtime) {
		t.Helper()
		wctx, cancel := context.WithTimeout(ctx, h.BootTimeout)
		defer cancel()
		c, err := sshx.WaitReady(wctx, sshx.Target{Addr: rt.SSHAddr, User: h.User, Signer: signer, HostKey: hostKey}, sshx.DefaultBackoff)
		if err != nil {
			t.Fatalf("SSH with the pinned key: %v", err)
		}
		c.Close()
	}

	if err := d.Validate(ctx); err != nil {
		t.Fatalf("validate: %v", err)
	}
	if err := d.Create(ctx, s); err != nil {
		t.Fatalf("create: %v", err)
	}
	status(vm.PowerOff)
	rt, err := d.Start(ctx, s)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	if st := status(vm.PowerOn); st.Runtime.SSHAddr != rt.SSHAddr {
		t.Errorf("status reports %s, start said %s", st.Runtime.SSHAddr, rt.SSHAddr)
	}
	handshake(rt)
	again, err := d.Start(ctx, s)
	if err != nil || again.SSHAddr != rt.SSHAddr {
		t.Errorf("a second start must return the running machine: %v %v", again, err)
	}
	if err := d.Stop(ctx, s, 2*time.Minute); err != nil {
		t.Fatalf("stop: %v", err)
	}
	status(vm.PowerOff)
	rt, err = d.Start(ctx, s)
	if err != nil {
		t.Fatalf("start after stop: %v", err)
	}
	handshake(rt)
	if err := d.Delete(ctx, s); err != nil {
		t.Fatalf("delete: %v", err)
	}
	status(vm.PowerOff)
	if err := d.Delete(ctx, s); err != nil {
		t.Errorf("deleting a deleted machine: %v", err)
	}
	if _, err := d.Start(ctx, s); !errors.Is(err, vm.ErrNotCreated) {
		t.Errorf("start after delete: %v, want ErrNotCreated", err)
	}
}
