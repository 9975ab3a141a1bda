// Package vm defines the small runtime interface every hypervisor driver
// implements (qemu/ today, virtualbox/ next) and what they share: the
// per-machine spec and the cloud-init identity seed.
//
// A driver is stateless: everything it knows about a machine lives in
// Spec.Dir, a folder the driver owns. The fleet controller owns intent
// (should this machine be running?) and records it in its state file.
package vm

import (
	"context"
	"errors"
	"time"
)

// Power is what a driver observes about a machine's process.
type Power string

const (
	PowerOn  Power = "on"  // the hypervisor process runs the guest
	PowerOff Power = "off" // no hypervisor process for this machine
)

// Spec is everything a driver needs to make and run one machine.
type Spec struct {
	Name      string // unique on this host, e.g. "myproj-2"
	Dir       string // folder the driver owns for this machine
	BaseImage string // path to the read-only base disk the clone links to
	// Arch is the guest's architecture ("" is amd64). A driver runs one
	// of another architecture than the host's under emulation.
	Arch      Arch
	CPUs      int
	MemoryMiB int
	Seed      Seed
	// Share, if set, is a host folder the guest can mount with tag
	// Capabilities.ShareTag (Capabilities.SharedFolders).
	Share *Share
	// Network is how the guest reaches out; the zero value is open.
	Network Network
	// Template, if set, is a warm template to clone instead of BaseImage:
	// Create links the disk to Template.Disk, and the first Start restores
	// Template.State instead of booting.
	Template *Template
	// MemoryFile, if set, is a file the guest's RAM lives in while it
	// runs: a machine that will become a warm template keeps it there, so
	// that SaveState saves only its devices and clones map the file.
	MemoryFile string
	// Boot, if set, is the image's kernel, started directly (no firmware
	// boot menu, no boot loader reading the kernel through the BIOS: ten
	// seconds under emulation). Drivers that cannot do that boot the
	// disk's own boot loader, which starts the same kernel.
	Boot *DirectBoot
	// Offline, on a restore from Template, starts the guest with its
	// network link down: a fork's child runs its source's processes at
	// once, and must not reach the network before it has its own
	// identity (a LinkSetter brings the link up).
	Offline bool
	// BaseImageSHA256 is BaseImage's digest, when known: a driver that
	// copies the image to another host checks the copy against it.
	BaseImageSHA256 string
	// QueueWait bounds how long Start waits for a batch scheduler to run
	// a queued machine before it returns ErrQueued (0: as long as ctx).
	QueueWait time.Duration
	// HostWarm asks a HostWarmer (a driver whose machines run on other
	// hosts) to restore the machine from a warm template kept on the
	// host it lands on, instead of booting its image. Others ignore it.
	HostWarm HostWarm
	// HostPrebuild, with HostWarm on, asks a HostWarmer to restore the
	// machine from the project's prebuild of this key on the host it
	// lands on, when that host holds one (Runtime.Prebuilt says so).
	HostPrebuild string
}

// HostWarm is whether a machine on another host is restored from that
// host's own warm template of its shape.
type HostWarm int

const (
	HostWarmOff      HostWarm = iota // boot the image
	HostWarmExisting                 // restore from the host's template if it has one, else boot
	HostWarmMake                     // restore, making the host's template first if it has none
)

// DirectBoot is a kernel, its initrd and its command line, taken from the
// image when it was baked.
type DirectBoot struct {
	Kernel  string `json:"kernel"`
	Initrd  string `json:"initrd"`
	Cmdline string `json:"cmdline"`
}

// Template is a machine saved booted and anonymous: its frozen disk, its
// RAM (a file each clone maps copy-on-write) and its device state.
type Template struct {
	Disk   string
	Memory string
	State  string
}

// Network is a machine's way out. Restrict cuts every route from the guest;
// it then reaches only the Forwards, host programs the driver starts per
// guest connection with the connection on stdin and stdout.
type Network struct {
	Restrict bool
	Forwards []Forward
	// Env is added to the hypervisor's environment, which the forward
	// programs inherit: how a host secret reaches a proxy without a file or
	// a command line.
	Env []string
}

// Forward is a host program the guest reaches at the driver's
// Capabilities.ForwardIP and GuestPort.
type Forward struct {
	GuestPort int
	Command   []string
}

// Share is a host folder shared live with the guest.
type Share struct {
	HostDir  string
	Writable bool // otherwise the host side refuses every write
}

