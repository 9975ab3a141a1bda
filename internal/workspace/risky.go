package workspace

import (
	"encoding/json"
	"path"
	"reflect"
	"strings"
)

// riskyNames are files and folders that tools run code from: git itself,
// CI services, agent and editor settings, direnv, build entry points.
// Matched at any depth, since nested ones are read too (a sub-Makefile, a
// folder's .envrc, a package's .claude/). Beyond the usual list: .husky/
// and .pre-commit-config.yaml install git hooks, .devcontainer/ runs
// commands when an editor opens the folder.
var riskyNames = map[string]bool{
	".github": true, ".gitlab-ci.yml": true, ".claude": true, ".mcp.json": true,
	".envrc": true, ".vscode": true, "Vagrantfile": true, "Makefile": true,
	".husky": true, ".pre-commit-config.yaml": true, ".devcontainer": true,
}

// Risky reports whether a changed path can run code on the host or in CI
// (package.json counts only when its scripts change: PackageScriptsDiffer).
func Risky(p string) bool {
	for _, seg := range strings.Split(path.Clean(p), "/") {
		if strings.HasPrefix(seg, ".git") || riskyNames[seg] {
			return true
		}
	}
	return false
}

// PackageScriptsDiffer reports whether two package.json contents (nil:
// absent) declare different "scripts". Unparsable content counts as
// different: it cannot be shown to be harmless.
func PackageScriptsDiffer(a, b []byte) bool {
	scripts := func(b []byte) (any, bool) {
		if b == nil {
			return nil, true
		}
		var v struct {
			Scripts any `json:"scripts"`
		}
		if err := json.Unmarshal(b, &v); err != nil {
			return nil, false
		}
		return v.Scripts, true
	}
	sa, oka := scripts(a)
	sb, okb := scripts(b)
	return !oka || !okb || !reflect.DeepEqual(sa, sb)
}
