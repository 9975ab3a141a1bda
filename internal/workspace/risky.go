package workspace

import (
	"encoding/json"
	"path"
	"reflect"
	"strings"
	"unicode"
)

// Flagged paths are files and folders that a tool runs code from, or that
// decide which code a tool runs, when the user does something routine:
// opens the folder in an editor or an agent, cds into it, builds,
// installs, tests, commits, pushes. They are matched at any depth (a
// sub-Makefile, a folder's .envrc, a package's .claude/ are read too) and
// without regard to case or to the code points a case-insensitive file
// system ignores, since there MAKEFILE and Makefile are the same file.
// Everything is written here folded (see fold).

// riskyDirs are folders whose contents run or configure code.
var riskyDirs = set(
	// CI services
	".github", ".gitlab", ".circleci", ".buildkite", ".woodpecker", ".forgejo", ".semaphore", ".tekton",
	// git hooks managers
	".husky", ".lefthook",
	// editors and agents: tasks, settings, MCP servers, instructions
	".vscode", ".idea", ".zed", ".fleet", ".helix", ".devcontainer", ".storybook",
	".claude", ".cursor", ".windsurf", ".gemini", ".codex", ".continue", ".roo", ".kiro", ".amazonq", ".opencode", ".clinerules",
	// package managers and toolchains
	".cargo", ".pip", ".bundle", ".yarn", ".mvn", ".mise", "mise", ".config", ".venv", ".direnv",
	// more CI and deploy folders
	".teamcity", ".azure-pipelines", ".pipelines", "fastlane",
)

// riskyFiles are file names that run or configure code.
var riskyFiles = set(
	// CI
	".travis.yml", "azure-pipelines.yml", "bitbucket-pipelines.yml", "jenkinsfile", ".drone.yml", "appveyor.yml",
	".appveyor.yml", ".woodpecker.yml", ".cirrus.yml", "cloudbuild.yaml", "cloudbuild.yml",
	// git: .git* is matched by prefix; these are read by git and its hooks
	".lfsconfig", ".pre-commit-config.yaml", ".overcommit.yml",
	"lefthook.yml", "lefthook.yaml", ".lefthook.yml", ".lefthook.yaml", "lefthook-local.yml", ".lefthook-local.yml",
	// agents
	"claude.md", "claude.local.md", "agents.md", "gemini.md", ".mcp.json", ".cursorrules", ".windsurfrules",
	".clinerules", ".roomodes", ".aider.conf.yml", "opencode.json", "copilot-instructions.md",
	// editors
	".devcontainer.json", ".nvim.lua", ".nvimrc", ".exrc", ".dir-locals.el",
	// shells and environments
	".envrc", ".env", ".tool-versions", ".mise.toml", "mise.toml", ".mise.local.toml", "mise.local.toml", ".rtx.toml",
	"flake.nix", "shell.nix", "default.nix", "devbox.json", ".rprofile", ".renviron",
	// task runners and containers
	"makefile", "gnumakefile", "makefile.am", "makefile.in", "justfile", ".justfile",
	"taskfile.yml", "taskfile.yaml", "taskfile.dist.yml", "taskfile.dist.yaml", "procfile",
	"vagrantfile", "dockerfile", "containerfile", "docker-compose.yml", "docker-compose.yaml",
	"compose.yml", "compose.yaml", "earthfile", "tiltfile", "magefile.go",
	// build entry points
	"cmakelists.txt", "cmakepresets.json", "cmakeuserpresets.json", "meson.build", "configure", "configure.ac",
	"configure.in", "autogen.sh", "build", "build.bazel", "workspace", "workspace.bazel", "module.bazel",
	".bazelrc", ".bazelversion", "build.rs", "cargo.toml", "rust-toolchain", "rust-toolchain.toml", "build.zig",
	"package.swift", "mix.exs", "rebar.config", "setup.hs", "pom.xml", "mvnw", "mvnw.cmd",
	"build.gradle", "build.gradle.kts", "settings.gradle", "settings.gradle.kts", "gradle.properties",
	"gradle-wrapper.properties", "gradlew", "gradlew.bat", "build.sbt", "composer.json", "nuget.config",
	"global.json", "makefile.pl", "build.pl", "binding.gyp",
	// package-manager configuration
	".npmrc", ".yarnrc", ".yarnrc.yml", ".pnpmfile.cjs", ".pnpmfile.mjs", "pnpm-workspace.yaml",
	"bunfig.toml", ".bunfig.toml", "deno.json", "deno.jsonc",
	"pip.conf", "pip.ini", ".pypirc", "poetry.toml", "uv.toml", "pdm.toml", "pixi.toml", "hatch.toml", "pipfile",
	".gemrc", "gemfile", "rakefile", "guardfile", "capfile", "podfile", "brewfile", "cpanfile", "dangerfile", "fastfile",
	".simplecov", "spec_helper.rb", "test_helper.rb", "rails_helper.rb",
	// lockfiles: where the next install fetches code from
	"package-lock.json", "npm-shrinkwrap.json", "yarn.lock", "pnpm-lock.yaml", "bun.lock", "bun.lockb", "deno.lock",
	"cargo.lock", "gemfile.lock", "poetry.lock", "uv.lock", "pdm.lock", "pipfile.lock", "composer.lock", "go.sum",
	"go.mod", "go.work", "requirements.txt", "requirements-dev.txt", "constraints.txt",
	// more build and task files that are code
	"sconstruct", "sconscript", "wscript", "tasks.py", "fabfile.py", "dodo.py", "snakefile", "buck", ".buckconfig",
	"dune", "dune-project", "build.ninja", "premake5.lua", "xmake.lua", "tox.toml",
	// more CI and deploy configs that run build commands
	"azure-pipelines.yaml", ".drone.yaml", "buildspec.yml", "buildspec.yaml", ".cirrus.star", "netlify.toml",
	"vercel.json", "fly.toml", "render.yaml", "codemagic.yaml", "bitrise.yml",
	// editors
	".dir-locals-2.el", ".lazy.lua", ".vimrc",
	// python, ruby and others: test configuration and start-up files
	"conftest.py", "pytest.ini", "tox.ini", "setup.py", "setup.cfg", "pyproject.toml", "noxfile.py",
	"sitecustomize.py", "usercustomize.py", ".pdbrc", ".pdbrc.py", ".irbrc", ".pryrc", ".rspec", ".rubocop.yml",
	"phpunit.xml", "phpunit.xml.dist",
)

