package fleet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"runtime/debug"
	"time"

	"github.com/agentfleet/agentfleet/internal/egress"
	"github.com/agentfleet/agentfleet/internal/vm"
)

// ProxyServerCommand is the hidden subcommand that runs a machine's proxy
// server; the per-connection shim (ProxyCommand) starts it on demand.
const ProxyServerCommand = "__proxyd"

// proxyIdleExit is how long a machine's proxy server waits without a
// connection before it exits; the next connection starts a new one.
const proxyIdleExit = 60 * time.Second

// RunProxyServer serves the egress and credential proxies of the machine
// in dir until it is stopped, its folder goes or it idles out. The host
// credential comes from the environment, which the server inherits from
// the hypervisor through the shim that started it.
func RunProxyServer(ctx context.Context, dir string) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	handlers, audit, err := ProxyHandlers(dir)
	if err != nil {
		return err
	}
	limits := loadProxyLimits(dir)
	// Many small, short-lived buffers: collect them eagerly, so a machine
	// holding hundreds of tunnels stays well inside its memory bound.
	debug.SetGCPercent(25)
	debug.SetMemoryLimit(40 << 20)
	s := &egress.Server{Handlers: handlers, MaxConns: limits.MaxConnections, Audit: audit, IdleExit: proxyIdleExit,
		ConnRate: limits.ConnectionsPerSecond, ConnBurst: limits.ConnectionBurst}
	err = s.Run(ctx, dir)
	if errors.Is(err, egress.ErrServing) {
		return nil // another shim started it first
	}
	return err
}

// ProxyHandlers are the machine in dir's proxies, by the kind a shim
// hands over: egress if it has a policy, credentials if it has a token.
func ProxyHandlers(dir string) (map[byte]func(context.Context, net.Conn), *egress.Audit, error) {
	limits := loadProxyLimits(dir)
	audit := egress.NewAudit(dir)
	handlers := map[byte]func(context.Context, net.Conn){}
	if _, err := os.Stat(filepath.Join(dir, egress.PolicyFile)); err == nil {
		p := &egress.Proxy{
			Policy:      func() (egress.Policy, error) { return egress.LoadPolicy(dir) },
			Resolver:    net.DefaultResolver,
			Dial:        (&net.Dialer{}).DialContext,
			HostNets:    HostNets(),
			Audit:       audit,
			Recheck:     2 * time.Second,
			IdleTimeout: time.Duration(limits.IdleTimeoutSec) * time.Second,
		}
		handlers[egress.KindEgress] = p.ServeConn
	}
	if cc, err := loadCredentials(dir); err == nil {
		u, err := url.Parse(cc.Upstream)
		if err != nil {
			return nil, nil, fmt.Errorf("credential upstream: %w", err)
		}
		p := &egress.CredProxy{
			Token:      cc.Token,
			Inherited:  cc.Inherited,
			Credential: ParseCredentialEnv(os.Getenv(CredentialEnv)),
			Upstream:   u,
			Transport:  http.DefaultTransport,
			Audit:      audit,
			Meter:      &egress.Meter{Dir: dir},
			Machine:    filepath.Base(dir),
			Spend:      func() (egress.SpendConfig, error) { return egress.LoadSpendConfig(dir) },
			Policy:     credPolicy(dir),
		}
		handlers[egress.KindCredentials] = p.ServeConn
	}
	if len(handlers) == 0 {
		return nil, nil, errors.New("this machine has no proxies")
	}
	return handlers, audit, nil
}

// HostNets are this host's own addresses and subnets, which no guest may
// reach through the proxy whatever their class.
func HostNets() egress.HostNets {
	var out egress.HostNets
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			out = append(out, p)
		}
	}
	return out
}

// The proxy server lives beside the hypervisor process, so every start,
// stop and delete of a machine goes through these: a stopped or destroyed
// machine leaves no server, and a started one never inherits a server
// holding the credential of its previous run.

func (nt Net) startMachine(ctx context.Context, s vm.Spec) (vm.Runtime, error) {
	if st, err := nt.c.Driver.Status(ctx, s); err == nil && st.Power == vm.PowerOff {
		egress.StopServer(s.Dir)
	}
	return nt.c.Driver.Start(ctx, s)
}

func (nt Net) stopMachine(ctx context.Context, s vm.Spec) error {
	err := nt.c.Driver.Stop(ctx, s, nt.c.StopGrace)
	egress.StopServer(s.Dir)
	return err
}

func (nt Net) deleteMachine(ctx context.Context, s vm.Spec) error {
	egress.StopServer(s.Dir)
	return nt.c.Driver.Delete(ctx, s)
}

// credPolicy is what the credential proxy holds the model API's own
// network tools (web fetch, MCP servers, URL sources) to: the machine's
// egress policy, read per call. A machine with no policy file has open
// egress: it reaches anything itself, so the API may too.
func credPolicy(dir string) func() (egress.Policy, error) {
	if _, err := os.Stat(filepath.Join(dir, egress.PolicyFile)); errors.Is(err, os.ErrNotExist) {
		return func() (egress.Policy, error) { return egress.Policy{Mode: egress.ModeOpen}, nil }
	}
	return func() (egress.Policy, error) { return egress.LoadPolicy(dir) }
}
