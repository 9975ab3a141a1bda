package builder

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/agentfleet/agentfleet/internal/execx"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
)

// StepChroot prepares the root file system for provisioning and hands the
// provision step a chroot Communicator: /dev, /proc and /sys bound
// in, the host's resolv.conf for name lookups, and a policy-rc.d that stops
// packages from starting daemons inside the chroot.
//
// Reads "config", "rootfs"; skipped on a cache hit. Writes "communicator".
// Cleanup kills any process still running in the chroot (a Ctrl-C'd apt,
// a daemon a package started), then undoes its changes, last first.
type StepChroot struct {
	rootfs string
	undo   []func()
}

func (s *StepChroot) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	if _, ok := state.GetOk("qcow2"); ok {
		return multistep.ActionContinue
	}
	cfg := state.Get("config").(*Config)
	s.rootfs = state.Get("rootfs").(string)
	unbind, err := bindSystemDirs(ctx, cfg.Runner, s.rootfs)
	s.undo = append(s.undo, unbind)
	if err != nil {
		return halt(state, fmt.Errorf("prepare chroot: %w", err))
	}
	restore, err := replaceFile(filepath.Join(s.rootfs, "etc", "resolv.conf"), hostResolvConf(), 0o644)
	if err != nil {
		return halt(state, fmt.Errorf("prepare chroot: %w", err))
	}
	s.undo = append(s.undo, restore)
	restore, err = replaceFile(filepath.Join(s.rootfs, "usr", "sbin", "policy-rc.d"), []byte("#!/bin/sh\nexit 101\n"), 0o755)
	if err != nil {
		return halt(state, fmt.Errorf("prepare chroot: %w", err))
	}
	s.undo = append(s.undo, restore)
	state.Put("communicator", &chrootComm{Root: s.rootfs})
	return multistep.ActionContinue
}

func (s *StepChroot) Cleanup(state multistep.StateBag) { s.release() }

// release kills what still runs in the chroot and undoes the preparation,
// last first. It runs once: right after provisioning (StepChrootDone), so
// none of it reaches the disk, or in cleanup when the build stops early.
func (s *StepChroot) release() {
	if s.rootfs != "" && len(s.undo) > 0 {
		killChrootProcesses(s.rootfs)
	}
	for i := len(s.undo) - 1; i >= 0; i-- {
		s.undo[i]()
	}
	s.undo = nil
}

// StepChrootDone releases the chroot that StepChroot prepared once the
// provision scripts have run: the bind mounts, resolv.conf and policy-rc.d
// must not be copied onto the disk.
//
// Reads nothing; writes nothing. No cleanup of its own.
type StepChrootDone struct{ Chroot *StepChroot }

func (s *StepChrootDone) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	s.Chroot.release()
	return multistep.ActionContinue
}

func (s *StepChrootDone) Cleanup(multistep.StateBag) {}

// hostResolvConf is what the chroot resolves names with: the host's own
// configuration (following systemd-resolved's stub to the real servers).
func hostResolvConf() []byte {
	for _, p := range []string{"/run/systemd/resolve/resolv.conf", "/etc/resolv.conf"} {
		if b, err := os.ReadFile(p); err == nil && len(b) > 0 {
			return b
		}
	}
	return []byte("nameserver 127.0.0.53\n")
}

// replaceFile puts data at path for the duration of the build and returns
// a function that puts back what was there (a file, a symlink, or nothing).
func replaceFile(path string, data []byte, mode os.FileMode) (func(), error) {
	saved := path + ".fleet-saved"
	had := false
	if _, err := os.Lstat(path); err == nil {
		if err := os.Rename(path, saved); err != nil {
			return nil, err
		}
		had = true
	}
	restore := func() {
		_ = os.Remove(path)
		if had {
			_ = os.Rename(saved, path)
		}
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		restore()
		return nil, err
	}
	if err := os.WriteFile(path, data, mode); err != nil {
		restore()
		return nil, err
	}
	return restore, nil
}

// killChrootProcesses SIGKILLs every process whose root is root, so no
// half-run package script or stray daemon keeps the file system busy.
func killChrootProcesses(root string) {
	want, err := filepath.EvalSymlinks(root)
	if err != nil {
		return
	}
	for attempt := 0; attempt < 20; attempt++ {
		found := false
		entries, _ := os.ReadDir("/proc")
		for _, e := range entries {
			pid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			r, err := os.Readlink(filepath.Join("/proc", e.Name(), "root"))
			if err != nil || (r != want && !strings.HasPrefix(r, want+"/")) {
				continue
			}
			found = true
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		if !found {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// bindSystemDirs bind-mounts /dev, /dev/pts, /proc and /sys into root. The returned
// function unmounts whatever was mounted, last first.
func bindSystemDirs(ctx context.Context, r execx.Runner, root string) (func(), error) {
	var mounted []string
	undo := func() {
		for i := len(mounted) - 1; i >= 0; i-- {
			_, _ = r.Run(context.Background(), execx.Cmd{Name: "umount", Args: []string{"-l", mounted[i]}})
		}
		mounted = nil
	}
	for _, d := range []string{"dev", "dev/pts", "proc", "sys"} {
		target := filepath.Join(root, d)
		if err := os.MkdirAll(target, 0o755); err != nil {
			return undo, err
		}
		if _, err := r.Run(ctx, execx.Cmd{Name: "mount", Args: []string{"--bind", "/" + d, target}}); err != nil {
			return undo, err
		}
		mounted = append(mounted, target)
	}
	return undo, nil
}
