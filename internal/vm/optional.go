package vm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"
)

// What only some drivers can do is an interface of its own beside Driver.
// A driver implements one only if it can do all of it (no stubs); callers
// reach it through the helpers below, which answer ErrNotSupported, naming
// the driver, for one that cannot.

// ErrNotSupported is wrapped by every error that says the driver lacks an
// optional interface.
var ErrNotSupported = errors.New("not supported by this driver")

// Snapshotter saves a running machine's RAM and device state to a file and
// starts from it: suspend and resume, and warm templates. A driver that
// implements it says Capabilities.Snapshots.
type Snapshotter interface {
	// Suspend saves a running machine's state in its folder and ends its
	// process; the next Start resumes it where it was.
	Suspend(ctx context.Context, s Spec) error
	// Suspended reports whether the machine has saved state Start resumes.
	Suspended(s Spec) bool
	// DiscardSuspended drops that state: the next Start boots the disk.
	DiscardSuspended(s Spec) error
	// SaveState saves a running machine's state to path and ends its
	// process: what a warm template's clones start from.
	SaveState(ctx context.Context, s Spec, path string) error
	// StateKey names every fact of this host's hypervisor and of s that
	// saved state depends on (build, accelerator, machine and CPU model,
	// CPUs, memory, network shape): state saved under one key is only
	// restored under the same key.
	StateKey(ctx context.Context, s Spec) (string, error)
}

// Forker captures a running machine at one moment, as a template its
// clones restore (fork): the machine pauses only for the capture and then
// runs on. A driver that implements it also implements Snapshotter.
type Forker interface {
	// Capture pauses s, copies its disk and its RAM and device state into
	// dir (a template's files: Template{Disk, Memory, State} under dir),
	// and lets s go on. On failure s goes on and dir is removed. The disk
	// is on disk when it returns; the memory and state files may still be
	// in the host's cache only (a fork's children restore them at once and
	// a machine that starts again boots from its disk), so a caller that
	// keeps them for later boots syncs them (SyncTemplate).
	Capture(ctx context.Context, s Spec, dir string) (Captured, error)
}

// Captured is what a capture measured.
type Captured struct {
	Template Template
	// Paused is how long the source stood still.
	Paused time.Duration
	// RAMBytes is the guest RAM written to the capture (zero pages are
	// holes).
	RAMBytes int64
}

// Capture captures s with d, or says d cannot.
func Capture(ctx context.Context, d Driver, s Spec, dir string) (Captured, error) {
	f, ok := d.(Forker)
	if !ok {
		return Captured{}, fmt.Errorf("the %s driver cannot capture a running machine (%w): it restores no saved state", d.Name(), ErrNotSupported)
	}
	return f.Capture(ctx, s, dir)
}

// Compactor moves a running machine into a fresh hypervisor process
// that holds only what the machine needs now: what the old process built
// up for itself (under emulation, the code it translated; its heap) is
// given back, and of the guest's RAM only the pages it wrote since its
// template are the new process's own. The machine stands still for about
// a second and goes on where it was; its SSH port and host key stay.
type Compactor interface {
	// Compact moves s into a new process. It refuses (ErrBusy) while s
	// has a TCP connection open through its user-mode network, which the
	// move would cut. On failure s goes on in its old process.
	Compact(ctx context.Context, s Spec) (Compacted, error)
}

// ErrBusy is wrapped by Compact's refusal of a machine with open
// connections: try again later.
var ErrBusy = errors.New("it has connections open")

// Compacted is what a compaction measured.
type Compacted struct {
	PID    int           // the new process
	Paused time.Duration // how long the machine stood still
	// KeptBytes is the guest RAM carried over as the machine's own: the
	// pages it had written since its template.
	KeptBytes int64
}

// Compact compacts s with d, or says d cannot.
func Compact(ctx context.Context, d Driver, s Spec) (Compacted, error) {
	c, ok := d.(Compactor)
	if !ok {
		return Compacted{}, fmt.Errorf("the %s driver cannot compact a machine (%w): its machines' memory is the hypervisor's", d.Name(), ErrNotSupported)
	}
	return c.Compact(ctx, s)
}

// SyncTemplate writes a template's memory and state files to disk.
func SyncTemplate(t Template) error {
	for _, path := range []string{t.Memory, t.State} {
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		err = f.Sync()
		f.Close()
		if err != nil {
			return fmt.Errorf("sync %s: %w", path, err)
		}
	}
	return nil
}

// LinkSetter brings a running machine's network link up or down (a
// machine restored Offline).
type LinkSetter interface {
	SetLink(ctx context.Context, s Spec, up bool) error
}

// SetLink sets s's network link with d, or says d cannot.
func SetLink(ctx context.Context, d Driver, s Spec, up bool) error {
	l, ok := d.(LinkSetter)
	if !ok {
		return fmt.Errorf("the %s driver cannot set a machine's network link: %w", d.Name(), ErrNotSupported)
	}
	return l.SetLink(ctx, s, up)
}

