package main

import (
	"bytes"
	"context"
	"testing"
)

// fleet top's actions each get a controller of the fleet they act on,
// whose progress is theirs and which writes nothing past the screen.
func TestTopActionsOpenTheNamedFleet(t *testing.T) {
	t.Setenv("FLEET_HOME", t.TempDir())
	t.Setenv("FLEET_PROVIDER", "")
	t.Chdir(t.TempDir())
	g := &globals{fleetName: "here"}
	cmd := newTopCmd(g)
	cmd.SetContext(context.Background())
	acts := g.topActions(cmd)
	var progress bytes.Buffer
	c, err := acts.Open("other", &progress)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Fleet != "other" || c.Progress != &progress || c.BeforeBoot != nil || c.Driver == nil {
		t.Errorf("controller for fleet %q, progress %v, before boot set %v, driver %v", c.Fleet, c.Progress, c.BeforeBoot != nil, c.Driver)
	}
	// The driver's warnings (a guest killed after its grace) go to the
	// action's progress, not over the screen.
	c.Log.Warn("guest did not power off in time")
	if !bytes.Contains(progress.Bytes(), []byte("guest did not power off in time")) {
		t.Errorf("a log line did not go to the action's progress: %q", progress.String())
	}
	if g.fleetName != "here" {
		t.Errorf("opening another fleet changed the command's own to %q", g.fleetName)
	}
	if _, err := acts.Open("../x", &progress); err == nil {
		t.Error("a fleet name that is a path was opened")
	}
	if a := acts.Attach("other", "other-1"); len(a.Args) != 5 || a.Args[1] != "attach" || a.Args[3] != "other" || a.Args[4] != "other-1" {
		t.Errorf("attach runs %v", a.Args)
	}
}
