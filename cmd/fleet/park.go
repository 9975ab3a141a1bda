package main

import (
	"fmt"
	"os"
	"time"

	"github.com/agentfleet/agentfleet/fleet"
	"github.com/spf13/cobra"
)

// idleSuspendHelp is --idle-suspend's help on spawn, up and run.
const idleSuspendHelp = "suspend a machine once its agent has waited for input or been done this long\n(e.g. 15m; 0 or off: never); exec, ssh, attach, logs, run, kill, collect\nand fleet top's keys resume it"

// parkPollEnv shortens the parker's poll (tests).
const parkPollEnv = "FLEET_PARK_POLL"

// newParkCmd is `fleet __park FLEET`: the fleet's idle parker, started
// detached by the commands that start a machine with idle_suspend. Its
// output is the fleet's parker log.
func newParkCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:    fleet.ParkCommand + " FLEET",
		Short:  "The fleet's idle parker (started by spawn, up, start and run)",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			g.fleetName = args[0]
			c, err := g.controller(cmd)
			if err != nil {
				return err
			}
			defer c.Close()
			var o fleet.ParkOptions
			if v := os.Getenv(parkPollEnv); v != "" {
				d, err := time.ParseDuration(v)
				if err != nil || d < 100*time.Millisecond {
					return fmt.Errorf("%s=%q is not a duration of at least 100ms", parkPollEnv, v)
				}
				o.Every = d
			}
			return fleet.ParkingOf(c).Run(cmd.Context(), o)
		},
	}
}

// keepAwake resumes the idle-parked machines of ms for a command that
// uses them; the caller calls release when done.
func keepAwake(cmd *cobra.Command, c *fleet.Controller, ms []*fleet.Machine) (release func(), err error) {
	return fleet.ParkingOf(c).KeepAwake(cmd.Context(), ms)
}

// applyIdleSuspend gives an existing machine (fleet up) the idle_suspend
// that --idle-suspend or fleet.hcl says, when either says one.
func (o *machineOpts) applyIdleSuspend(cmd *cobra.Command, c *fleet.Controller, m *fleet.Machine) error {
	proj, err := projectSettings(cmd.Context(), o.project)
	if err != nil {
		return err
	}
	if o.idle == "" && proj.IdleSuspend == "" {
		return nil
	}
	d, err := proj.IdleSuspendFor(o.idle)
	if err != nil || d == m.IdleSuspend() {
		return err
	}
	return fleet.ParkingOf(c).SetIdleSuspend(cmd.Context(), []string{m.Name}, false, d)
}