// GuestAgent runs commands in a guest over a host-only channel (no
// network), for identity after a restore.
type GuestAgent interface {
	// GuestRun runs a shell script as root in the guest and returns its
	// output; a non-zero exit is an error.
	GuestRun(ctx context.Context, s Spec, script string) (string, error)
}

// ArchValidator is implemented by drivers that run several architectures:
// it checks what one needs on this host (its emulator, its firmware)
// before anything is made.
type ArchValidator interface {
	ValidateArch(ctx context.Context, arch Arch) error
}

// ShareValidator is implemented by drivers with SharedFolders: it checks
// what a share needs on this host before anything is made.
type ShareValidator interface {
	ValidateShare(s *Share) error
}

// MemoryReporter reads how much host memory a running machine's
// hypervisor process holds, and how much of it is shared.
type MemoryReporter interface {
	// HostMemory answers for a running machine; for any other it is an
	// error.
	HostMemory(s Spec) (HostMemory, error)
}

// HostMemory is a running machine's resident host memory in bytes.
// Unique and Shared together are all of it; the rest break them down.
type HostMemory struct {
	// Unique is what this machine alone holds: freed when it stops.
	Unique uint64 `json:"unique_bytes"`
	// Shared is what other processes map too (the template's RAM, the
	// hypervisor's program and libraries).
	Shared uint64 `json:"shared_bytes"`
	// TemplateShared is the part of Shared that is the warm template's
	// RAM, shared copy-on-write with the template's other clones.
	TemplateShared uint64 `json:"template_shared_bytes"`
	// GuestWritten is the template RAM the guest wrote since its restore:
	// its own copies, part of Unique.
	GuestWritten uint64 `json:"guest_written_bytes"`
	// Hypervisor is the hypervisor's own anonymous memory (its heap; under
	// emulation mostly the translation cache), part of Unique.
	Hypervisor uint64 `json:"hypervisor_bytes"`
	// Swapped is this machine's share of its pages in swap, in neither
	// Unique nor Shared.
	Swapped uint64 `json:"swapped_bytes,omitempty"`
}

// HostChecker reports what the driver needs of this host (its programs,
// their versions, firmware, accelerator) for `fleet doctor`.
type HostChecker interface {
	HostChecks(ctx context.Context) []HostCheck
}

// HostCheck is one finding about the host.
type HostCheck struct {
	Name   string
	Status CheckStatus
	Detail string
	// Hint, if set, says how to fix it (an install command).
	Hint string
}

// CheckStatus grades a HostCheck.
type CheckStatus string

const (
	CheckOK   CheckStatus = "ok"
	CheckWarn CheckStatus = "warn" // works, slower or with less
	CheckFail CheckStatus = "fail" // the driver cannot run here
)

// Snapshots returns d's Snapshotter, or an error wrapping ErrNotSupported.
func Snapshots(d Driver) (Snapshotter, error) {
	if sn, ok := d.(Snapshotter); ok {
		return sn, nil
	}
	return nil, fmt.Errorf("the %s driver cannot save machine state: %w", d.Name(), ErrNotSupported)
}

// Guest returns d's GuestAgent, or an error wrapping ErrNotSupported.
func Guest(d Driver) (GuestAgent, error) {
	if g, ok := d.(GuestAgent); ok {
		return g, nil
	}
	return nil, fmt.Errorf("the %s driver has no guest channel: %w", d.Name(), ErrNotSupported)
}

// HostMemoryOf is the host memory of s, running on d
// (MemoryReporter.HostMemory).
func HostMemoryOf(d Driver, s Spec) (HostMemory, error) {
	if mr, ok := d.(MemoryReporter); ok {
		return mr.HostMemory(s)
	}
	return HostMemory{}, fmt.Errorf("the %s driver cannot measure a machine's host memory: %w", d.Name(), ErrNotSupported)
}

// Suspend suspends s on d (Snapshotter.Suspend).
func Suspend(ctx context.Context, d Driver, s Spec) error {
	sn, err := Snapshots(d)
	if err != nil {
		return err
	}
	return sn.Suspend(ctx, s)
}

// Suspended says whether s has saved state on d: never, on a driver
// that cannot save any.
func Suspended(d Driver, s Spec) bool {
	sn, ok := d.(Snapshotter)
	return ok && sn.Suspended(s)
}

// DiscardSuspended drops s's saved state on d; a driver that cannot save
// any has nothing to drop.
func DiscardSuspended(d Driver, s Spec) error {
	if sn, ok := d.(Snapshotter); ok {
		return sn.DiscardSuspended(s)
	}
	return nil
}

// SaveState saves s's state on d to path (Snapshotter.SaveState).
func SaveState(ctx context.Context, d Driver, s Spec, path string) error {
	sn, err := Snapshots(d)
	if err != nil {
		return err
	}
	return sn.SaveState(ctx, s, path)
}

// StateKey is what state saved from s on d depends on
// (Snapshotter.StateKey).
func StateKey(ctx context.Context, d Driver, s Spec) (string, error) {
	sn, err := Snapshots(d)
	if err != nil {
		return "", err
	}
	return sn.StateKey(ctx, s)
}

