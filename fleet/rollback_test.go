package fleet

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/agentfleet/agentfleet/internal/layout"
)

// A machine that never answered is rolled back, folder and all; its serial
// console, the one clue to why, is kept in the fleet's folder.
func TestRollbackKeepsTheSerialConsole(t *testing.T) {
	l := Layout{Root: t.TempDir()}
	c := &Controller{Layout: l, Fleet: "p"}
	m := &Machine{Name: "p-1", Dir: l.MachineDir("p", "p-1")}
	if got := c.keepConsole(m); got != "" {
		t.Errorf("no console yet, kept %q", got)
	}
	os.MkdirAll(m.Dir, 0o700)
	os.WriteFile(filepath.Join(m.Dir, layout.SerialFile), []byte("[ 0.0] Linux version ...\nKernel panic\n"), 0o644)
	kept := c.keepConsole(m)
	b, err := os.ReadFile(kept)
	if err != nil || string(b) != "[ 0.0] Linux version ...\nKernel panic\n" {
		t.Fatalf("kept %q: %q %v", kept, b, err)
	}
	if filepath.Dir(kept) != l.RolledBackDir("p") {
		t.Errorf("kept in %s, want the fleet's rolled-back folder", kept)
	}
}
