package vmtest

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/agentfleet/agentfleet/internal/vm"
)

// lifecycle is a driver with only the lifecycle and the given facts.
type lifecycle struct {
	vm.Driver
	caps vm.Capabilities
}

func (lifecycle) Name() string                    { return "fake" }
func (d lifecycle) Capabilities() vm.Capabilities { return d.caps }

// snapshotter adds snapshots; shareChecker adds share validation.
type snapshotter struct {
	lifecycle
	vm.Snapshotter
}

type shareChecker struct {
	lifecycle
	vm.ShareValidator
}

var good = vm.Capabilities{ImageFormat: "qcow2", BootTimeout: time.Minute}

// The suite's capability checks catch each way facts go missing or
// disagree, and pass facts that agree.
func TestCapabilityProblems(t *testing.T) {
	with := func(f func(*vm.Capabilities)) vm.Capabilities { c := good; f(&c); return c }
	shared := with(func(c *vm.Capabilities) { c.SharedFolders, c.ShareFS, c.ShareTag = true, "virtiofs", "workspace" })
	for _, tc := range []struct {
		name string
		d    vm.Driver
		want string // "" means no problem
	}{
		{"lifecycle only", lifecycle{caps: good}, ""},
		{"shared folders", lifecycle{caps: shared}, ""},
		{"snapshots said and done", snapshotter{lifecycle: lifecycle{caps: with(func(c *vm.Capabilities) { c.Snapshots = true })}}, ""},
		{"no image format", lifecycle{caps: with(func(c *vm.Capabilities) { c.ImageFormat = "" })}, "image format"},
		{"an unknown image format", lifecycle{caps: with(func(c *vm.Capabilities) { c.ImageFormat = "vmdk" })}, "image format"},
		{"no boot timeout", lifecycle{caps: with(func(c *vm.Capabilities) { c.BootTimeout = 0 })}, "boot timeouts"},
		{"a negative emulated timeout", lifecycle{caps: with(func(c *vm.Capabilities) { c.EmulatedBootTimeout = -time.Second })}, "boot timeouts"},
		{"snapshots said, not done", lifecycle{caps: with(func(c *vm.Capabilities) { c.Snapshots = true })}, "Snapshots is true"},
		{"snapshots done, not said", snapshotter{lifecycle: lifecycle{caps: good}}, "Snapshots is false"},
		{"shares without a tag", lifecycle{caps: with(func(c *vm.Capabilities) { c.SharedFolders, c.ShareFS = true, "virtiofs" })}, "one-word tag"},
		{"a tag that is a command", lifecycle{caps: with(func(c *vm.Capabilities) { *c = shared; c.ShareTag = "w; reboot" })}, "one-word tag"},
		{"a tag without shares", lifecycle{caps: with(func(c *vm.Capabilities) { c.ShareTag = "workspace" })}, "no shared folders"},
		{"mount options without shares", lifecycle{caps: with(func(c *vm.Capabilities) { c.ShareMountOptions = "uid=1" })}, "no shared folders"},
		{"mount options that say rw", lifecycle{caps: with(func(c *vm.Capabilities) { *c = shared; c.ShareMountOptions = "uid=1,rw" })}, `"rw"`},
		{"mount options that end the command", lifecycle{caps: with(func(c *vm.Capabilities) { *c = shared; c.ShareMountOptions = "uid=1;reboot" })}, "one shell word"},
		{"a share validator without shares", shareChecker{lifecycle: lifecycle{caps: good}}, "validates shares"},
		{"several arches, no arch validator", lifecycle{caps: with(func(c *vm.Capabilities) { c.Arches = vm.Arches })}, "ArchValidator"},
		{"an unknown arch", lifecycle{caps: with(func(c *vm.Capabilities) { c.Arches = []vm.Arch{"riscv64"} })}, "does not know"},
		{"a forward address that is not one", lifecycle{caps: with(func(c *vm.Capabilities) { c.ForwardIP = "10.0.2.100:80" })}, "forward address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ps := CapabilityProblems(tc.d)
			if tc.want == "" {
				if len(ps) != 0 {
					t.Errorf("problems in facts that agree: %q", ps)
				}
				return
			}
			if !strings.Contains(strings.Join(ps, "\n"), tc.want) {
				t.Errorf("problems %q, want one saying %q", ps, tc.want)
			}
		})
	}
}

// A driver without snapshots passes the not-supported checks through vm's
// helpers without ever reaching a method it lacks.
func TestNotSupportedOnALifecycleDriver(t *testing.T) {
	checkNotSupported(t, lifecycle{caps: good})
	if vm.HostChecks(context.Background(), lifecycle{caps: good}) != nil {
		t.Error("host checks from a driver with none")
	}
}
