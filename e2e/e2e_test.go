//go:build linux

// Package e2e boots real VMs with QEMU through the fleet binary. It runs
// only with FLEET_E2E=1 (see the README); `go test ./...` skips it.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

var (
	fleetBin  string
	fleetHome string
)

func TestMain(m *testing.M) {
	if os.Getenv("FLEET_E2E_STUB") == "1" {
		runStubSites() // re-executed inside the stub network namespace
	}
	if os.Getenv("FLEET_E2E") != "1" {
		fmt.Println("e2e: skipped (set FLEET_E2E=1 to boot real VMs)")
		os.Exit(m.Run())
	}
	// Every parallel test starts at once and waits for a VM slot, which
	// takeSlot hands out longest test first (Go's own limit would pick).
	flag.Parse()
	_ = flag.Set("test.parallel", "64")
	dir, err := os.MkdirTemp("", "fleet-e2e-")
	if err != nil {
		panic(err)
	}
	fleetBin = filepath.Join(dir, "fleet")
	_, self, _, _ := runtime.Caller(0)
	build := exec.Command("go", "build", "-o", fleetBin, "./cmd/fleet")
	build.Dir = filepath.Join(filepath.Dir(self), "..")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Printf("build fleet: %v\n%s", err, out)
		os.Exit(1)
	}
	fleetHome = filepath.Join(dir, "home")
	if noImage() {
		fmt.Println("e2e: FLEET_E2E_NO_IMAGE=1: no image built, only the tests that boot no VM run")
		code := m.Run()
		os.RemoveAll(dir)
		os.Exit(code)
	}
	// The arm64 image bakes beside the amd64 one and the tests that come
	// first: both bakes are mostly one process at a time.
	startARM64Bake(dir)
	// The image is built once per run; its disk comes from FLEET_CACHE when
	// the recipe is unchanged, so a second run skips the bootstrap.
	cmd := exec.Command(fleetBin, "image", "build", "debian-12")
	cmd.Env = fleetEnv()
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		fmt.Printf("e2e: image build failed: %v\n", err)
		os.Exit(1)
	}
	fmt.Printf("e2e: image ready in %s\n", time.Since(start).Round(time.Second))
	code := m.Run()
	stopARM64Bake()
	// Whatever a failed test left behind, in any fleet, must not outlive the run.
	fleets, _ := os.ReadDir(filepath.Join(fleetHome, "fleets"))
	for _, f := range fleets {
		destroy := exec.Command(fleetBin, "destroy", "--all", "--force", "--name", f.Name())
		destroy.Env = fleetEnv()
		_ = destroy.Run()
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

func fleetEnv(extra ...string) []string {
	env := append(os.Environ(), "FLEET_HOME="+fleetHome)
	if os.Getenv("FLEET_CACHE") == "" {
		env = append(env, "FLEET_CACHE=/var/cache/agentfleet")
	}
	return append(env, extra...)
}

type result struct {
	stdout, stderr string
	code           int
}

// fleet runs the fleet binary and returns its output and exit status.
func fleet(t *testing.T, timeout time.Duration, args ...string) result {
	t.Helper()
	return fleetWithEnv(t, timeout, nil, args...)
}

func fleetWithEnv(t *testing.T, timeout time.Duration, env []string, args ...string) result {
	t.Helper()
	if len(args) > 0 && args[0] == "destroy" && t.Failed() {
		// A failed test's destroy (deferred, before its cleanups) would
		// take the consoles its cleanup prints.
		home := fleetHome
		for _, e := range env {
			if v, ok := strings.CutPrefix(e, "FLEET_HOME="); ok {
				home = v
			}
		}
		dumpFleetConsoles(t, home, flagValue(args, "--name"))
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, fleetBin, args...)
	cmd.Env = fleetEnv(env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("fleet %v: %v", args, err)
	}
	t.Logf("fleet %s -> %d\n%s%s", strings.Join(args, " "), code, out.String(), errb.String())
	return result{out.String(), errb.String(), code}
}

// fleetIn runs a fleet subcommand (args[0]) on the fleet named, with --name
// right after the subcommand, so it never lands after a guest command's --.
func fleetIn(t *testing.T, name string, timeout time.Duration, env []string, args ...string) result {
	t.Helper()
	return fleetWithEnv(t, timeout, env, append([]string{args[0], "--name", name}, args[1:]...)...)
}

func mustFleet(t *testing.T, timeout time.Duration, args ...string) string {
	t.Helper()
	r := fleet(t, timeout, args...)
	if r.code != 0 {
		t.Fatalf("fleet %v failed (%d): %s", args, r.code, r.stderr)
	}
	return r.stdout
}

type lsRow struct {
	Name    string `json:"name"`
	State   string `json:"state"`
	Address string `json:"address"`
	PID     int    `json:"pid"`
}

// ls lists the e2e fleet, or the one named.
func ls(t *testing.T, name ...string) map[string]lsRow {
	t.Helper()
	fleetName := "e2e"
	if len(name) > 0 {
		fleetName = name[0]
	}
	var rows []lsRow
	if err := json.Unmarshal([]byte(mustFleet(t, time.Minute, "ls", "--json", "--name", fleetName)), &rows); err != nil {
		t.Fatal(err)
	}
	m := map[string]lsRow{}
	for _, r := range rows {
		m[r.Name] = r
	}
	return m
}

func requireE2E(t *testing.T) {
	if os.Getenv("FLEET_E2E") != "1" {
		t.Skip("set FLEET_E2E=1 to boot real VMs")
	}
	if noImage() {
		t.Skip("FLEET_E2E_NO_IMAGE=1: no image to boot")
	}
}

// requireE2EHost is requireE2E for the tests that boot no VM (the Slurm
// harness's own): they run under FLEET_E2E_NO_IMAGE=1 too.
func requireE2EHost(t *testing.T) {
	if os.Getenv("FLEET_E2E") != "1" {
		t.Skip("set FLEET_E2E=1 to run the e2e tests")
	}
}

// noImage says the run skips the image build (minutes) because only tests
// that boot no VM are wanted.
func noImage() bool { return os.Getenv("FLEET_E2E_NO_IMAGE") == "1" }

// dumpConsoles prints the serial console tail of every machine when a test
// failed: under TCG that is usually the only clue.
func dumpConsoles(t *testing.T) { dumpConsolesIn(t, fleetHome) }

// dumpConsolesIn is dumpConsoles for a test's own FLEET_HOME.
func dumpConsolesIn(t *testing.T, home string) { dumpFleetConsoles(t, home, "") }

// flagValue is the value after flag in args, "" if none.
func flagValue(args []string, flag string) string {
	for i, a := range args {
		if a == flag && i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}

// dumpFleetConsoles prints the console tails of the named fleet's
// machines in home (every fleet's with name ""), if t failed.
func dumpFleetConsoles(t *testing.T, home, name string) {
	if !t.Failed() {
		return
	}
	if name == "" {
		name = "*"
	}
	logs, _ := filepath.Glob(filepath.Join(home, "fleets", name, "machines", "*", "serial.log"))
	kept, _ := filepath.Glob(filepath.Join(home, "fleets", name, "rolled-back", "*.serial.log"))
	for _, l := range append(logs, kept...) {
		b, _ := os.ReadFile(l)
		lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
		if len(lines) > 40 {
			lines = lines[len(lines)-40:]
		}
		t.Logf("=== console tail %s ===\n%s", l, strings.Join(lines, "\n"))
	}
}
