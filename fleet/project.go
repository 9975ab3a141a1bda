package fleet

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/hashicorp/hcl/v2/hclsimple"
)

// ProjectFile is the optional per-project settings file.
const ProjectFile = "fleet.hcl"

// Project is fleet.hcl: settings a project keeps beside its code, so
// everyone who spawns agents on it gets the same workspace rules.
//
//	sync            = "rsync"                  # git | rsync | shared | none
//	exclude         = ["node_modules", "*.log"] # rsync: on top of .gitignore
//	shared_writable = false                    # shared: let the VM write the host folder
type Project struct {
	Sync           string   `hcl:"sync,optional"`
	Exclude        []string `hcl:"exclude,optional"`
	SharedWritable bool     `hcl:"shared_writable,optional"`
}

// LoadProject reads dir/fleet.hcl; a missing file is an empty Project.
// Errors name the file and line.
func LoadProject(dir string) (Project, error) {
	var p Project
	path := filepath.Join(dir, ProjectFile)
	src, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return p, nil
	}
	if err != nil {
		return p, err
	}
	if err := hclsimple.Decode(path, src, nil, &p); err != nil {
		return p, fmt.Errorf("%w", err)
	}
	if p.Sync != "" {
		if _, err := ParseSyncMode(p.Sync); err != nil {
			return p, fmt.Errorf("%s: %w", path, err)
		}
	}
	return p, nil
}