// Runtime is how to reach a running machine.
type Runtime struct {
	SSHAddr string // host:port forwarded to the guest's sshd
	PID     int    // hypervisor process, 0 if not applicable
	// Note is how the machine came up when the user should hear it and
	// the controller cannot tell (a node's warm restore, or why it
	// booted instead), "" otherwise.
	Note string
	// Prebuilt: a HostWarmer restored it from its host's prebuild of
	// Spec.HostPrebuild, so the project's setup already ran in it.
	Prebuilt bool
}

// Status is a driver's view of a machine.
type Status struct {
	Power   Power
	Runtime Runtime // valid when Power is PowerOn
	// Paused, when the process runs but the guest does not, says why
	// (PausedDiskFull, or the hypervisor's own word); Start continues it.
	Paused string
}

// PausedDiskFull is a guest stopped because a write to its disk failed:
// the host file system holding the disk is full.
const PausedDiskFull = "disk full"

// Capabilities are a driver's features and facts, stated as data rather
// than discovered by calling methods that fail, or asked of the driver's
// name.
type Capabilities struct {
	// ImageFormat is the image output the driver boots: one of
	// ImageFormats.
	ImageFormat string
	// BootTimeout bounds waiting for a started guest's SSH.
	BootTimeout time.Duration
	// EmulatedBootTimeout, if longer, bounds it instead for guests of
	// another architecture than the host's, which always run emulated.
	EmulatedBootTimeout time.Duration
	// Snapshots means the driver can save a running machine's RAM and
	// device state to a file and start from it (suspend and resume): it
	// implements Snapshotter.
	Snapshots    bool
	LinkedClones bool // Create is a copy-on-write clone, not a full copy
	// SerializeRegistry means Create/Delete must not run concurrently
	// (VirtualBox's registry); the driver serializes them itself.
	SerializeRegistry bool
	// SharedFolders means the driver can share a host folder at
	// /workspace (--sync shared).
	SharedFolders bool
	// ShareFS is the guest file system type that mounts the share
	// (virtiofs, vboxsf), ShareTag the name the guest mounts it by, and
	// ShareMountOptions what the guest's mount needs besides ro or rw,
	// which the controller adds (a shell word list, expanded in the
	// guest). All three are empty without SharedFolders.
	ShareFS           string
	ShareTag          string
	ShareMountOptions string
	// ForwardIP is the guest-side address of Network.Forwards, "" if the
	// driver cannot restrict the guest's network (so egress control would
	// be a lie and is refused).
	ForwardIP string
	// Arches are the guest architectures the driver runs (nil: amd64).
	Arches []Arch
	// Accelerated means guests of the host's own architecture run under a
	// hardware accelerator here, so any other would be emulated: many
	// times slower, which spawn asks the user to confirm.
	Accelerated bool
}

// ImageFormats are the image outputs a driver may boot: the baked qcow2
// disk, or a VirtualBox OVA exported from it.
var ImageFormats = []string{"qcow2", "ova"}

// BootTimeoutFor is how long a guest of arch may take to answer SSH.
func (c Capabilities) BootTimeoutFor(arch Arch) time.Duration {
	if arch.Or() != HostArch() && c.EmulatedBootTimeout > c.BootTimeout {
		return c.EmulatedBootTimeout
	}
	return c.BootTimeout
}

// Runs says whether the driver runs guests of arch.
func (c Capabilities) Runs(arch Arch) bool {
	if len(c.Arches) == 0 {
		return arch.Or() == AMD64
	}
	for _, a := range c.Arches {
		if a == arch.Or() {
			return true
		}
	}
	return false
}

// Driver makes, runs and removes machines on one hypervisor: the lifecycle
// every driver has. What only some can do is an optional interface beside
// it (optional.go); facts are in Capabilities.
type Driver interface {
	Name() string
	Capabilities() Capabilities
	// Validate checks that the hypervisor's programs are installed, so a
	// spawn fails before it makes anything rather than rolling back.
	Validate(ctx context.Context) error
	// Create makes the machine's disk (a linked clone of Spec.BaseImage) and
	// identity seed. It does not boot it.
	Create(ctx context.Context, s Spec) error
	// Start boots a created machine and returns how to reach it. It returns
	// once the hypervisor runs; the guest may still be booting. A paused
	// machine is continued.
	Start(ctx context.Context, s Spec) (Runtime, error)
	// Stop asks the guest to power off and waits up to grace, then forces it.
	Stop(ctx context.Context, s Spec, grace time.Duration) error
	// Status reports whether the machine's process runs.
	Status(ctx context.Context, s Spec) (Status, error)
	// Delete forces the machine off and removes everything Create made.
	// Deleting a machine that does not exist is not an error.
	Delete(ctx context.Context, s Spec) error
}

// ErrNotCreated is returned by Start for a machine whose disk is missing.
var ErrNotCreated = errors.New("machine has not been created")
