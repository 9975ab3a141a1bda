package builder

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/agentfleet/agentfleet/internal/execx"
	"github.com/agentfleet/agentfleet/internal/vm"
	"github.com/hashicorp/packer-plugin-sdk/multistep"
)

// StepAssembleDisk turns the root file system into a bootable raw disk,
// root by UUID: for amd64 one MBR partition, ext4, GRUB in the boot
// sector; for arm64, whose firmware is UEFI, a GPT disk with an EFI system
// partition holding GRUB at the removable-media path (the firmware boots
// it with no boot entry in its variables) and the ext4 root.
//
// For recipes that boot their kernel directly (provision.Recipe.DirectBoot)
// it also copies out the kernel and initrd GRUB boots, with GRUB's command
// line.
//
// Reads "config", "rootfs", "workdir"; skipped when "qcow2" is set. Writes
// "raw" and, for direct boot, "boot" (*vm.DirectBoot). The loop device and
// mounts it makes are released before it returns, last first, also on
// failure or cancel.
type StepAssembleDisk struct{}

func (s *StepAssembleDisk) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	if _, ok := state.GetOk("qcow2"); ok {
		return multistep.ActionContinue
	}
	cfg := state.Get("config").(*Config)
	work := state.Get("workdir").(string)
	raw := filepath.Join(work, "disk.raw")
	cfg.say("assembling a %d GiB bootable disk...", cfg.DiskSizeGiB)
	bootDir := ""
	if cfg.directBoot() {
		bootDir = work
	}
	boot, err := assemble(ctx, cfg.Runner, cfg.Arch.Or(), state.Get("rootfs").(string), raw, filepath.Join(work, "mnt"), cfg.DiskSizeGiB, bootDir)
	if err != nil {
		return halt(state, fmt.Errorf("assemble disk: %w", err))
	}
	state.Put("raw", raw)
	if boot != nil {
		state.Put("boot", boot)
	}
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

// diskLayout is the partition table (an sfdisk script) of arch's disks
// and the partition numbers of the EFI system partition (0: none) and the
// root file system.
func diskLayout(arch vm.Arch) (script string, esp, root int) {
	if arch.Or() == vm.AMD64 {
		return "label: dos\nstart=2048, type=83, bootable\n", 0, 1
	}
	return "label: gpt\nstart=2048, size=64MiB, type=U, name=ESP\ntype=L, name=root\n", 1, 2
}

func assemble(ctx context.Context, r execx.Runner, arch vm.Arch, rootfs, raw, mnt string, sizeGiB int, bootDir string) (*vm.DirectBoot, error) {
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
		return nil, err
	}
	f.Close()
	if err := os.Truncate(raw, int64(sizeGiB)<<30); err != nil {
		return nil, err
	}
	layout, espN, rootN := diskLayout(arch)
	if _, err := r.Run(ctx, execx.Cmd{Name: "sfdisk", Args: []string{"--quiet", raw}, Stdin: strings.NewReader(layout)}); err != nil {
		return nil, err
	}
	loop, err := run("losetup", "--partscan", "--show", "--find", raw)
	if err != nil {
		return nil, err
	}
	undo.push(func() { cleanupRun("losetup", "--detach", loop) })
	part := fmt.Sprintf("%sp%d", loop, rootN)
	esp := ""
	if espN > 0 {
		esp = fmt.Sprintf("%sp%d", loop, espN)
	}
	// Without udev the partition nodes can appear a moment late.
	for _, p := range []string{part, esp} {
		for i := 0; i < 50 && p != "" && !fileExists(p); i++ {
			cleanupRun("partx", "--update", loop)
			time.Sleep(100 * time.Millisecond)
		}
		if p != "" && !fileExists(p) {
			return nil, fmt.Errorf("partition device %s did not appear", p)
		}
	}
	if _, err := run("mkfs.ext4", "-q", "-L", "fleetroot", part); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		return nil, err
	}
	if _, err := run("mount", part, mnt); err != nil {
		return nil, err
	}
	undo.push(func() { cleanupRun("umount", mnt) })
	if _, err := run("cp", "-a", "--one-file-system", rootfs+"/.", mnt+"/"); err != nil {
		return nil, err
	}
	uuid, err := run("blkid", "-s", "UUID", "-o", "value", part)
	if err != nil || uuid == "" {
		return nil, fmt.Errorf("read file system UUID: %v", err)
	}
	fstab := fmt.Sprintf("UUID=%s / ext4 defaults,discard,errors=remount-ro 0 1\n", uuid)
	if err := os.WriteFile(filepath.Join(mnt, "etc", "fstab"), []byte(fstab), 0o644); err != nil {
		return nil, err
	}
	unbind, err := bindSystemDirs(ctx, r, mnt)
	undo.push(unbind)
	if err != nil {
		return nil, err
	}
	// update-grub writes root=UUID=... only if /dev/disk/by-uuid/<uuid>
	// exists; without udev nobody makes it, so make it for the duration.
	byUUID := filepath.Join("/dev/disk/by-uuid", uuid)
	if err := os.MkdirAll(filepath.Dir(byUUID), 0o755); err != nil {
		return nil, err
	}
	if err := os.Symlink(part, byUUID); err != nil && !os.IsExist(err) {
		return nil, err
	}
	undo.push(func() { _ = os.Remove(byUUID) })
	if esp == "" {
		if _, err := run("chroot", mnt, "grub-install", "--target=i386-pc", loop); err != nil {
			return nil, err
		}
	} else if err := installEFIGrub(ctx, r, mnt, esp, uuid); err != nil {
		return nil, err
	}
	if _, err := run("chroot", mnt, "update-grub"); err != nil {
		return nil, err
	}
	cfg, err := os.ReadFile(filepath.Join(mnt, "boot", "grub", "grub.cfg"))
	if err != nil {
		return nil, err
	}
	if !strings.Contains(string(cfg), "root=UUID="+uuid) {
		return nil, fmt.Errorf("grub.cfg does not boot root=UUID=%s", uuid)
	}
	if bootDir == "" {
		return nil, nil
	}
	return copyBootFiles(mnt, string(cfg), bootDir)
}

