// Package fleet is the controller: it plans fleets, clones and boots their
// machines in parallel through a vm.Driver, reaches them over pinned-key SSH
// and removes them without leaving anything behind.
package fleet

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// Home returns FLEET_HOME, the root of all state, images and caches.
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

// Layout names the folders under FLEET_HOME.
type Layout struct{ Root string }

func (l Layout) FleetsDir() string             { return filepath.Join(l.Root, "fleets") }
func (l Layout) FleetDir(fleet string) string  { return filepath.Join(l.Root, "fleets", fleet) }
func (l Layout) StateFile(fleet string) string { return filepath.Join(l.FleetDir(fleet), "state.json") }
func (l Layout) LockFile(fleet string) string  { return filepath.Join(l.FleetDir(fleet), "lock") }
func (l Layout) KeyFile(fleet string) string   { return filepath.Join(l.FleetDir(fleet), "id_ed25519") }
func (l Layout) KnownHosts(fleet string) string {
	return filepath.Join(l.FleetDir(fleet), "known_hosts")
}
func (l Layout) ResultsDir(fleet string) string  { return filepath.Join(l.FleetDir(fleet), "results") }
func (l Layout) MachinesDir(fleet string) string { return filepath.Join(l.FleetDir(fleet), "machines") }

// RolledBackDir keeps the serial consoles of machines a failed spawn
// removed: the one clue to a guest that never answered.
func (l Layout) RolledBackDir(fleet string) string {
	return filepath.Join(l.FleetDir(fleet), "rolled-back")
}

func (l Layout) MachineDir(fleet, vm string) string {
	return filepath.Join(l.MachinesDir(fleet), vm)
}

var nameRe = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$`)

// ValidateFleetName accepts names usable as hostnames and folder names.
func ValidateFleetName(name string) error {
	if !nameRe.MatchString(name) {
		return fmt.Errorf("invalid fleet name %q: use 1-32 lowercase letters, digits and dashes, starting and ending with a letter or digit", name)
	}
	return nil
}

// FleetNameFromDir derives a fleet name from a project folder's name.
func FleetNameFromDir(dir string) (string, error) {
	base := strings.ToLower(filepath.Base(dir))
	var b strings.Builder
	for _, r := range base {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
		} else if b.Len() > 0 && !strings.HasSuffix(b.String(), "-") {
			b.WriteByte('-')
		}
	}
	name := strings.Trim(b.String(), "-")
	if len(name) > 32 {
		name = strings.Trim(name[:32], "-")
	}
	if err := ValidateFleetName(name); err != nil {
		return "", fmt.Errorf("cannot name a fleet after folder %q; pass --name", base)
	}
	return name, nil
}
