package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agentfleet/agentfleet/images"
	"github.com/agentfleet/agentfleet/internal/layout"
	"github.com/agentfleet/agentfleet/internal/qcow2/qcow2test"
)

// storeWithPrebuild makes FLEET_HOME with one image version holding one
// prebuild of project name (a hostile one, to be shown cleanly).
func storeWithPrebuild(t *testing.T, project string) (images.Store, images.Template) {
	t.Helper()
	home := t.TempDir()
	t.Setenv("FLEET_HOME", home)
	store := images.Store{Root: filepath.Join(home, "images")}
	disk := filepath.Join(t.TempDir(), "disk")
	qcow2test.Write(disk, qcow2test.Options{})
	img, err := store.Add(images.Manifest{Name: "debian-12", Version: "v1"}, disk)
	if err != nil {
		t.Fatal(err)
	}
	staged := filepath.Join(img.Dir, layout.TemplateStagingPrefix+"x")
	os.MkdirAll(staged, 0o755)
	qcow2test.Write(filepath.Join(staged, images.TemplateDisk), qcow2test.Options{Backing: img.Disk, BackingFormat: "qcow2"})
	os.WriteFile(filepath.Join(staged, images.TemplateState), []byte("state"), 0o644)
	os.WriteFile(filepath.Join(staged, images.TemplateMemory), make([]byte, 3<<20), 0o644)
	key := strings.Repeat("ab", 32)
	b, _ := json.Marshal(images.TemplateMetaInfo{Key: key, CPUs: 2, MemoryMiB: 2048, CreatedAt: time.Now().Add(-3 * time.Hour),
		Kind: images.KindPrebuild, Project: project, Setup: []string{"npm ci", "pip install -r requirements.txt"}})
	os.WriteFile(filepath.Join(staged, images.TemplateMeta), b, 0o644)
	p, err := images.PublishPrebuild(img, key, staged)
	if err != nil {
		t.Fatal(err)
	}
	return store, p
}

func TestImageLsShowsPrebuildsUnderTheirVersion(t *testing.T) {
	storeWithPrebuild(t, "my\x1b[2Jproj")
	stdout, _, err := fleetCLI(t, "image", "ls")
	if err != nil {
		t.Fatal(err)
	}
	if strings.ContainsAny(stdout, "\x1b") {
		t.Errorf("raw escape printed: %q", stdout)
	}
	var line string
	for _, l := range strings.Split(stdout, "\n") {
		if strings.Contains(l, "abababababab") {
			line = l
		}
	}
	for _, want := range []string{"debian-12@v1", `my\e[2Jproj`, "3M", "3h", "npm ci; pip install"} {
		if !strings.Contains(line, want) {
			t.Errorf("prebuild row %q lacks %q\n%s", line, want, stdout)
		}
	}
	stdout, _, err = fleetCLI(t, "image", "ls", "--json")
	var rows []struct {
		Prebuilds []images.Template `json:"prebuilds"`
	}
	if err != nil || json.Unmarshal([]byte(stdout), &rows) != nil || len(rows) != 1 || len(rows[0].Prebuilds) != 1 ||
		rows[0].Prebuilds[0].Project != "my\x1b[2Jproj" || rows[0].Prebuilds[0].Bytes < 3<<20 {
		t.Fatalf("--json: %v %s", err, stdout)
	}
}

func TestImagePrunePrebuilds(t *testing.T) {
	_, p := storeWithPrebuild(t, "myproj")
	if _, _, err := fleetCLI(t, "image", "prune"); err == nil || !strings.Contains(err.Error(), "--prebuilds") {
		t.Errorf("prune with neither flag: %v", err)
	}
	stdout, _, err := fleetCLI(t, "image", "prune", "--prebuilds", "--json")
	var out struct {
		Versions  []images.Image          `json:"versions"`
		Prebuilds []images.PrunedPrebuild `json:"prebuilds"`
	}
	if err != nil || json.Unmarshal([]byte(stdout), &out) != nil || out.Versions == nil || len(out.Prebuilds) != 1 || out.Prebuilds[0].Image != "debian-12@v1" {
		t.Fatalf("prune --prebuilds --json: %v %s", err, stdout)
	}
	if _, err := os.Stat(p.Dir); !os.IsNotExist(err) {
		t.Error("the prebuild is still there")
	}
	stdout, _, err = fleetCLI(t, "image", "prune", "--prebuilds")
	if err != nil || !strings.Contains(stdout, "no unused prebuilds") {
		t.Errorf("second prune: %v %q", err, stdout)
	}
}

func TestPrebuildCommandParsesItsFlags(t *testing.T) {
	stdout, _, err := fleetCLI(t, "prebuild", "--help")
	if err != nil || !strings.Contains(stdout, "--force") || !strings.Contains(stdout, "fleet prebuild --project") {
		t.Errorf("--help: %v\n%s", err, stdout)
	}
	for args, want := range map[string]string{
		"prebuild --cpus 0":       "--cpus",
		"prebuild --memory lots":  "memory",
		"prebuild extra":          "unknown command",
		"prebuild --arch sparc64": "sparc64",
	} {
		if _, _, err := fleetCLI(t, strings.Fields(args)...); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want an error with %q", args, err, want)
		}
	}
}
