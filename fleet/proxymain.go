package fleet

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/agentfleet/agentfleet/internal/egress"
	"github.com/agentfleet/agentfleet/internal/layout"
	"golang.org/x/sys/unix"
)

// The proxy processes: the fleet binary's hidden subcommands, which the
// CLI's main dispatches to before it parses any flag.

// ProxyShimMain is `fleet __proxy KIND DIR` (ProxyCommand), the shim the
// hypervisor starts per guest connection to a proxy, the connection as
// its stdin, stdout and stderr. It hands the connection to the machine's
// proxy server, starting that server if none runs, and exits: a guest's
// open connections cost no process each. Nothing may be printed (it
// would reach the guest), so stderr goes to a file in the machine folder
// first. It returns the exit status.
func ProxyShimMain(args []string) int {
	if len(args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: fleet "+ProxyCommand+" egress|credentials MACHINE_DIR (started by the hypervisor)")
		return 2
	}
	kind, err := egress.ParseKind(args[0])
	if err != nil {
		fmt.Fprintln(os.Stderr, "usage: fleet "+ProxyCommand+" egress|credentials MACHINE_DIR (started by the hypervisor)")
		return 2
	}
	dir := args[1]
	errLog := filepath.Join(dir, layout.ProxyErrorsLog)
	if f, err := os.OpenFile(errLog, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600); err == nil {
		_ = unix.Dup2(int(f.Fd()), 2)
		f.Close()
	} else {
		_ = syscall.Close(2)
	}
	conn := os.Stdin
	os.Stdout.Close()
	if os.Getenv(PerConnectionEnv) == "1" {
		return servePerConnection(dir, kind, conn)
	}
	err = egress.Handoff(dir, kind, conn, func() error { return startProxyServer(dir, errLog) })
	// Our copy must go, or closing the server's would not end the guest's
	// connection.
	conn.Close()
	if err != nil {
		fmt.Fprintln(os.Stderr, time.Now().UTC().Format(time.RFC3339), "proxy shim:", err)
		return 1
	}
	return 0
}

// PerConnectionEnv, set in the hypervisor's environment (never the
// guest's), makes the shim serve its connection itself: the design before
// the per-machine server, a process per connection with no shared cap.
// It exists so `make bench` can measure both side by side.
const PerConnectionEnv = "FLEET_PROXY_PER_CONNECTION"

func servePerConnection(dir string, kind byte, f *os.File) int {
	conn, err := net.FileConn(f)
	f.Close()
	if err != nil {
		fmt.Fprintln(os.Stderr, "proxy:", err)
		return 1
	}
	handlers, _, err := ProxyHandlers(dir)
	if err != nil || handlers[kind] == nil {
		fmt.Fprintln(os.Stderr, "proxy: no handler:", err)
		conn.Close()
		return 1
	}
	handlers[kind](context.Background(), conn)
	return 0
}

// startProxyServer starts `fleet __proxyd DIR` in its own session, so it
// outlives the shim and the fleet command; it inherits the environment,
// and with it the host credential the hypervisor was given.
func startProxyServer(dir, errLog string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(self, ProxyServerCommand, dir)
	if f, err := os.OpenFile(errLog, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600); err == nil {
		cmd.Stderr = f
		defer f.Close()
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	return cmd.Process.Release()
}

// ProxyServerMain is `fleet __proxyd DIR` (ProxyServerCommand): the
// machine's proxy server, until a signal, its folder going or idling
// out. It returns the exit status.
func ProxyServerMain(args []string) int {
	if len(args) != 1 {
		fmt.Fprintln(os.Stderr, "usage: fleet "+ProxyServerCommand+" MACHINE_DIR (started by the proxy shim)")
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	if err := RunProxyServer(ctx, args[0]); err != nil {
		fmt.Fprintln(os.Stderr, time.Now().UTC().Format(time.RFC3339), "proxy server:", err)
		return 1
	}
	return 0
}
