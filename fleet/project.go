package fleet

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/agentfleet/agentfleet/internal/session"

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
//	setup = "npm ci"                          # runs in /workspace before the agent
//	agent = "aider"                           # profile spawn --task and run use (default claude)
//	profile "aider" {
//	  command = ["aider", "--yes", "--message-file", "{task_file}"]
//	  task    = "file"                        # stdin (default) | file
//	}
type Project struct {
	Sync           string         `hcl:"sync,optional"`
	Exclude        []string       `hcl:"exclude,optional"`
	SharedWritable bool           `hcl:"shared_writable,optional"`
	Setup          string         `hcl:"setup,optional"`
	Agent          string         `hcl:"agent,optional"`
	Profiles       []ProfileBlock `hcl:"profile,block"`
}

// ProfileBlock is a `profile "NAME" { ... }` block: another agent CLI.
type ProfileBlock struct {
	Name    string   `hcl:"name,label"`
	Command []string `hcl:"command"`
	Task    string   `hcl:"task,optional"`
}

// Profile returns the named agent profile ("" means the project's agent
// setting, else claude). claude and claude-interactive are built in.
func (p Project) Profile(name string) (session.Profile, error) {
	if name == "" {
		name = p.Agent
	}
	for _, b := range p.Profiles {
		if b.Name == name {
			task := session.TaskVia(b.Task)
			if task == "" {
				task = session.TaskStdin
			}
			prof := session.Profile{Name: b.Name, Command: b.Command, Task: task}
			return prof, prof.Validate()
		}
	}
	switch name {
	case "", session.Claude.Name:
		return session.Claude, nil
	case session.ClaudeInteractive.Name:
		return session.ClaudeInteractive, nil
	}
	names := []string{session.Claude.Name, session.ClaudeInteractive.Name}
	for _, b := range p.Profiles {
		names = append(names, b.Name)
	}
	return session.Profile{}, fmt.Errorf("unknown agent profile %q (profiles: %s)", name, strings.Join(names, ", "))
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
	for _, b := range p.Profiles {
		if _, err := p.Profile(b.Name); err != nil {
			return p, fmt.Errorf("%s: %w", path, err)
		}
	}
	if p.Sync != "" {
		if _, err := ParseSyncMode(p.Sync); err != nil {
			return p, fmt.Errorf("%s: %w", path, err)
		}
	}
	return p, nil
}
