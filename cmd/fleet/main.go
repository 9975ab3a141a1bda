// Command fleet runs coding agents in throwaway VMs. main only wires flags
// to the builder, fleet and images packages.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"syscall"

	"github.com/agentfleet/agentfleet/fleet"
	"github.com/agentfleet/agentfleet/internal/termsafe"
)

// exitError carries a specific exit status (e.g. a remote command's).
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

func main() {
	// The hypervisor runs this per guest connection to a proxy: no flags,
	// no cobra, nothing printed.
	if len(os.Args) > 1 && os.Args[1] == fleet.ProxyCommand {
		log.SetOutput(io.Discard)
		os.Exit(fleet.ProxyShimMain(os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == fleet.ProxyServerCommand {
		log.SetOutput(io.Discard)
		os.Exit(fleet.ProxyServerMain(os.Args[2:]))
	}
	if len(os.Args) > 1 && driverCommands[os.Args[1]] != nil {
		os.Exit(driverCommands[os.Args[1]](os.Args[2:]))
	}
	// The Packer SDK's communicators log through the standard logger:
	// debug output, which the root command's --debug turns back on.
	log.SetOutput(io.Discard)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := newRootCmd().ExecuteContext(ctx)
	var ee exitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		os.Exit(exitStatus(ee.code))
	default:
		// Errors quote guests (stderr, names, states): never raw.
		fmt.Fprintln(os.Stderr, "fleet: "+termsafe.Text(err.Error()))
		if ctx.Err() != nil {
			os.Exit(130)
		}
		os.Exit(1)
	}
}