// efiGrubModules are built into the EFI GRUB image: what it needs to find
// the root file system by UUID and read grub.cfg from it. The rest load
// from /boot/grub/arm64-efi on the root, as grub-install arranges.
var efiGrubModules = []string{"part_gpt", "part_msdos", "ext2", "fat", "search", "search_fs_uuid", "normal", "configfile", "linux", "gzio", "echo", "test"}

// installEFIGrub does what grub-install --removable does, without mounting
// the FAT file system (the host kernel may not have vfat; the build hosts
// here do not): GRUB's image, made in the chroot with grub-mkimage, finds
// the root by UUID and reads its grub.cfg; mtools writes it to the EFI
// system partition at the removable-media path, EFI/BOOT/BOOTAA64.EFI,
// which the firmware boots with no boot entry in its variables. The ESP is
// the firmware's alone: not in fstab, so the guest's boot does not wait on
// a FAT mount it never needs.
func installEFIGrub(ctx context.Context, r execx.Runner, mnt, esp, uuid string) error {
	run := func(name string, args ...string) error {
		// mtools would refuse a partition whose size is no whole number of
		// (made-up) tracks.
		_, err := r.Run(ctx, execx.Cmd{Name: name, Args: args, Env: []string{"MTOOLS_SKIP_CHECK=1"}})
		return err
	}
	if err := run("mkfs.vfat", "-n", "ESP", esp); err != nil {
		return fmt.Errorf("format the EFI system partition (mkfs.vfat is in dosfstools): %w", err)
	}
	modDir := filepath.Join(mnt, "boot", "grub", "arm64-efi")
	if err := os.MkdirAll(modDir, 0o755); err != nil {
		return err
	}
	if err := run("sh", "-c", `cp "$1"/usr/lib/grub/arm64-efi/*.mod "$1"/usr/lib/grub/arm64-efi/*.lst "$1"/boot/grub/arm64-efi/`, "sh", mnt); err != nil {
		return fmt.Errorf("copy GRUB's modules: %w", err)
	}
	early := fmt.Sprintf("search --no-floppy --fs-uuid --set=root %s\nset prefix=($root)/boot/grub\nconfigfile $prefix/grub.cfg\n", uuid)
	if err := os.WriteFile(filepath.Join(mnt, "tmp", "fleet-grub-early.cfg"), []byte(early), 0o644); err != nil {
		return err
	}
	defer os.Remove(filepath.Join(mnt, "tmp", "fleet-grub-early.cfg"))
	args := append([]string{mnt, "grub-mkimage", "-O", "arm64-efi", "-o", "/tmp/BOOTAA64.EFI", "-c", "/tmp/fleet-grub-early.cfg", "-p", "/boot/grub"}, efiGrubModules...)
	if err := run("chroot", args...); err != nil {
		return fmt.Errorf("make GRUB's EFI image: %w", err)
	}
	img := filepath.Join(mnt, "tmp", "BOOTAA64.EFI")
	defer os.Remove(img)
	if err := run("mmd", "-i", esp, "::/EFI", "::/EFI/BOOT"); err != nil {
		return fmt.Errorf("write the EFI system partition (mtools): %w", err)
	}
	if err := run("mcopy", "-i", esp, img, "::/EFI/BOOT/BOOTAA64.EFI"); err != nil {
		return fmt.Errorf("write the EFI system partition (mtools): %w", err)
	}
	return nil
}

// copyBootFiles copies the kernel and initrd of grub.cfg's first entry out
// of the mounted disk into dir, with the entry's command line.
func copyBootFiles(mnt, grubCfg, dir string) (*vm.DirectBoot, error) {
	kernel, cmdline, initrd := parseGrubEntry(grubCfg)
	if kernel == "" || initrd == "" {
		return nil, fmt.Errorf("grub.cfg has no linux and initrd entry to boot directly")
	}
	boot := &vm.DirectBoot{Kernel: filepath.Join(dir, "vmlinuz"), Initrd: filepath.Join(dir, "initrd.img"), Cmdline: cmdline}
	for src, dst := range map[string]string{kernel: boot.Kernel, initrd: boot.Initrd} {
		if err := copyFile(filepath.Join(mnt, src), dst); err != nil {
			return nil, fmt.Errorf("copy the kernel out for direct boot: %w", err)
		}
	}
	return boot, nil
}

// parseGrubEntry reads the first menu entry's "linux PATH ARGS" and
// "initrd PATH" lines.
func parseGrubEntry(cfg string) (kernel, cmdline, initrd string) {
	for _, l := range strings.Split(cfg, "\n") {
		f := strings.Fields(l)
		switch {
		case len(f) >= 2 && f[0] == "linux" && kernel == "":
			kernel, cmdline = f[1], strings.Join(f[2:], " ")
		case len(f) >= 2 && f[0] == "initrd" && initrd == "" && kernel != "":
			initrd = f[1]
		}
	}
	return kernel, cmdline, initrd
}

func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o644)
}
