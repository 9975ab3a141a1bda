package qemu

import (
	"slices"
	"strings"
	"testing"

	"github.com/agentfleet/agentfleet/internal/vm"
)

func argAfter(args []string, flag string) []string {
	var out []string
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag {
			out = append(out, args[i+1])
		}
	}
	return out
}

func TestSystemArgs(t *testing.T) {
	base := MachineArgs{Name: "proj-1", CPUs: 2, MemoryMiB: 2048, Disk: "/f/proj-1/disk.qcow2", Seed: "/f/proj-1/seed.iso",
		QMPSocket: "/f/proj-1/qmp.sock", GuestAgentSocket: "/f/proj-1/qga.sock", SerialLog: "/f/proj-1/serial.log", PIDFile: "/f/proj-1/qemu.pid"}
	tests := []struct {
		name string
		edit func(*MachineArgs)
		flag string
		want []string
	}{
		{"tcg uses max cpu", func(m *MachineArgs) { m.Accel = AccelTCG }, "-cpu", []string{"max"}},
		{"kvm uses host cpu", func(m *MachineArgs) { m.Accel = AccelKVM }, "-cpu", []string{"host"}},
		{"accel passed", func(m *MachineArgs) { m.Accel = AccelHVF }, "-accel", []string{"hvf"}},
		{"tcg keeps its default cache", func(m *MachineArgs) {}, "-accel", []string{"tcg"}},
		{"tcg with a smaller cache", func(m *MachineArgs) { m.TBSizeMiB = 64 }, "-accel", []string{"tcg,tb-size=64"}},
		{"kvm has no translation cache", func(m *MachineArgs) { m.Accel, m.TBSizeMiB = AccelKVM, 64 }, "-accel", []string{"kvm"}},
		{"hvf has none either", func(m *MachineArgs) { m.Accel, m.TBSizeMiB = AccelHVF, 64 }, "-accel", []string{"hvf"}},
		{"cpus and memory", func(m *MachineArgs) { m.CPUs, m.MemoryMiB = 4, 4096 }, "-m", []string{"4096M"}},
		{"ssh port 0 lets qemu choose", func(m *MachineArgs) {}, "-netdev", []string{"user,id=net0,hostfwd=tcp:127.0.0.1:0-:22"}},
		{"explicit ssh port", func(m *MachineArgs) { m.SSHHostPort = 2222 }, "-netdev", []string{"user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22"}},
		{"restricted: no route out, no IPv6", func(m *MachineArgs) { m.Restrict = true }, "-netdev", []string{"user,id=net0,hostfwd=tcp:127.0.0.1:0-:22,restrict=on,ipv6=off"}},
		{"a compaction's new process: no SSH forward yet", func(m *MachineArgs) { m.NoSSHForward, m.Restrict = true, true }, "-netdev", []string{"user,id=net0,restrict=on,ipv6=off"}},
		{"forwards run a command per connection, commas escaped", func(m *MachineArgs) {
			m.Restrict = true
			m.Forwards = []Forward{{Port: 3128, Command: "'/usr/bin/fleet' '__proxy' 'egress' '/f/a,b'"}, {Port: 3129, Command: "x"}}
		}, "-netdev", []string{"user,id=net0,hostfwd=tcp:127.0.0.1:0-:22,restrict=on,ipv6=off" +
			",guestfwd=tcp:10.0.2.100:3128-cmd:'/usr/bin/fleet' '__proxy' 'egress' '/f/a,,b'" +
			",guestfwd=tcp:10.0.2.100:3129-cmd:x"}},
		{"disk overlay and read-only seed", func(m *MachineArgs) {}, "-drive", []string{
			"if=virtio,file=/f/proj-1/disk.qcow2,format=qcow2,discard=unmap",
			"if=virtio,file=/f/proj-1/seed.iso,format=raw,readonly=on"}},
		{"comma in path cannot inject options", func(m *MachineArgs) { m.Disk = "/x,snapshot=on/disk.qcow2" }, "-drive", []string{
			"if=virtio,file=/x,,snapshot=on/disk.qcow2,format=qcow2,discard=unmap",
			"if=virtio,file=/f/proj-1/seed.iso,format=raw,readonly=on"}},
		{"serial to file", func(m *MachineArgs) {}, "-serial", []string{"file:/f/proj-1/serial.log"}},
		{"serial to the console logger's socket, commas escaped", func(m *MachineArgs) { m.ConsoleSocket = "/f/a,b/console.sock" }, "-serial",
			[]string{"unix:/f/a,,b/console.sock,server=on,wait=off"}},
		{"qmp socket", func(m *MachineArgs) {}, "-qmp", []string{"unix:/f/proj-1/qmp.sock,server=on,wait=off"}},
		{"pid file", func(m *MachineArgs) {}, "-pidfile", []string{"/f/proj-1/qemu.pid"}},
		{"RAM is always the backend mem", func(m *MachineArgs) {}, "-machine", []string{"q35,memory-backend=mem"}},
		{"no share: plain memory", func(m *MachineArgs) {}, "-object", []string{"memory-backend-ram,id=mem,size=2048M"}},
		{"share: RAM in shared memory", func(m *MachineArgs) { m.VirtiofsSocket = "/f/proj-1/virtiofs.sock" }, "-object",
			[]string{"memory-backend-memfd,id=mem,size=2048M,share=on"}},
		{"a template-to-be writes its RAM into its file", func(m *MachineArgs) { m.MemoryFile, m.MemoryShared = "/t/memory", true }, "-object",
			[]string{"memory-backend-file,id=mem,size=2048M,mem-path=/t/memory,share=on"}},
		{"a clone maps the template's RAM privately, commas escaped", func(m *MachineArgs) { m.MemoryFile = "/t,x/memory" }, "-object",
			[]string{"memory-backend-file,id=mem,size=2048M,mem-path=/t,,x/memory,share=off"}},
		{"share: machine uses it", func(m *MachineArgs) { m.VirtiofsSocket = "/f/v.sock" }, "-machine", []string{"q35,memory-backend=mem"}},
		{"resume waits for the saved state", func(m *MachineArgs) { m.Incoming = true }, "-incoming", []string{"defer"}},
		{"no kernel: the disk's boot loader", func(m *MachineArgs) {}, "-kernel", nil},
		{"a kernel started directly", func(m *MachineArgs) { m.Kernel, m.Initrd, m.Append = "/i/vmlinuz", "/i/initrd.img", "root=UUID=x ro" }, "-append", []string{"root=UUID=x ro"}},
		{"its initrd", func(m *MachineArgs) { m.Kernel, m.Initrd, m.Append = "/i/vmlinuz", "/i/initrd.img", "root=UUID=x ro" }, "-initrd", []string{"/i/initrd.img"}},
		{"a restore of a directly started kernel gets its boot ROM, not the kernel", func(m *MachineArgs) {
			m.Kernel, m.Initrd, m.Append, m.Incoming = "/i/vmlinuz", "/i/initrd.img", "root=UUID=x ro", true
		}, "-option-rom", []string{"linuxboot_dma.bin"}},
		{"nor its initrd", func(m *MachineArgs) { m.Kernel, m.Initrd, m.Incoming = "/i/vmlinuz", "/i/initrd.img", true }, "-initrd", nil},
		{"a restore of a disk-booted machine gets no boot ROM", func(m *MachineArgs) { m.Incoming = true }, "-option-rom", nil},
		{"a booting machine gets no boot ROM of its own", func(m *MachineArgs) { m.Kernel, m.Initrd = "/i/vmlinuz", "/i/initrd.img" }, "-option-rom", nil},
		{"arm64 restores keep the kernel (no option ROM boots it there)", func(m *MachineArgs) {
			m.Arch, m.Kernel, m.Initrd, m.Incoming = vm.ARM64, "/i/vmlinuz", "/i/initrd.img", true
		}, "-kernel", []string{"/i/vmlinuz"}},
		{"share: socket, comma escaped", func(m *MachineArgs) { m.VirtiofsSocket = "/f/a,b/v.sock" }, "-chardev", []string{"socket,id=qga0,path=/f/proj-1/qga.sock,server=on,wait=off", "socket,id=vfs,path=/f/a,,b/v.sock"}},
		{"guest agent port and a generation ID for restored guests", func(m *MachineArgs) {}, "-device", []string{"virtio-net-pci,netdev=net0,romfile=", "virtio-rng-pci",
			"vmgenid,guid=auto", "virtio-serial-pci,id=vser0", "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0"}},
		{"guest agent socket, comma escaped", func(m *MachineArgs) { m.GuestAgentSocket = "/f/a,b/qga.sock" }, "-chardev", []string{"socket,id=qga0,path=/f/a,,b/qga.sock,server=on,wait=off"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := base
			m.Accel = AccelTCG
			tt.edit(&m)
			args := SystemArgs(m)
			if got := argAfter(args, tt.flag); !slices.Equal(got, tt.want) {
				t.Errorf("%s = %q, want %q", tt.flag, got, tt.want)
			}
			for _, must := range []string{"-daemonize", "-nodefaults", "-no-user-config"} {
				if !slices.Contains(args, must) {
					t.Errorf("missing %s", must)
				}
			}
			if got := strings.Join(argAfter(args, "-device"), " "); !strings.Contains(got, "romfile=") {
				t.Errorf("NIC should skip the option ROM: %s", got)
			}
		})
	}
}

