package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/agentfleet/agentfleet/images"
	"github.com/agentfleet/agentfleet/internal/qcow2/qcow2test"
)

// `fleet image ls` prints a manifest's strings as one clean line each;
// a version the store refuses is not listed, and the warning saying so is
// clean too. --json stays JSON.
func TestImageLsPrintsNoRawManifestText(t *testing.T) {
	home := t.TempDir()
	t.Setenv("FLEET_HOME", home)
	store := images.Store{Root: filepath.Join(home, "images")}
	disk := filepath.Join(t.TempDir(), "disk")
	qcow2test.Write(disk, qcow2test.Options{})
	m := images.Manifest{Name: "debian-12", Version: "v1", Packages: map[string]string{"docker": "27.5.1", "node": "v24 (lts)"}}
	if _, err := store.Add(m, disk); err != nil {
		t.Fatal(err)
	}
	// Left by hand (or by an older fleet's pull): escapes in a folder's
	// name, in a package version, and a disk naming a host file.
	hostile := func(folder string, m images.Manifest, o qcow2test.Options) {
		dir := filepath.Join(store.Root, "debian-12", folder)
		os.MkdirAll(dir, 0o755)
		qcow2test.Write(filepath.Join(dir, images.DiskFile), o)
		b, _ := json.Marshal(m)
		os.WriteFile(filepath.Join(dir, images.ManifestFile), b, 0o644)
	}
	hostile("v2\x1b[2J\x1b]0;owned\x07", images.Manifest{Name: "debian-12", Version: "v2"}, qcow2test.Options{})
	hostile("v3", images.Manifest{Name: "debian-12", Version: "v3", Packages: map[string]string{"docker": "27\x1b[1A\x1b[2K\rok"}}, qcow2test.Options{})
	hostile("v4", images.Manifest{Name: "debian-12", Version: "v4"}, qcow2test.Options{Backing: "/root/.ssh/id_ed25519"})

	stdout, stderr, err := fleetCLI(t, "image", "ls")
	if err != nil {
		t.Fatal(err)
	}
	for _, out := range []string{stdout, stderr} {
		if strings.ContainsAny(out, "\x1b\x07\r") {
			t.Errorf("raw control bytes printed: %q", out)
		}
	}
	if !strings.Contains(stdout, "v1") || strings.Contains(stdout, "v3") || strings.Contains(stdout, "v4") {
		t.Errorf("table:\n%s", stdout)
	}
	if strings.Count(stderr, "warning: ") != 3 || !strings.Contains(stderr, `v2\e[2J`) || !strings.Contains(stderr, "names the backing file") ||
		!strings.Contains(stderr, "version of docker") {
		t.Errorf("warnings:\n%s", stderr)
	}
	if strings.Count(strings.TrimSpace(stderr), "\n") != 2 {
		t.Errorf("a warning is not one line:\n%s", stderr)
	}
	stdout, _, err = fleetCLI(t, "image", "ls", "--json")
	var rows []map[string]any
	if err != nil || json.Unmarshal([]byte(stdout), &rows) != nil || len(rows) != 1 {
		t.Fatalf("--json: %v %s", err, stdout)
	}
}

// The table cell of a manifest string: escapes and tabs cannot move the
// cursor or shift columns.
func TestCellIsOneCleanLine(t *testing.T) {
	for in, want := range map[string]string{"": "-", "27.5.1": "27.5.1", "a\tb": `a\tb`, "x\x1b[2Jy": `x\e[2Jy`, "1\r\nwarning": `1\r\nwarning`, "\u202eevil": `\u202eevil`} {
		if got := manifestCell(in); got != want {
			t.Errorf("manifestCell(%q) = %q, want %q", in, got, want)
		}
	}
}
