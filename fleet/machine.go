package fleet

// The machine record: what the state file says of each machine, and the
// words its fields use. It depends on no feature file of this package;
// every feature reads and writes it.

import (
	"fmt"
	"time"

	"github.com/agentfleet/agentfleet/internal/egress"
	"github.com/agentfleet/agentfleet/internal/session"
	"github.com/agentfleet/agentfleet/internal/vm"
)

// Desired is what the user last asked a machine to be.
type Desired string

const (
	WantRunning Desired = "running"
	WantStopped Desired = "stopped"
	// WantSuspended: its memory is saved in its folder; start resumes it.
	WantSuspended Desired = "suspended"
)

// Machine is one VM's record in the fleet's state file.
type Machine struct {
	Name      string `json:"name"`
	Index     int    `json:"index"`
	Image     string `json:"image"`      // name@version
	BaseImage string `json:"base_image"` // path of the disk the clone links to
	// BaseImageSHA256 is the image disk's digest, which a driver copying
	// it to a node checks the copy against.
	BaseImageSHA256 string `json:"base_image_sha256,omitempty"`
	// Boot is the image's kernel, started directly, if it has one.
	Boot *vm.DirectBoot `json:"boot,omitempty"`
	// Arch is the guest's architecture; "" in state from before it was
	// recorded (amd64).
	Arch       vm.Arch    `json:"arch,omitempty"`
	CPUs       int        `json:"cpus"`
	MemoryMiB  int        `json:"memory_mib"`
	Dir        string     `json:"dir"`
	HostKey    string     `json:"host_key"` // pinned ed25519 public key (authorized_keys form)
	InstanceID string     `json:"instance_id"`
	Desired    Desired    `json:"desired"`
	SSHAddr    string     `json:"ssh_addr,omitempty"`
	PID        int        `json:"pid,omitempty"`
	CreatedAt  time.Time  `json:"created_at"`
	StartedAt  time.Time  `json:"started_at,omitempty"`
	Workspace  *Workspace `json:"workspace,omitempty"`
	Network    *Network   `json:"network,omitempty"` // nil: open, as before egress control
	// ForkOf names the machine this one was forked from (fleet fork).
	ForkOf string `json:"fork_of,omitempty"`
	// HostWarm is whether its driver restores it from a warm template on
	// the host it lands on (a Slurm node's), kept for a queued machine's
	// later start.
	HostWarm vm.HostWarm `json:"host_warm,omitempty"`
	// Prebuild is the prebuild it was restored from (its folder, or
	// hostPrebuildMark and the key's hash for one on the host it runs on):
	// the project's setup already ran in it.
	Prebuild string `json:"prebuild,omitempty"`
	// PrebuildCommit is the commit its prebuild's workspace holds (git
	// mode): its workspace is brought in as only what came after it.
	PrebuildCommit string `json:"prebuild_commit,omitempty"`
	// HostPrebuild is the key of the project's prebuild its driver
	// restores it from where the host it lands on holds one (with
	// HostWarm), kept for a queued machine's later start.
	HostPrebuild string `json:"host_prebuild,omitempty"`
	// IdleSuspendSec, if set, is how long its agent may wait for input or
	// be done before the fleet's idle parker suspends the machine.
	IdleSuspendSec int `json:"idle_suspend_sec,omitempty"`
	// SuspendReason is why the idle parker suspended it ("" for a user's
	// suspend, or while it runs); start and resume clear it.
	SuspendReason string `json:"suspend_reason,omitempty"`
	// Queued: its job waited in the scheduler's queue when spawn ended;
	// the start that finds it running brings the project in (queue.go).
	Queued bool `json:"queued,omitempty"`
	// QueuedTask is the agent session spawn --task asked for on a machine
	// it left queued (--wait-queued=false): the start that brings the
	// project in starts it, then clears it.
	QueuedTask *QueuedTask `json:"queued_task,omitempty"`
}

// QueuedTask is a SessionRequest kept in the state file until its machine
// runs: the task and how to run it, never a credential (the session reads
// those from its own environment when it starts).
type QueuedTask struct {
	Task    []byte          `json:"task"`
	Profile session.Profile `json:"profile"`
	Setup   []string        `json:"setup,omitempty"`
}

// IdleSuspend is how long m's agent may be idle before m is parked (0:
// never).
func (m *Machine) IdleSuspend() time.Duration { return time.Duration(m.IdleSuspendSec) * time.Second }

// Parked says m is suspended because its agent was idle, not by the
// user: commands that use it resume it without being asked.
func (m *Machine) Parked() bool { return m.Desired == WantSuspended && m.SuspendReason != "" }

// State is a fleet's state file.
type State struct {
	Version  int        `json:"version"`
	Fleet    string     `json:"fleet"`
	Driver   string     `json:"driver"`
	Machines []*Machine `json:"machines"`
}