func TestOverlayArgsLinkToReadOnlyBase(t *testing.T) {
	got := OverlayArgs("/img/base.qcow2", "/m/disk.qcow2")
	want := []string{"create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", "/img/base.qcow2", "/m/disk.qcow2"}
	if !slices.Equal(got, want) {
		t.Fatalf("got %q", got)
	}
}

func TestParseHostFwdPort(t *testing.T) {
	out := "Hub -1 (net0):\n  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ\n  TCP[HOST_FORWARD]  13       127.0.0.1 35323       10.0.2.15    22     0     0\n"
	if p, ok := parseHostFwdPort(out); !ok || p != 35323 {
		t.Fatalf("got %d %v", p, ok)
	}
	if _, ok := parseHostFwdPort("Hub -1 (net0):\n"); ok {
		t.Fatal("no forward should not parse")
	}
}

func TestHasVirtFlag(t *testing.T) {
	if !hasVirtFlag([]byte("processor: 0\nflags\t\t: fpu vme vmx sse\n")) {
		t.Error("vmx not seen")
	}
	if hasVirtFlag([]byte("flags\t\t: fpu vme hypervisor sse\n")) {
		t.Error("no vmx/svm should mean no hardware virtualization")
	}
}

func TestQMPPathStaysShort(t *testing.T) {
	long := "/" + strings.Repeat("d", 150)
	if p := qmpPath(long); len(p) > 104 {
		t.Fatalf("socket path too long: %d", len(p))
	}
	if first, again := qmpPath(long), qmpPath(long); first != again {
		t.Fatal("short path must be stable")
	}
	if p := qmpPath("/short"); p != "/short/qmp.sock" {
		t.Fatalf("got %s", p)
	}
}

