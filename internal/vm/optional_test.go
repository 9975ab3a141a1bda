package vm

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// bare has the lifecycle only (every method but Name panics: embedded nil).
type bare struct{ Driver }

func (bare) Name() string { return "bare" }

// full records what vm's helpers hand to its optional methods.
type full struct {
	bare
	calls []string
	err   error
}

func (f *full) Suspend(_ context.Context, s Spec) error {
	f.calls = append(f.calls, "suspend "+s.Name)
	return f.err
}
func (f *full) Suspended(s Spec) bool { f.calls = append(f.calls, "suspended "+s.Name); return true }
func (f *full) DiscardSuspended(s Spec) error {
	f.calls = append(f.calls, "discard "+s.Name)
	return f.err
}
func (f *full) SaveState(_ context.Context, s Spec, p string) error {
	f.calls = append(f.calls, "save "+s.Name+" "+p)
	return f.err
}
func (f *full) StateKey(_ context.Context, s Spec) (string, error) {
	f.calls = append(f.calls, "key "+s.Name)
	return "k", f.err
}
func (f *full) GuestRun(_ context.Context, s Spec, script string) (string, error) {
	f.calls = append(f.calls, "run "+s.Name+" "+script)
	return "out", f.err
}
func (f *full) HostMemory(s Spec) (HostMemory, error) {
	f.calls = append(f.calls, "memory "+s.Name)
	return HostMemory{Unique: 1}, f.err
}
func (f *full) HostChecks(context.Context) []HostCheck {
	return []HostCheck{{Name: "x", Status: CheckOK}}
}

func TestHelpersSayNotSupportedNamingTheDriver(t *testing.T) {
	ctx, d, s := context.Background(), bare{}, Spec{Name: "m"}
	_, kerr := StateKey(ctx, d, s)
	_, serr := Snapshots(d)
	_, gerr := Guest(d)
	_, merr := HostMemoryOf(d, s)
	for name, err := range map[string]error{"memory": merr, "suspend": Suspend(ctx, d, s), "save": SaveState(ctx, d, s, "/x"), "key": kerr, "snapshots": serr, "guest": gerr} {
		if !errors.Is(err, ErrNotSupported) || !strings.Contains(err.Error(), "the bare driver") {
			t.Errorf("%s: %v", name, err)
		}
	}
	// Nothing was saved, so there is nothing to resume or drop.
	if Suspended(d, s) || DiscardSuspended(d, s) != nil || HostChecks(ctx, d) != nil {
		t.Error("a driver without snapshots reports saved state or checks")
	}
}

func TestHelpersHandOnToTheDriver(t *testing.T) {
	ctx, s := context.Background(), Spec{Name: "m"}
	f := &full{}
	k, kerr := StateKey(ctx, f, s)
	g, gerr := Guest(f)
	out, rerr := g.GuestRun(ctx, s, "echo hi")
	mem, merr := HostMemoryOf(f, s)
	if Suspend(ctx, f, s) != nil || !Suspended(f, s) || DiscardSuspended(f, s) != nil || SaveState(ctx, f, s, "/p") != nil ||
		k != "k" || kerr != nil || out != "out" || rerr != nil || gerr != nil || len(HostChecks(ctx, f)) != 1 ||
		mem.Unique != 1 || merr != nil {
		t.Fatal("a helper changed the driver's answer")
	}
	want := "key m|run m echo hi|memory m|suspend m|suspended m|discard m|save m /p"
	if got := strings.Join(f.calls, "|"); got != want {
		t.Errorf("calls %s, want %s", got, want)
	}
	// The driver's own errors come back as they are, not as ErrNotSupported.
	f.err = errors.New("disk full")
	if err := DiscardSuspended(f, s); err != f.err {
		t.Errorf("discard: %v", err)
	}
	if err := Suspend(ctx, f, s); err != f.err || errors.Is(err, ErrNotSupported) {
		t.Errorf("suspend: %v", err)
	}
}

func TestBootTimeoutFor(t *testing.T) {
	other := ARM64
	if HostArch() == ARM64 {
		other = AMD64
	}
	c := Capabilities{BootTimeout: 3 * time.Minute, EmulatedBootTimeout: 10 * time.Minute}
	if c.BootTimeoutFor(HostArch()) != 3*time.Minute || c.BootTimeoutFor(other) != 10*time.Minute {
		t.Errorf("host %s, other %s", c.BootTimeoutFor(HostArch()), c.BootTimeoutFor(other))
	}
	// Already slow (TCG, or FLEET_BOOT_TIMEOUT): never shortened.
	c.BootTimeout = 20 * time.Minute
	if c.BootTimeoutFor(other) != 20*time.Minute {
		t.Errorf("a longer timeout was shortened: %s", c.BootTimeoutFor(other))
	}
}
