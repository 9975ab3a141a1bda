package fleet

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/agentfleet/agentfleet/images"
	"github.com/agentfleet/agentfleet/internal/qcow2/qcow2test"
	"github.com/agentfleet/agentfleet/internal/vm"
)

// A fleet with machines keeps its driver whatever fleet.hcl or the flag
// say; only a new (or emptied) fleet is chosen for, flag before fleet.hcl
// before the default.
func TestChooseProviderKeepsAFleetsDriver(t *testing.T) {
	st := Store{Layout: Layout{Root: t.TempDir()}, Fleet: "p"}
	asked := 0
	hcl := func(p string) func() string { return func() string { asked++; return p } }
	for _, c := range []struct{ requested, hcl, want string }{
		{"", "", DefaultProvider},
		{"", "virtualbox", "virtualbox"},
		{"qemu", "virtualbox", "qemu"},
		{"virtualbox", "", "virtualbox"},
	} {
		got, err := ChooseProvider(st, c.requested, hcl(c.hcl))
		if err != nil || got != c.want {
			t.Errorf("new fleet, --provider %q, fleet.hcl %q: %q %v, want %q", c.requested, c.hcl, got, err, c.want)
		}
	}
	if got, err := ChooseProvider(st, "", nil); err != nil || got != DefaultProvider {
		t.Errorf("no fleet.hcl at all: %q %v", got, err)
	}
	if err := writeState(st, &State{Version: stateVersion, Fleet: "p", Driver: "virtualbox"}); err != nil {
		t.Fatal(err)
	}
	if got, _ := ChooseProvider(st, "", hcl("")); got != DefaultProvider {
		t.Errorf("a fleet with no machines left keeps %q; it is new again", got)
	}
	if err := writeState(st, &State{Version: stateVersion, Fleet: "p", Driver: "virtualbox", Machines: []*Machine{{Name: "p-1", Index: 1}}}); err != nil {
		t.Fatal(err)
	}
	asked = 0
	if got, err := ChooseProvider(st, "", hcl("qemu")); err != nil || got != "virtualbox" {
		t.Errorf("fleet.hcl changed a fleet's driver: %q %v", got, err)
	}
	if _, err := ChooseProvider(st, "qemu", hcl("")); err == nil || !strings.Contains(err.Error(), "fleet p runs on virtualbox: --provider qemu cannot change that") {
		t.Errorf("--provider changed a fleet's driver: %v", err)
	}
	if got, err := ChooseProvider(st, "virtualbox", hcl("")); err != nil || got != "virtualbox" {
		t.Errorf("asking for the fleet's own driver: %q %v", got, err)
	}
	if asked != 0 {
		t.Errorf("fleet.hcl was read %d times for a fleet that has its driver", asked)
	}
}

func writeState(st Store, s *State) error { return st.Save(s) }

type formatDriver struct {
	vm.Driver
	format string
}

func (d formatDriver) Name() string { return "fmt" }
func (d formatDriver) Capabilities() vm.Capabilities {
	return vm.Capabilities{ImageFormat: d.format}
}

func addImage(t *testing.T, s images.Store, name, version string) {
	t.Helper()
	disk := filepath.Join(t.TempDir(), "disk")
	if err := qcow2test.Write(disk, qcow2test.Options{Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Add(images.Manifest{Name: name, Version: version, RecipeHash: "r"}, disk); err != nil {
		t.Fatal(err)
	}
	if err := s.Promote(name, version); err != nil {
		t.Fatal(err)
	}
}

// No image named: the first built of DefaultImages; one named is that
// one or an error, never a default in its place.
func TestSpawnImageDefaultsInOrderAndAsksTheDriversFormat(t *testing.T) {
	s := images.Store{Root: t.TempDir()}
	if _, err := SpawnImage(s, "", "", formatDriver{}); err == nil {
		t.Fatal("an empty store gave an image")
	}
	addImage(t, s, "debian-12", "20260101-000000")
	if img, err := SpawnImage(s, "", "", formatDriver{}); err != nil || img.Name != "debian-12" {
		t.Fatalf("only debian-12 built: %+v %v", img, err)
	}
	if _, err := SpawnImage(s, "ubuntu-24.04", "", formatDriver{}); err == nil {
		t.Error("a named image that is not built fell back to another")
	}
	addImage(t, s, "ubuntu-24.04", "20260102-000000")
	img, err := SpawnImage(s, "", "", formatDriver{format: "qcow2"})
	if err != nil || img.Name != DefaultImages[0] || img.Version != "20260102-000000" || !strings.HasSuffix(img.Disk, ".qcow2") {
		t.Fatalf("both built: %+v %v", img, err)
	}
	if _, err := SpawnImage(s, "debian-12", "", formatDriver{format: "ova"}); err == nil || !strings.Contains(err.Error(), "has no OVA for the fmt driver: build one with: fleet image build debian-12 --output qcow2,ova") {
		t.Errorf("a driver's format the image lacks: %v", err)
	}
}

// The sync mode: the flag, else fleet.hcl's, else git in a repository and
// rsync elsewhere; the home folder is never brought in whole.
func TestProjectWorkspaceOrder(t *testing.T) {
	ctx := t.Context()
	plain, repo := t.TempDir(), t.TempDir()
	if out, err := exec.Command("git", "-C", repo, "init", "-q").CombinedOutput(); err != nil {
		t.Skipf("git: %v %s", err, out)
	}
	mode := func(dir, flag string) string {
		t.Helper()
		ws, _, err := ProjectWorkspace(ctx, dir, flag, []string{"x"}, false)
		if err != nil {
			return "error: " + err.Error()
		}
		if ws.Dir != dir {
			t.Errorf("dir %s became %s", dir, ws.Dir)
		}
		return string(ws.Mode)
	}
	if got := mode(plain, ""); got != "rsync" {
		t.Errorf("outside a repository: %s", got)
	}
	if got := mode(repo, ""); got != "git" {
		t.Errorf("in a repository: %s", got)
	}
	os.WriteFile(filepath.Join(repo, "fleet.hcl"), []byte("sync = \"rsync\"\nexclude = [\"big\"]\n"), 0o644)
	if got := mode(repo, ""); got != "rsync" {
		t.Errorf("fleet.hcl says rsync: %s", got)
	}
	if got := mode(repo, "none"); got != "none" {
		t.Errorf("--sync none over fleet.hcl: %s", got)
	}
	if ws, _, _ := ProjectWorkspace(ctx, repo, "", []string{"x"}, false); strings.Join(ws.Excludes, ",") != "big,x" {
		t.Errorf("excludes %v", ws.Excludes)
	}
	if got := mode(repo, "Git"); !strings.HasPrefix(got, "error: unknown sync mode") {
		t.Errorf("--sync Git: %s", got)
	}
	t.Setenv("HOME", plain)
	if got := mode(plain, ""); !strings.Contains(got, "not bringing all of "+plain) {
		t.Errorf("the home folder: %s", got)
	}
	if got := mode(plain, "none"); got != "none" {
		t.Errorf("the home folder with --sync none: %s", got)
	}
}
