package layout

import (
	"fmt"
	"os"
	"path/filepath"
)

// Home returns FLEET_HOME, the root of all state, images and caches:
// $FLEET_HOME, else $XDG_DATA_HOME/agentfleet, else
// ~/.local/share/agentfleet.
func Home() (string, error) {
	if h := os.Getenv("FLEET_HOME"); h != "" {
		return filepath.Abs(h)
	}
	if x := os.Getenv("XDG_DATA_HOME"); x != "" {
		return filepath.Join(x, "agentfleet"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("cannot find a home for fleet state (set FLEET_HOME): %w", err)
	}
	return filepath.Join(home, ".local", "share", "agentfleet"), nil
}

// Paths builds the paths under a FLEET_HOME. Names are not checked here:
// callers pass validated fleet and machine names.
type Paths struct{ Root string }

func (l Paths) ImagesDir() string     { return filepath.Join(l.Root, ImagesFolder) }
func (l Paths) VirtualBoxDir() string { return filepath.Join(l.Root, VirtualBoxFolder) }
func (l Paths) TmpDir() string        { return filepath.Join(l.Root, TmpFolder) }
func (l Paths) CacheDir() string      { return filepath.Join(l.Root, CacheFolder) }

func (l Paths) FleetsDir() string             { return filepath.Join(l.Root, FleetsFolder) }
func (l Paths) FleetDir(fleet string) string  { return filepath.Join(l.FleetsDir(), fleet) }
func (l Paths) StateFile(fleet string) string { return filepath.Join(l.FleetDir(fleet), StateFile) }
func (l Paths) LockFile(fleet string) string  { return filepath.Join(l.FleetDir(fleet), LockFile) }
func (l Paths) KeyFile(fleet string) string   { return filepath.Join(l.FleetDir(fleet), KeyFile) }
func (l Paths) KnownHosts(fleet string) string {
	return filepath.Join(l.FleetDir(fleet), FleetKnownHosts)
}
func (l Paths) SpawningFile(fleet string) string {
	return filepath.Join(l.FleetDir(fleet), SpawningFile)
}
func (l Paths) ResultsDir(fleet string) string {
	return filepath.Join(l.FleetDir(fleet), ResultsFolder)
}
func (l Paths) MachinesDir(fleet string) string {
	return filepath.Join(l.FleetDir(fleet), MachinesFolder)
}

// RolledBackDir keeps the serial consoles of machines a failed spawn
// removed: the one clue to a guest that never answered.
func (l Paths) RolledBackDir(fleet string) string {
	return filepath.Join(l.FleetDir(fleet), RolledBackFolder)
}

// ForksDir holds the fleet's fork captures, one folder each.
func (l Paths) ForksDir(fleet string) string { return filepath.Join(l.FleetDir(fleet), ForksFolder) }

func (l Paths) MachineDir(fleet, vm string) string {
	return filepath.Join(l.MachinesDir(fleet), vm)
}
