package qemu

import (
	"fmt"
	"strings"

	"github.com/agentfleet/agentfleet/internal/vm"
)

// Accel is a QEMU accelerator.
type Accel string

const (
	AccelKVM Accel = "kvm"
	AccelHVF Accel = "hvf"
	AccelTCG Accel = "tcg"
)

// MachineArgs is the input to SystemArgs: every file and number a machine's
// qemu-system command line is made of.
type MachineArgs struct {
	Name string
	// Arch picks the board: q35 for amd64, virt with UEFI Firmware (the
	// code flash, read-only) for arm64.
	Arch     vm.Arch
	Firmware string
	Accel    Accel
	// TBSizeMiB, if not 0, is the size of TCG's translation cache
	// (-accel tcg,tb-size=): what QEMU holds for itself under emulation,
	// most of a warm clone's own memory. 0 keeps QEMU's default (in
	// QEMU 7.2, 1 GiB, or an eighth of a smaller host's RAM; resident as
	// the guest runs new code). A smaller cache fills sooner, and a full
	// one is flushed and translated again: memory bought with speed.
	// Other accelerators have no such cache and ignore it.
	TBSizeMiB int
	CPUs      int
	MemoryMiB int
	Disk      string // qcow2 overlay
	Seed      string // NoCloud ISO, attached read-only
	QMPSocket string
	// GuestAgentSocket is the host end of the QEMU guest agent's
	// virtio-serial port: the host-only channel into the guest.
	GuestAgentSocket string
	SerialLog        string
	// ConsoleSocket, if set, serves the serial console on a socket for
	// the console logger (see console.go) instead of writing SerialLog.
	ConsoleSocket string
	// Paused starts the guest stopped (-S), to be continued over QMP once
	// the console logger listens.
	Paused  bool
	PIDFile string
	// SSHHostPort 0 lets QEMU pick a free port atomically at bind time; the
	// chosen port is read back over QMP. That avoids the race of picking a
	// port in Go and handing it to QEMU while another spawn does the same.
	SSHHostPort int
	// VirtiofsSocket, if set, is a virtiofsd socket shared as tag
	// shareTag; vhost-user needs the guest RAM in shared memory.
	VirtiofsSocket string
	// Restrict cuts the guest off from the host and the outside (slirp
	// restrict=on); it then reaches only the Forwards and keeps its SSH
	// port forward. Slirp also stops answering its DNS.
	Restrict bool
	Forwards []Forward
	// Incoming starts the machine waiting for saved state (-incoming
	// defer) instead of booting.
	Incoming bool
	// StayPaused keeps a guest whose state was loaded stopped until a
	// cont (-S with -incoming): a compaction's new process, which must not
	// run the guest before its old process is out of the way.
	StayPaused bool
	// NoSSHForward leaves the SSH port forward out (hostfwd_add adds it
	// later): a compaction's new process takes over the old one's port.
	NoSSHForward bool
	// MemoryFile, if set, backs the guest's RAM with a file. Shared, the
	// guest writes its RAM into it (a machine becoming a warm template);
	// private, the guest starts from the file's pages and its writes stay
	// its own (a template's clone: pages are read from the host's page
	// cache as the guest touches them, and shared by every clone until
	// written).
	MemoryFile   string
	MemoryShared bool
	// Kernel, Initrd and Append start a kernel directly (-kernel) instead
	// of the disk's boot loader. With Incoming on a PC they say the saved
	// state was booted so: QEMU gets the boot ROM, not the kernel.
	Kernel, Initrd, Append string
}

// linuxBootROM is the option ROM QEMU boots -kernel with on a PC whose
// firmware config has DMA (every q35 board); found in QEMU's data dirs.
const linuxBootROM = "linuxboot_dma.bin"

// ForwardIP is where the guest reaches Forwards: an otherwise unused address
// in slirp's 10.0.2.0/24.
const ForwardIP = "10.0.2.100"

