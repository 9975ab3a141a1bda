package fleet

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// setup is one string (the old form) or a list of strings; anything else,
// and an attribute fleet.hcl does not know, is an error naming the file.
func TestProjectSetupIsAStringOrAList(t *testing.T) {
	for _, tc := range []struct {
		hcl     string
		want    []string
		inputs  []string
		wantErr string
	}{
		{hcl: ``},
		{hcl: `setup = ""`},
		{hcl: `setup = "npm ci && npm run build"`, want: []string{"npm ci && npm run build"}},
		{hcl: `setup = ["npm ci", "pip install -r requirements.txt"]`, want: []string{"npm ci", "pip install -r requirements.txt"}},
		{hcl: `setup = ["a b"]`, want: []string{"a b"}},
		{hcl: `setup = []`},
		{hcl: "setup = <<EOT\nnpm ci\nEOT\n", want: []string{"npm ci\n"}},
		{hcl: `setup = ["npm ci", ""]`, wantErr: "setup[1] is empty"},
		{hcl: `setup = ["npm ci", 3]`, wantErr: "setup[1] must be a string"},
		{hcl: `setup = 3`, wantErr: "setup must be a string or a list of strings, not number"},
		{hcl: `setup = { a = "b" }`, wantErr: "setup must be a string or a list of strings"},
		{hcl: `setup = ["x", ["y"]]`, wantErr: "setup[1] must be a string"},
		{hcl: `setup = var.x`, wantErr: "fleet.hcl"},
		{hcl: "setup = \"a\"\nsetup = \"b\"", wantErr: "fleet.hcl"},
		{hcl: `setpu = "npm ci"`, wantErr: "setpu"},
		{hcl: `prebuild_inputs = ["package-lock.json", "*/go.sum"]`, inputs: []string{"package-lock.json", "*/go.sum"}},
		{hcl: `prebuild_inputs = []`, inputs: []string{}},
		{hcl: `prebuild_inputs = ["../secret"]`, wantErr: "prebuild_inputs[0]"},
		{hcl: `prebuild_inputs = ["/etc/passwd"]`, wantErr: "absolute"},
		{hcl: `prebuild_inputs = ["**/package-lock.json"]`, wantErr: "not supported"},
	} {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, ProjectFile), []byte(tc.hcl), 0o644)
		p, err := LoadProject(dir)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%q: error %v, want one with %q", tc.hcl, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.hcl, err)
			continue
		}
		if got := p.SetupCommands(); !slices.Equal(got, tc.want) {
			t.Errorf("%q: setup %q, want %q", tc.hcl, got, tc.want)
		}
		if (tc.inputs == nil) != (p.PrebuildInputs == nil) || !slices.Equal(p.PrebuildInputs, tc.inputs) {
			t.Errorf("%q: prebuild_inputs %#v, want %#v", tc.hcl, p.PrebuildInputs, tc.inputs)
		}
	}
	// SetupCommands is a copy: a caller cannot change the project.
	p := Project{Setup: []string{"a"}}
	p.SetupCommands()[0] = "b"
	if p.Setup[0] != "a" {
		t.Error("SetupCommands shares its slice")
	}
}

// The prebuild key follows the project's setup and inputs: the default
// lockfiles, or prebuild_inputs, which must name files that are there.
func TestProjectPrebuildKey(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "package-lock.json"), []byte("{}"), 0o644)
	p := Project{Setup: []string{"npm ci"}}
	k1, _, inputs, err := p.PrebuildKey("tpl", dir)
	if err != nil || !slices.Equal(inputs, []string{"package-lock.json"}) {
		t.Fatalf("%q %v", inputs, err)
	}
	os.WriteFile(filepath.Join(dir, "package-lock.json"), []byte("{ }"), 0o644)
	if k2, _, _, _ := p.PrebuildKey("tpl", dir); k2 == k1 {
		t.Error("a changed lockfile kept the key")
	}
	p.PrebuildInputs = []string{"yarn.lock"}
	if _, _, _, err := p.PrebuildKey("tpl", dir); err == nil || !strings.Contains(err.Error(), "yarn.lock") {
		t.Errorf("a missing named input: %v", err)
	}
}

// The slurm block's image_registry settings are read from fleet.hcl.
func TestProjectSlurmImageRegistry(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "fleet.hcl"), []byte(`provider = "slurm"
slurm {
  partition = "batch"
  image_registry = "10.1.2.3:5000/fleet/debian-12"
  image_registry_plain_http = true
}
`), 0o644)
	p, err := LoadProject(dir)
	if err != nil {
		t.Fatal(err)
	}
	if p.Slurm == nil || p.Slurm.ImageRegistry != "10.1.2.3:5000/fleet/debian-12" || !p.Slurm.ImageRegistryPlainHTTP || p.Slurm.Partition != "batch" {
		t.Fatalf("slurm block: %+v", p.Slurm)
	}
}