// riskyPrefixes start file names of configuration that is code (a
// jest.config.ts runs when the tests do, an .eslintrc.js when the editor
// lints) or that is read like .env.
var riskyPrefixes = []string{
	".env.", "jest.config.", "vitest.config.", "vitest.workspace.", "vite.config.", "webpack.config.",
	"rollup.config.", "babel.config.", ".babelrc", "eslint.config.", ".eslintrc", "prettier.config.",
	".prettierrc", "stylelint.config.", ".stylelintrc", "postcss.config.", "tailwind.config.", "next.config.",
	"nuxt.config.", "svelte.config.", "astro.config.", "vue.config.", "remix.config.", "metro.config.",
	"playwright.config.", "cypress.config.", "karma.conf.", ".mocharc", "gulpfile.", "gruntfile.",
	"lint-staged.config.", ".lintstagedrc", "commitlint.config.", "tsup.config.",
	"jest.setup.", "setuptests.", "vitest.setup.", "ava.config.", "renovate.",
}

// riskyAffixes are name families known by both ends: mise.<env>.toml,
// requirements-<x>.txt.
var riskyAffixes = [][2]string{
	{"mise.", ".toml"}, {".mise.", ".toml"}, {"requirements", ".txt"}, {"requirements", ".in"}, {"constraints", ".txt"},
}

// riskySuffixes end file names that a build includes or an editor opens
// as a project (common.mk, a .csproj's MSBuild targets, a .code-workspace's
// tasks).
var riskySuffixes = []string{
	".mk", ".cmake", ".bzl", ".gradle", ".gradle.kts", ".gemspec", ".csproj", ".fsproj", ".vbproj",
	".props", ".targets", ".code-workspace", ".sublime-project", ".pth", ".just",
}