// Forward runs Command (already a shell-quoted string: QEMU splits it with
// g_shell_parse_argv) for every guest connection to ForwardIP:Port, with the
// connection as its stdin, stdout and stderr.
type Forward struct {
	Port    int
	Command string
}

// netdevArgs is the user-mode network: SSH forwarded from a host port on
// loopback and, when restricted, nothing else but the forwards.
func netdevArgs(m MachineArgs) string {
	s := "user,id=net0"
	if !m.NoSSHForward {
		s += fmt.Sprintf(",hostfwd=%s", sshForward(m.SSHHostPort))
	}
	if m.Restrict {
		s += ",restrict=on,ipv6=off"
	}
	for _, f := range m.Forwards {
		s += fmt.Sprintf(",guestfwd=tcp:%s:%d-cmd:%s", ForwardIP, f.Port, qemuEscape(f.Command))
	}
	return s
}

// sshForward is the SSH port forward's rule: the host's loopback port
// (0: any free one) to the guest's 22.
func sshForward(port int) string { return fmt.Sprintf("tcp:127.0.0.1:%d-:22", port) }

// SystemArgs builds the qemu-system-x86_64 or qemu-system-aarch64
// argument list. It is a pure function so it can be table-tested.
func SystemArgs(m MachineArgs) []string {
	args := []string{
		"-name", fmt.Sprintf("%s,process=fleet-%s", qemuEscape(m.Name), qemuEscape(m.Name)),
		// RAM is always the backend "mem", whatever holds it, so state
		// saved by one kind of machine loads into any other.
		"-machine", machineType(m),
		"-accel", accelArg(m),
		"-cpu", cpuModel(m),
		"-smp", fmt.Sprint(m.CPUs),
		"-m", fmt.Sprintf("%dM", m.MemoryMiB),
		"-object", memoryBackend(m),
		"-nodefaults", "-no-user-config",
		"-display", "none",
		"-daemonize", "-pidfile", m.PIDFile,
	}
	if m.Arch.Or() == vm.ARM64 {
		// UEFI from the code flash alone: without a variables flash the
		// firmware keeps its variables in RAM, and it boots the disk's
		// removable-media path (or the kernel QEMU hands it) all the same.
		args = append(args, "-drive", fmt.Sprintf("if=pflash,format=raw,unit=0,readonly=on,file=%s", qemuEscape(m.Firmware)))
	}
	args = append(args,
		"-drive", fmt.Sprintf("if=virtio,file=%s,format=qcow2,discard=unmap", qemuEscape(m.Disk)),
		"-drive", fmt.Sprintf("if=virtio,file=%s,format=raw,readonly=on", qemuEscape(m.Seed)),
		"-netdev", netdevArgs(m),
		// romfile= skips the iPXE option ROM: seconds saved per boot under TCG.
		"-device", "virtio-net-pci,netdev=net0,romfile=",
		// Host entropy so early boot never blocks in getrandom().
		"-device", "virtio-rng-pci",
		"-serial", serialArg(m),
		"-qmp", fmt.Sprintf("unix:%s,server=on,wait=off", m.QMPSocket),
	)
	if m.Arch.Or() == vm.AMD64 {
		// A new generation ID at every start: a guest restored from saved
		// state (a warm template's clones) reseeds its kernel RNG. QEMU has
		// it on x86 only; every clone's identity program reseeds too.
		args = append(args, "-device", "vmgenid,guid=auto")
	}
	args = append(args,
		"-device", "virtio-serial-pci,id=vser0",
		"-chardev", fmt.Sprintf("socket,id=qga0,path=%s,server=on,wait=off", qemuEscape(m.GuestAgentSocket)),
		"-device", "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0",
	)
	switch {
	case m.Kernel != "" && m.Incoming && m.Arch.Or() == vm.AMD64:
		// Saved state from a machine QEMU started the kernel of holds the
		// option ROM that booted it (a RAM block the state must find),
		// not the kernel: QEMU reads -kernel and -initrd into its heap
		// and keeps them, 14 MiB of every clone's own memory, for a
		// reboot. The ROM alone is enough to load the state; a reboot
		// finds no kernel behind it and boots the disk's GRUB.
		args = append(args, "-option-rom", linuxBootROM)
	case m.Kernel != "":
		args = append(args, "-kernel", m.Kernel, "-initrd", m.Initrd, "-append", m.Append)
	}
	if m.Paused && !m.Incoming || m.StayPaused && m.Incoming {
		args = append(args, "-S")
	}
	if m.Incoming {
		args = append(args, "-incoming", "defer")
	}
	if m.VirtiofsSocket != "" {
		args = append(args,
			"-chardev", fmt.Sprintf("socket,id=vfs,path=%s", qemuEscape(m.VirtiofsSocket)),
			"-device", "vhost-user-fs-pci,chardev=vfs,tag="+shareTag,
		)
	}
	return args
}