func TestVirtiofsdArgsMakeReadOnlyAHostSideMount(t *testing.T) {
	ro := VirtiofsdArgs("/usr/lib/qemu/virtiofsd", "/m/v.sock", "/src/my proj", "/m/v.log", false)
	if !slices.Equal(ro[:3], []string{"--mount", "--propagation", "private"}) {
		t.Fatalf("not in a private mount namespace: %q", ro)
	}
	script := ro[5]
	if !strings.Contains(script, `mount -o remount,bind,ro "$1"`) || !strings.Contains(script, `--socket-path="$3"`) {
		t.Fatalf("script: %s", script)
	}
	// Paths travel as positional arguments, never inside the script text.
	if got := ro[6:]; !slices.Equal(got, []string{"virtiofsd", "/src/my proj", "/usr/lib/qemu/virtiofsd", "/m/v.sock", "ro", "/m/v.log"}) {
		t.Fatalf("positional args %q", got)
	}
	if rw := VirtiofsdArgs("d", "s", "/src", "l", true); rw[len(rw)-2] != "rw" {
		t.Fatalf("writable: %q", rw)
	}
}

// A resumed machine's command line is the saved one's plus -incoming:
// anything else that differed would not load the state.
func TestResumeDiffersOnlyByIncoming(t *testing.T) {
	m := MachineArgs{Name: "p-1", Accel: AccelTCG, CPUs: 1, MemoryMiB: 1024, Disk: "/f/disk.qcow2", Seed: "/f/seed.iso",
		QMPSocket: "/f/qmp.sock", SerialLog: "/f/serial.log", PIDFile: "/f/qemu.pid", Restrict: true,
		Forwards: []Forward{{Port: 3128, Command: "x"}}}
	saved := SystemArgs(m)
	m.Incoming = true
	resumed := SystemArgs(m)
	if !slices.Equal(resumed[:len(saved)], saved) || !slices.Equal(resumed[len(saved):], []string{"-incoming", "defer"}) {
		t.Errorf("resumed args differ beyond -incoming:\n%q\n%q", saved, resumed)
	}
}

