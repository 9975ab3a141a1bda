package fleet

import (
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"syscall"

	"github.com/agentfleet/agentfleet/internal/layout"
)

// A spawn holds the fleet lock and records its machines in the state file
// only once all are ready (so a failed spawn leaves the state untouched).
// Meanwhile it writes what it is making to spawning.json, so `fleet ls`
// shows those machines as creating, booting or syncing. The file names the
// spawn's pid: a spawn killed with SIGKILL leaves a file no one shows.

// spawningFile is written by the spawn, read by ls.
const spawningFile = layout.SpawningFile

// Phases of a machine being made.
const (
	PhaseCreating = "creating"
	PhaseBooting  = "booting"
	PhaseQueued   = "queued"
	PhaseSyncing  = "syncing"
	PhaseStarting = "starting agent"
)

type spawnProgress struct {
	mu     sync.Mutex
	path   string
	PID    int               `json:"pid"`
	Image  string            `json:"image"`
	Phases map[string]string `json:"phases"`
}

func newSpawnProgress(l Layout, fleet, image string, names []string) *spawnProgress {
	p := &spawnProgress{path: filepath.Join(l.FleetDir(fleet), spawningFile), PID: os.Getpid(), Image: image, Phases: map[string]string{}}
	for _, n := range names {
		p.Phases[n] = PhaseCreating
	}
	p.write()
	return p
}

func (p *spawnProgress) set(name, phase string) {
	p.mu.Lock()
	p.Phases[name] = phase
	p.mu.Unlock()
	p.write()
}

func (p *spawnProgress) write() {
	p.mu.Lock()
	defer p.mu.Unlock()
	b, _ := json.Marshal(p)
	_ = os.MkdirAll(filepath.Dir(p.path), 0o700)
	_ = WriteFileAtomic(p.path, b, 0o600)
}

func (p *spawnProgress) done() { _ = os.Remove(p.path) }

// machinesBeingMade lists what a running spawn is making, by name.
func machinesBeingMade(l Layout, fleet string) (image string, phases map[string]string, names []string) {
	b, err := os.ReadFile(filepath.Join(l.FleetDir(fleet), spawningFile))
	if err != nil {
		return "", nil, nil
	}
	var p spawnProgress
	if json.Unmarshal(b, &p) != nil || p.PID <= 0 || syscall.Kill(p.PID, 0) != nil {
		return "", nil, nil
	}
	for n := range p.Phases {
		names = append(names, n)
	}
	sort.Strings(names)
	return p.Image, p.Phases, names
}
