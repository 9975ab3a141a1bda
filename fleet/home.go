// Package fleet is the controller: it plans fleets, clones and boots their
// machines in parallel through a vm.Driver, reaches them over pinned-key SSH
// and removes them without leaving anything behind.
package fleet

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/agentfleet/agentfleet/internal/layout"
)

// Layout names the folders under FLEET_HOME; the leaf package layout owns
// them, so the Packer plugin finds FLEET_HOME without the controller.
type Layout = layout.Paths

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