// A compaction's new process loads its state and stays stopped (-S):
// it must not run the guest while the old process may go on.
func TestStayPausedOnlyWithIncoming(t *testing.T) {
	m := MachineArgs{Name: "p-1", Accel: AccelTCG, CPUs: 1, MemoryMiB: 1024, Disk: "/f/disk.qcow2", Seed: "/f/seed.iso", QMPSocket: "/f/qmp.sock", SerialLog: "/f/serial.log", PIDFile: "/f/qemu.pid"}
	for _, c := range []struct {
		incoming, paused, stay, want bool
	}{
		{false, false, false, false}, {true, false, false, false}, {true, false, true, true},
		// A restore whose console logger must listen first still runs
		// once loaded; a boot so started is continued by the logger.
		{true, true, false, false}, {false, true, false, true},
	} {
		m.Incoming, m.Paused, m.StayPaused = c.incoming, c.paused, c.stay
		if got := slices.Contains(SystemArgs(m), "-S"); got != c.want {
			t.Errorf("incoming %v paused %v stay %v: -S %v, want %v", c.incoming, c.paused, c.stay, got, c.want)
		}
	}
}

// An arm64 machine: the virt board with UEFI from a read-only code flash,
// virtio on PCI like x86 (no IDE, no ISA serial), and no vmgenid (x86
// only in QEMU; the identity program reseeds clones itself).
func TestSystemArgsARM64(t *testing.T) {
	base := MachineArgs{Name: "p-1", Arch: vm.ARM64, Firmware: "/usr/share/AAVMF/AAVMF_CODE.fd", Accel: AccelTCG, CPUs: 2, MemoryMiB: 2048,
		Disk: "/f/disk.qcow2", Seed: "/f/seed.iso", QMPSocket: "/f/qmp.sock", GuestAgentSocket: "/f/qga.sock", SerialLog: "/f/serial.log", PIDFile: "/f/qemu.pid"}
	tests := []struct {
		name string
		edit func(*MachineArgs)
		flag string
		want []string
	}{
		{"tcg: virt with the newest GIC (GICv2 stops at 8 CPUs)", func(m *MachineArgs) {}, "-machine", []string{"virt,gic-version=max,memory-backend=mem"}},
		{"tcg: every emulated feature, cheap pointer authentication", func(m *MachineArgs) {}, "-cpu", []string{"max,pauth-impdef=on"}},
		{"kvm on an arm64 host: its own GIC and CPU", func(m *MachineArgs) { m.Accel = AccelKVM }, "-machine", []string{"virt,gic-version=host,memory-backend=mem"}},
		{"kvm cpu", func(m *MachineArgs) { m.Accel = AccelKVM }, "-cpu", []string{"host"}},
		{"firmware first, then the disk and the seed, all virtio", func(m *MachineArgs) {}, "-drive", []string{
			"if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/AAVMF/AAVMF_CODE.fd",
			"if=virtio,file=/f/disk.qcow2,format=qcow2,discard=unmap",
			"if=virtio,file=/f/seed.iso,format=raw,readonly=on"}},
		{"a comma in the firmware path cannot add options", func(m *MachineArgs) { m.Firmware = "/fw,readonly=off/code.fd" }, "-drive", []string{
			"if=pflash,format=raw,unit=0,readonly=on,file=/fw,,readonly=off/code.fd",
			"if=virtio,file=/f/disk.qcow2,format=qcow2,discard=unmap",
			"if=virtio,file=/f/seed.iso,format=raw,readonly=on"}},
		{"PCI devices, no vmgenid", func(m *MachineArgs) {}, "-device", []string{"virtio-net-pci,netdev=net0,romfile=", "virtio-rng-pci",
			"virtio-serial-pci,id=vser0", "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0"}},
		{"the kernel handed to the firmware", func(m *MachineArgs) {
			m.Kernel, m.Initrd, m.Append = "/i/vmlinuz", "/i/initrd.img", "root=UUID=x console=ttyAMA0"
		}, "-append", []string{"root=UUID=x console=ttyAMA0"}},
		{"serial is the board's PL011, to a file", func(m *MachineArgs) {}, "-serial", []string{"file:/f/serial.log"}},
		{"same network as x86", func(m *MachineArgs) { m.Restrict = true }, "-netdev", []string{"user,id=net0,hostfwd=tcp:127.0.0.1:0-:22,restrict=on,ipv6=off"}},
		{"warm template RAM in a file", func(m *MachineArgs) { m.MemoryFile, m.MemoryShared = "/t/memory", true }, "-object",
			[]string{"memory-backend-file,id=mem,size=2048M,mem-path=/t/memory,share=on"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := base
			tt.edit(&m)
			args := SystemArgs(m)
			if got := argAfter(args, tt.flag); !slices.Equal(got, tt.want) {
				t.Errorf("%s = %q, want %q", tt.flag, got, tt.want)
			}
			if slices.Contains(args, "vmgenid,guid=auto") || strings.Contains(strings.Join(args, " "), "q35") {
				t.Errorf("x86-only arguments in an arm64 machine: %q", args)
			}
		})
	}
}