func set(names ...string) map[string]bool {
	m := make(map[string]bool, len(names))
	for _, n := range names {
		m[n] = true
	}
	return m
}

// Risky reports whether a changed path can run code on the host or in CI
// (package.json counts only when its scripts change: PackageScriptsDiffer).
func Risky(p string) bool {
	segs := strings.Split(path.Clean(p), "/")
	for i, seg := range segs {
		k := fold(seg)
		if strings.HasPrefix(k, ".git") || riskyDirs[k] {
			return true
		}
		if i < len(segs)-1 {
			continue
		}
		if riskyFiles[k] {
			return true
		}
		for _, pre := range riskyPrefixes {
			if strings.HasPrefix(k, pre) {
				return true
			}
		}
		for _, suf := range riskySuffixes {
			if strings.HasSuffix(k, suf) {
				return true
			}
		}
		for _, a := range riskyAffixes {
			if strings.HasPrefix(k, a[0]) && strings.HasSuffix(k, a[1]) {
				return true
			}
		}
	}
	return false
}

// IsPackageJSON reports whether p names a package.json (any case).
func IsPackageJSON(p string) bool { return fold(path.Base(p)) == "package.json" }

// fold is the key a file name is compared by: lower case through Unicode
// case folding (the Kelvin sign K is k, the long s ſ is s), without the
// code points HFS+ ignores in names (zero-width joiners, bidi marks),
// and without the trailing dots and spaces Windows drops. It errs towards
// matching: two names that fold alike are treated as one.
func fold(name string) string {
	var b strings.Builder
	for _, r := range name {
		if hfsIgnored(r) {
			continue
		}
		// The smallest rune of the case orbit, lowered: every spelling
		// of a letter becomes the same one.
		low := r
		for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
			low = min(low, f)
		}
		b.WriteRune(unicode.ToLower(low))
	}
	return strings.TrimRight(b.String(), ". ")
}

// hfsIgnored lists the code points HFS+ drops when it compares names
// (the list git's own .git checks use).
func hfsIgnored(r rune) bool {
	switch {
	case r == 0x200c || r == 0x200d || r == 0x200e || r == 0x200f:
		return true
	case r >= 0x202a && r <= 0x202e, r >= 0x206a && r <= 0x206f:
		return true
	case r == 0xfeff:
		return true
	}
	return false
}

// packageRunFields are the package.json fields that decide what code npm,
// pnpm or yarn run on the next install, build or test: the scripts, the
// fields that build native code or pick the package manager, and every
// field that names a dependency or where it comes from (a new
// "github:evil/x" dependency's postinstall runs on the host's next
// npm install).
var packageRunFields = []string{
	"scripts", "gypfile", "packageManager", "pnpm", "bin", "config", "workspaces",
	"dependencies", "devDependencies", "optionalDependencies", "peerDependencies", "bundledDependencies",
	"bundleDependencies", "overrides", "resolutions", "engines",
}

// PackageScriptsDiffer reports whether two package.json contents (nil:
// absent) differ in what npm, pnpm or yarn run or let run
// (packageRunFields). Keys are read exactly, as
// npm reads them (a "Scripts" key cannot stand in for "scripts"), the
// last of duplicates winning as in JSON.parse. Unparsable content counts
// as different: it cannot be shown to be harmless.
func PackageScriptsDiffer(a, b []byte) bool {
	fields := func(b []byte) (map[string]any, bool) {
		out := map[string]any{}
		if b == nil {
			return out, true
		}
		var raw map[string]json.RawMessage
		if err := json.Unmarshal(b, &raw); err != nil {
			return nil, false
		}
		for _, k := range packageRunFields {
			if r, ok := raw[k]; ok {
				var v any
				if err := json.Unmarshal(r, &v); err != nil {
					return nil, false
				}
				out[k] = v
			}
		}
		return out, true
	}
	sa, oka := fields(a)
	sb, okb := fields(b)
	return !oka || !okb || !reflect.DeepEqual(sa, sb)
}
