package builder

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/agentfleet/agentfleet/internal/execx"
	"github.com/hashicorp/packer-plugin-sdk/multistep"
)

// StepAssembleDisk turns the root file system into a bootable raw disk:
// one MBR partition, ext4, GRUB in the boot sector, root by UUID.
//
// Reads "config", "rootfs", "workdir"; skipped when "qcow2" is set. Writes
// "raw". The loop device and mounts it makes are released before it
// returns, last first, also on failure or cancel.
type StepAssembleDisk struct{}

func (s *StepAssembleDisk) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	if _, ok := state.GetOk("qcow2"); ok {
		return multistep.ActionContinue
	}
	cfg := state.Get("config").(*Config)
	work := state.Get("workdir").(string)
	raw := filepath.Join(work, "disk.raw")
	cfg.say("assembling a %d GiB bootable disk...", cfg.DiskSizeGiB)
	if err := assemble(ctx, cfg.Runner, state.Get("rootfs").(string), raw, filepath.Join(work, "mnt"), cfg.DiskSizeGiB); err != nil {
		return halt(state, fmt.Errorf("assemble disk: %w", err))
	}
	state.Put("raw", raw)
	return multistep.ActionContinue
}

func (s *StepAssembleDisk) Cleanup(multistep.StateBag) {}

// undoStack runs registered cleanups last-in first-out on a fresh context.
type undoStack []func()

func (u *undoStack) push(f func()) { *u = append(*u, f) }
func (u *undoStack) run() {
	for i := len(*u) - 1; i >= 0; i-- {
		(*u)[i]()
	}
	*u = nil
}

func assemble(ctx context.Context, r execx.Runner, rootfs, raw, mnt string, sizeGiB int) error {
	run := func(name string, args ...string) (string, error) {
		out, err := r.Run(ctx, execx.Cmd{Name: name, Args: args})
		return strings.TrimSpace(string(out)), err
	}
	cleanupRun := func(name string, args ...string) {
		_, _ = r.Run(context.Background(), execx.Cmd{Name: name, Args: args})
	}
	var undo undoStack
	defer undo.run()

	f, err := os.Create(raw)
	if err != nil {
		return err
	}
	f.Close()
	if err := os.Truncate(raw, int64(sizeGiB)<<30); err != nil {
		return err
	}
	if _, err := r.Run(ctx, execx.Cmd{Name: "sfdisk", Args: []string{"--quiet", raw}, Stdin: strings.NewReader("label: dos\nstart=2048, type=83, bootable\n")}); err != nil {
		return err
	}
	loop, err := run("losetup", "--partscan", "--show", "--find", raw)
	if err != nil {
		return err
	}
	undo.push(func() { cleanupRun("losetup", "--detach", loop) })
	part := loop + "p1"
	// Without udev the partition node can appear a moment late.
	for i := 0; i < 50 && !fileExists(part); i++ {
		cleanupRun("partx", "--update", loop)
		time.Sleep(100 * time.Millisecond)
	}
	if !fileExists(part) {
		return fmt.Errorf("partition device %s did not appear", part)
	}
	if _, err := run("mkfs.ext4", "-q", "-L", "fleetroot", part); err != nil {
		return err
	}
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		return err
	}
	if _, err := run("mount", part, mnt); err != nil {
		return err
	}
	undo.push(func() { cleanupRun("umount", mnt) })
	if _, err := run("cp", "-a", "--one-file-system", rootfs+"/.", mnt+"/"); err != nil {
		return err
	}
	uuid, err := run("blkid", "-s", "UUID", "-o", "value", part)
	if err != nil || uuid == "" {
		return fmt.Errorf("read file system UUID: %v", err)
	}
	fstab := fmt.Sprintf("UUID=%s / ext4 defaults,discard,errors=remount-ro 0 1\n", uuid)
	if err := os.WriteFile(filepath.Join(mnt, "etc", "fstab"), []byte(fstab), 0o644); err != nil {
		return err
	}
	unbind, err := bindSystemDirs(ctx, r, mnt)
	undo.push(unbind)
	if err != nil {
		return err
	}
	// update-grub writes root=UUID=... only if /dev/disk/by-uuid/<uuid>
	// exists; without udev nobody makes it, so make it for the duration.
	byUUID := filepath.Join("/dev/disk/by-uuid", uuid)
	if err := os.MkdirAll(filepath.Dir(byUUID), 0o755); err != nil {
		return err
	}
	if err := os.Symlink(part, byUUID); err != nil && !os.IsExist(err) {
		return err
	}
	undo.push(func() { _ = os.Remove(byUUID) })
	if _, err := run("chroot", mnt, "grub-install", "--target=i386-pc", loop); err != nil {
		return err
	}
	if _, err := run("chroot", mnt, "update-grub"); err != nil {
		return err
	}
	cfg, err := os.ReadFile(filepath.Join(mnt, "boot", "grub", "grub.cfg"))
	if err != nil {
		return err
	}
	if !strings.Contains(string(cfg), "root=UUID="+uuid) {
		return fmt.Errorf("grub.cfg does not boot root=UUID=%s", uuid)
	}
	return nil
}