// HVF on a Mac: the host's CPU, and on Apple Silicon the virt board with
// QEMU's default GIC (the one Hypervisor.framework offers). This path
// cannot run on the Linux machines the tests use; the arguments are
// checked here, the boot is not.
func TestSystemArgsHVF(t *testing.T) {
	m := MachineArgs{Name: "p-1", Accel: AccelHVF, CPUs: 4, MemoryMiB: 4096, Disk: "/f/disk.qcow2", Seed: "/f/seed.iso",
		QMPSocket: "/f/qmp.sock", GuestAgentSocket: "/f/qga.sock", SerialLog: "/f/serial.log", PIDFile: "/f/qemu.pid"}
	for _, tt := range []struct {
		arch          vm.Arch
		machine, cpu  string
		firmwareDrive bool
	}{
		{vm.AMD64, "q35,memory-backend=mem", "host", false},
		{vm.ARM64, "virt,memory-backend=mem", "host", true},
	} {
		m.Arch, m.Firmware = tt.arch, "/opt/homebrew/share/qemu/edk2-aarch64-code.fd"
		args := SystemArgs(m)
		if got := argAfter(args, "-accel"); !slices.Equal(got, []string{"hvf"}) {
			t.Errorf("%s: -accel %q", tt.arch, got)
		}
		if got := argAfter(args, "-machine"); !slices.Equal(got, []string{tt.machine}) {
			t.Errorf("%s: -machine %q, want %s", tt.arch, got, tt.machine)
		}
		if got := argAfter(args, "-cpu"); !slices.Equal(got, []string{tt.cpu}) {
			t.Errorf("%s: -cpu %q, want %s", tt.arch, got, tt.cpu)
		}
		hasFW := slices.Contains(argAfter(args, "-drive"), "if=pflash,format=raw,unit=0,readonly=on,file=/opt/homebrew/share/qemu/edk2-aarch64-code.fd")
		if hasFW != tt.firmwareDrive {
			t.Errorf("%s: firmware drive %v, want %v", tt.arch, hasFW, tt.firmwareDrive)
		}
	}
}

// The driver emulates any architecture but the host's, whatever its
// accelerator: KVM cannot run an aarch64 guest on an x86 host.
func TestDriverAcceleratesOnlyTheHostsArchitecture(t *testing.T) {
	d := &Driver{Accel: AccelKVM, Binary: "qemu-system-x86_64", ARM64Binary: "qemu-system-aarch64"}
	other := vm.ARM64
	if vm.HostArch() == vm.ARM64 {
		other = vm.AMD64
	}
	if got := d.accel(vm.HostArch()); got != AccelKVM {
		t.Errorf("host arch runs under %s", got)
	}
	if got := d.accel(other); got != AccelTCG {
		t.Errorf("%s runs under %s on a %s host", other, got, vm.HostArch())
	}
	if d.binary(vm.ARM64) != "qemu-system-aarch64" || d.binary("") != "qemu-system-x86_64" {
		t.Error("wrong emulator per architecture")
	}
}

func TestParseTCGCache(t *testing.T) {
	for _, c := range []struct {
		in   string
		want int
		ok   bool
	}{
		{"", 0, true}, {" 64 ", 64, true}, {"1", 1, true}, {"2048", 2048, true},
		{"0", 0, false}, {"-1", 0, false}, {"2049", 0, false}, {"64M", 0, false}, {"1e3", 0, false}, {"99999999999999999999", 0, false},
	} {
		got, err := ParseTCGCache(c.in)
		if got != c.want || (err == nil) != c.ok {
			t.Errorf("%q: %d %v", c.in, got, err)
		}
		if err != nil && !strings.Contains(err.Error(), TCGCacheEnv) {
			t.Errorf("%q: the error does not name the variable: %v", c.in, err)
		}
	}
}