// accelArg is the accelerator and, under TCG, its cache size.
func accelArg(m MachineArgs) string {
	if m.Accel == AccelTCG && m.TBSizeMiB > 0 {
		return fmt.Sprintf("%s,tb-size=%d", m.Accel, m.TBSizeMiB)
	}
	return string(m.Accel)
}

// machineType is the board: q35 on x86; on arm64 the generic virt board,
// with the newest interrupt controller the accelerator offers (GICv2, the
// default, stops at 8 CPUs). HVF keeps QEMU's default, which is what it
// supports.
func machineType(m MachineArgs) string {
	if m.Arch.Or() == vm.AMD64 {
		return "q35,memory-backend=mem"
	}
	switch m.Accel {
	case AccelTCG:
		return "virt,gic-version=max,memory-backend=mem"
	case AccelKVM:
		return "virt,gic-version=host,memory-backend=mem"
	}
	return "virt,memory-backend=mem"
}

// cpuModel is the host's CPU under an accelerator. Under TCG it is every
// feature QEMU can emulate; on arm64 with QEMU's own pointer
// authentication algorithm, since emulating the architected one (QARMA)
// costs more than the rest of the CPU.
func cpuModel(m MachineArgs) string {
	switch {
	case m.Accel == AccelKVM || m.Accel == AccelHVF:
		return "host"
	case m.Arch.Or() == vm.ARM64:
		return "max,pauth-impdef=on"
	}
	return "max"
}

// memoryBackend is the guest RAM's backend: in shared memory for virtiofs
// (vhost-user maps it), in a file for warm templates and their clones,
// plain anonymous memory otherwise.
func memoryBackend(m MachineArgs) string {
	switch {
	case m.VirtiofsSocket != "":
		return fmt.Sprintf("memory-backend-memfd,id=mem,size=%dM,share=on", m.MemoryMiB)
	case m.MemoryFile != "":
		share := "off"
		if m.MemoryShared {
			share = "on"
		}
		return fmt.Sprintf("memory-backend-file,id=mem,size=%dM,mem-path=%s,share=%s", m.MemoryMiB, qemuEscape(m.MemoryFile), share)
	}
	return fmt.Sprintf("memory-backend-ram,id=mem,size=%dM", m.MemoryMiB)
}

// qemuEscape doubles commas, QEMU's escape inside option values, so a path
// with a comma cannot add options.
func qemuEscape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// OverlayArgs builds the qemu-img command that makes a linked clone: a qcow2
// overlay whose backing file is the read-only base.
func OverlayArgs(base, overlay string) []string {
	return []string{"create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, overlay}
}

// serialArg is where the guest's serial console goes: the console
// logger's socket, or (the builder's machines, which run no one else's
// code) a plain file.
func serialArg(m MachineArgs) string {
	if m.ConsoleSocket != "" {
		return fmt.Sprintf("unix:%s,server=on,wait=off", qemuEscape(m.ConsoleSocket))
	}
	return "file:" + m.SerialLog
}
