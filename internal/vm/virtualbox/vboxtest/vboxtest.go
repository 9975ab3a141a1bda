// Package vboxtest gives tests the strict fake VBoxManage (../vboxfake):
// built once per test binary, and a minimal OVA for it to import.
package vboxtest

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"

	"github.com/agentfleet/agentfleet/internal/ovatest"
)

var (
	once     sync.Once
	bin      string
	buildErr error
	output   []byte
)

// Fake returns the path of the fake, named VBoxManage so a PATH entry for
// its folder stands in for VirtualBox.
func Fake(t testing.TB) string {
	t.Helper()
	once.Do(func() {
		dir, err := os.MkdirTemp("", "vboxfake-")
		if err != nil {
			buildErr = err
			return
		}
		_, self, _, _ := runtime.Caller(0)
		bin = filepath.Join(dir, "VBoxManage")
		cmd := exec.Command("go", "build", "-o", bin, ".")
		cmd.Dir = filepath.Join(filepath.Dir(self), "..", "vboxfake")
		output, buildErr = cmd.CombinedOutput()
	})
	if buildErr != nil {
		t.Fatalf("build the fake VBoxManage: %v\n%s", buildErr, output)
	}
	return bin
}

// WriteOVA writes a minimal OVA at path: a tar whose first member is the
// OVF, which is what the fake (and the OVF standard) checks.
func WriteOVA(t testing.TB, path string) string {
	t.Helper()
	return ovatest.WriteOVA(t, path)
}
