package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"strings"
	"syscall"

	"github.com/agentfleet/agentfleet/builder"
	"github.com/agentfleet/agentfleet/fleet"
	"github.com/agentfleet/agentfleet/internal/execx"
	"github.com/agentfleet/agentfleet/internal/vm"
	"github.com/spf13/cobra"
)

// check is one line of `fleet doctor`.
type check struct {
	Name   string `json:"name"`
	Status string `json:"status"` // ok, warn, fail
	Detail string `json:"detail"`
}

func newDoctorCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "doctor",
		Short:   "Check this host: QEMU, accelerator, VirtualBox, disk and memory",
		Example: "  fleet doctor\n  fleet doctor --json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := g.layout()
			if err != nil {
				return err
			}
			checks := runChecks(cmd.Context(), execx.Local{}, l.Root)
			failed := false
			for _, c := range checks {
				failed = failed || c.Status == "fail"
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				if err := enc.Encode(checks); err != nil {
					return err
				}
			} else {
				for _, c := range checks {
					fmt.Fprintf(cmd.OutOrStdout(), "%-5s %-19s %s\n", strings.ToUpper(c.Status), c.Name, c.Detail)
				}
			}
			if failed {
				return exitError{1}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// runChecks asks each driver about the host, then adds what holds for all
// of them: arm64 bakes (binfmt), disk and memory.
func runChecks(ctx context.Context, r execx.Runner, home string) []check {
	var out []check
	for _, d := range hostDrivers(r, home) {
		for _, hc := range vm.HostChecks(ctx, d) {
			detail := hc.Detail
			if hc.Hint != "" {
				detail += " (" + hc.Hint + ")"
			}
			out = append(out, check{hc.Name, string(hc.Status), detail})
		}
	}
	if runtime.GOOS == "linux" && vm.HostArch() != vm.ARM64 {
		// A chroot bake of arm64 packages runs them through qemu-user-static.
		if err := builder.CheckForeignChroot(vm.ARM64, "/proc/sys/fs/binfmt_misc"); err != nil {
			out = append(out, check{"arm64 bakes", "warn", err.Error()})
		} else {
			out = append(out, check{"arm64 bakes", "ok", "qemu-user-static is registered with binfmt_misc"})
		}
	}
	var fs syscall.Statfs_t
	_ = os.MkdirAll(home, 0o700)
	if err := syscall.Statfs(home, &fs); err == nil {
		free := int64(fs.Bavail) * int64(fs.Bsize) >> 30
		st := "ok"
		if free < 10 {
			st = "warn"
		}
		out = append(out, check{"disk", st, fmt.Sprintf("%d GiB free under %s", free, home)})
	}
	if mem := fleet.MemAvailableMiB(); mem > 0 {
		out = append(out, check{"memory", "ok", fmt.Sprintf("%d MiB available (about %d machines at 2G)", mem, mem/2048)})
	}
	return out
}