const stateVersion = 1

// Find returns the machine called name, or nil.
func (s *State) Find(name string) *Machine {
	for _, m := range s.Machines {
		if m.Name == name {
			return m
		}
	}
	return nil
}

// Remove drops the machine called name.
func (s *State) Remove(name string) {
	out := s.Machines[:0]
	for _, m := range s.Machines {
		if m.Name != name {
			out = append(out, m)
		}
	}
	s.Machines = out
}

// SyncMode is how a project reaches its VMs.
type SyncMode string

const (
	SyncGit    SyncMode = "git"    // a clone on branch fleet/<vm>; results come back as branches
	SyncRsync  SyncMode = "rsync"  // one way in; results into a separate folder on collect
	SyncShared SyncMode = "shared" // a live shared folder
	SyncNone   SyncMode = "none"
)

// ParseSyncMode checks a --sync value.
func ParseSyncMode(s string) (SyncMode, error) {
	switch m := SyncMode(s); m {
	case SyncGit, SyncRsync, SyncShared, SyncNone:
		return m, nil
	}
	return "", fmt.Errorf("unknown sync mode %q (modes: git, rsync, shared, none)", s)
}

// Workspace is a machine's project record.
type Workspace struct {
	Mode   SyncMode `json:"mode"`
	Source string   `json:"source"`          // host folder (a repository's top level in git mode)
	Base   string   `json:"base,omitempty"`  // host HEAD at spawn (git)
	Start  string   `json:"start,omitempty"` // commit the VM's branch started from (git)
	// ForkPoint is where a fork's child started: its diff shows what it
	// did after it; Start stays its source's, so flagged files, collect
	// and apply count the source's work before the fork too.
	ForkPoint string   `json:"fork_point,omitempty"`
	Branch    string   `json:"branch,omitempty"`
	Excludes  []string `json:"excludes,omitempty"` // rsync
	Writable  bool     `json:"writable,omitempty"` // shared

	Collected *Collected `json:"collected,omitempty"`
	// PendingAtStop is what a graceful stop saw: whether the VM had work
	// not yet collected (nil: unknown, e.g. the machine died).
	PendingAtStop *bool `json:"pending_at_stop,omitempty"`
}

// Collected is the VM state the last collect brought to the host.
type Collected struct {
	Head string    `json:"head,omitempty"` // git: the VM's HEAD
	Tree string    `json:"tree,omitempty"` // git: its working tree
	Tip  string    `json:"tip,omitempty"`  // git: what the host branch points at
	Into string    `json:"into,omitempty"` // rsync: the results folder
	At   time.Time `json:"at"`
}

// CredentialsMode says how a model credential reaches an agent.
type CredentialsMode string

const (
	// CredentialsProxy (the default) gives the guest a per-VM token and the
	// credential proxy's address; the real key stays on the host.
	CredentialsProxy CredentialsMode = "proxy"
	// CredentialsEnv forwards the host's key into the agent session's
	// environment (never the disk or a command line).
	CredentialsEnv CredentialsMode = "env"
	// CredentialsNone gives the guest no credential at all.
	CredentialsNone CredentialsMode = "none"
)

// ParseCredentialsMode checks a --credentials value.
func ParseCredentialsMode(s string) (CredentialsMode, error) {
	switch m := CredentialsMode(s); m {
	case CredentialsProxy, CredentialsEnv, CredentialsNone:
		return m, nil
	}
	return "", fmt.Errorf("unknown credentials mode %q (want proxy, env or none)", s)
}

// Network is a machine's record of its egress and credentials. The policy
// itself lives in the machine folder (egress.json), where `fleet net allow`
// changes it and the proxy rereads it.
type Network struct {
	Egress            egress.Mode     `json:"egress"`
	Credentials       CredentialsMode `json:"credentials"`
	CredentialCommand string          `json:"credential_command,omitempty"`
}

// Machine states shown by ls.
const (
	StateRunning   = "running"
	StateStopped   = "stopped"
	StateDead      = "dead"      // should run, but its hypervisor process is gone
	StateSuspended = "suspended" // its memory saved to disk, no process
	// On a batch scheduler (Slurm), with the scheduler's reason after it:
	StateQueued   = "queued"   // its job waits to run: "queued (Resources)"
	StateStarting = "starting" // its job runs; the start that waited for it brings it up
	StateLost     = "lost"     // the scheduler ended its job (time limit, preemption, scancel): "lost: time limit reached"
)

// StatePaused is a machine whose hypervisor runs but whose guest does not.
const StatePaused = "paused"

// GuestUser is the unprivileged login (with passwordless sudo) in every VM.
const GuestUser = "agent"

// orNoReason is a scheduler's reason as shown ("" is none given).
func orNoReason(r string) string {
	if r == "" {
		return "no reason given"
	}
	return r
}
