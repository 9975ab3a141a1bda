package fleet

import (
	"fmt"
	"time"

	"github.com/agentfleet/agentfleet/internal/vm"
)

// MaxMachines bounds one fleet: far above what a workstation runs, low
// enough that a typo (spawn 100000) is refused before anything is made.
const MaxMachines = 64

// SpawnRequest is what the user asked spawn for.
type SpawnRequest struct {
	Fleet     string
	Count     int
	Image     ImageRef
	CPUs      int
	MemoryMiB int
	Force     bool // skip the free-memory check
	Workspace WorkspaceRequest
	// Network is the egress and credential setup; the zero value is open
	// networking with credentials forwarded into sessions.
	Network NetworkRequest
	// Sessions[i], if present, starts an agent on the i-th new machine as
	// soon as it is ready; a session that cannot start fails the spawn.
	Sessions []SessionRequest
	// Warm says whether machines are restored from the image's warm
	// template instead of booted, where the machine allows.
	Warm WarmMode
	// Arch, if set, is the architecture the user asked for (--arch): it
	// must be the image's, and it is the consent to emulate one the host
	// cannot accelerate.
	Arch vm.Arch
	// IdleSuspend, if set, parks each machine once its agent has waited
	// for input or been done this long (fleet.hcl's idle_suspend,
	// --idle-suspend).
	IdleSuspend time.Duration
	// Project is the project's fleet.hcl: with setup commands, machines
	// restore from its prebuild (made first if there is none) unless
	// NoPrebuild, and do not run the setup again.
	Project    *Project
	NoPrebuild bool
	// WaitQueued: on a batch scheduler, spawn waits for the machines
	// still queued after queueGrace, instead of leaving them to start
	// when the scheduler runs them.
	WaitQueued bool
}

// WarmMode is how a spawn uses warm templates.
type WarmMode string

const (
	// WarmAuto (the default) restores from the template of the machines'
	// shape, making it first (one cold boot) if there is none.
	WarmAuto WarmMode = ""
	// WarmExisting restores only from a template that already exists
	// (--no-warm): it never spends a boot on making one.
	WarmExisting WarmMode = "existing"
	// WarmNever boots every machine from its disk (--cold).
	WarmNever WarmMode = "never"
)

// ImageRef is a resolved base image.
type ImageRef struct {
	Name, Version string
	Disk          string // path to the read-only base disk
	DiskSHA256    string // its digest, for drivers that copy it elsewhere ("" for an export)
	Recipe        string // what it was baked with: whether it can be warmed
	Boot          *vm.DirectBoot
	Arch          vm.Arch // the guest's architecture ("" is amd64)
}

func (r ImageRef) String() string { return r.Name + "@" + r.Version }

// PlannedMachine is one machine spawn will make.
type PlannedMachine struct {
	Name  string
	Index int
	Dir   string
}

// Plan decides names and folders for a spawn. It is pure: it reads the
// current state and the request and touches nothing, so it can be tested
// and so bad input is refused before anything is created.
func Plan(cur *State, req SpawnRequest, l Layout) ([]PlannedMachine, error) {
	if err := ValidateFleetName(req.Fleet); err != nil {
		return nil, err
	}
	if req.Count < 1 {
		return nil, fmt.Errorf("machine count must be at least 1, got %d", req.Count)
	}
	if len(cur.Machines)+req.Count > MaxMachines {
		return nil, fmt.Errorf("a fleet holds at most %d machines; %s has %d, asked for %d more", MaxMachines, req.Fleet, len(cur.Machines), req.Count)
	}
	if req.CPUs < 1 || req.CPUs > 64 {
		return nil, fmt.Errorf("cpus must be 1-64, got %d", req.CPUs)
	}
	if req.MemoryMiB < 256 {
		return nil, fmt.Errorf("memory must be at least 256M, got %dM", req.MemoryMiB)
	}
	next := 1
	for _, m := range cur.Machines {
		if m.Index >= next {
			next = m.Index + 1
		}
	}
	out := make([]PlannedMachine, 0, req.Count)
	for i := 0; i < req.Count; i++ {
		idx := next + i
		name := fmt.Sprintf("%s-%d", req.Fleet, idx)
		out = append(out, PlannedMachine{Name: name, Index: idx, Dir: l.MachineDir(req.Fleet, name)})
	}
	return out, nil
}