// HostChecks are d's checks of this host, none if it has none.
func HostChecks(ctx context.Context, d Driver) []HostCheck {
	if hc, ok := d.(HostChecker); ok {
		return hc.HostChecks(ctx)
	}
	return nil
}

// Scheduled is a driver whose machines are jobs of a batch scheduler
// (Slurm): the scheduler places, queues and ends them, and this says what
// it decided. Start of such a machine returns an error wrapping ErrQueued
// while its job waits longer than Spec.QueueWait.
type Scheduled interface {
	Placement(ctx context.Context, s Spec) (Placement, error)
}

// Placement is where a scheduler put a machine, in its own words.
type Placement struct {
	Job    string `json:"job,omitempty"`       // the scheduler's job id ("": none submitted)
	Node   string `json:"node,omitempty"`      // where it runs ("" while queued)
	State  string `json:"job_state,omitempty"` // the scheduler's word, e.g. RUNNING, PENDING, TIMEOUT
	Reason string `json:"reason,omitempty"`    // why it waits or ended, e.g. Resources
	// Queued: the job waits to run. Ended: the scheduler ended it, and
	// Phrase says why ("time limit reached", "cancelled outside fleet").
	Queued bool   `json:"queued,omitempty"`
	Ended  bool   `json:"ended,omitempty"`
	Phrase string `json:"phrase,omitempty"`
}

// ErrQueued is wrapped by Start's error for a machine whose job still
// waits in a scheduler's queue: it was submitted, not refused.
var ErrQueued = errors.New("queued")

// PlacementOf is d's placement of s; ok is false for drivers that run
// machines on this host.
func PlacementOf(ctx context.Context, d Driver, s Spec) (p Placement, ok bool, err error) {
	sd, ok := d.(Scheduled)
	if !ok {
		return Placement{}, false, nil
	}
	p, err = sd.Placement(ctx, s)
	return p, true, err
}

// HostWarmer is a driver whose machines run on other hosts that keep warm
// templates of their own (a cluster's nodes): its Start honours
// Spec.HostWarm, and a machine it restores there has its Seed's identity
// (randomness, machine-id, hostname, host key, network settings) before
// Start returns.
type HostWarmer interface {
	WarmsOnHost() bool
}

// WarmsOnHost says whether d restores machines from templates on their
// hosts.
func WarmsOnHost(d Driver) bool {
	h, ok := d.(HostWarmer)
	return ok && h.WarmsOnHost()
}

// HostPrebuilder is a HostWarmer that saves a running machine, once the
// project came in and its setup ran, as the prebuild of key on the host
// it runs on; later machines asking for that key (Spec.HostPrebuild)
// and landing there restore from it. It says which host, and how it went.
type HostPrebuilder interface {
	SaveHostPrebuild(ctx context.Context, s Spec, key string, info PrebuildInfo) (host, note string, err error)
}

// PrebuildInfo is what a prebuild records about itself besides its key,
// for the people listing it.
type PrebuildInfo struct {
	Project      string   `json:"project"`
	Setup        []string `json:"setup"`
	Inputs       []string `json:"inputs,omitempty"`
	InputsDigest string   `json:"inputs_digest,omitempty"`
	SetupSec     float64  `json:"setup_sec,omitempty"`
	Commit       string   `json:"commit,omitempty"`
}

// SaveHostPrebuild saves s as its host's prebuild of key with d, or says
// d cannot.
func SaveHostPrebuild(ctx context.Context, d Driver, s Spec, key string, info PrebuildInfo) (host, note string, err error) {
	h, ok := d.(HostPrebuilder)
	if !ok || !WarmsOnHost(d) {
		return "", "", fmt.Errorf("the %s driver keeps no prebuilds on the hosts its machines run on: %w", d.Name(), ErrNotSupported)
	}
	return h.SaveHostPrebuild(ctx, s, key, info)
}

// RemoteFolder is a driver whose machines run on another host, where a
// copy of the machine folder's proxy files lives: the controller pushes
// the files it changes there (policy, budget) and pulls those the
// proxies write (audit log, meter) before it reads them.
type RemoteFolder interface {
	PushFiles(ctx context.Context, s Spec, names []string) error
	PullFiles(ctx context.Context, s Spec, names []string) error
}

// PushFiles copies s.Dir's named files to where s runs; a no-op for a
// machine on this host.
func PushFiles(ctx context.Context, d Driver, s Spec, names ...string) error {
	if rf, ok := d.(RemoteFolder); ok {
		return rf.PushFiles(ctx, s, names)
	}
	return nil
}

// PullFiles copies the named files of where s runs into s.Dir; a no-op
// for a machine on this host.
func PullFiles(ctx context.Context, d Driver, s Spec, names ...string) error {
	if rf, ok := d.(RemoteFolder); ok {
		return rf.PullFiles(ctx, s, names)
	}
	return nil
}
