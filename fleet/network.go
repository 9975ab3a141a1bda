package fleet

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/agentfleet/agentfleet/internal/egress"
	"github.com/agentfleet/agentfleet/internal/execx"
	"github.com/agentfleet/agentfleet/internal/layout"
	"github.com/agentfleet/agentfleet/internal/vm"
)

// Net owns a machine's way out and its model credential: the network
// spec at boot, the proxies started with the hypervisor, policy and
// budget changes on running machines.
type Net struct{ c *Controller }

// Net is the network-and-credentials concern of c.
func (c *Controller) Net() Net { return Net{c} }

// Guest ports of the host proxies, at the driver's ForwardIP.
const (
	EgressProxyPort     = 3128
	CredentialProxyPort = 8119
	// DefaultUpstream is where the credential proxy forwards.
	DefaultUpstream = "https://api.anthropic.com"
)

// NetworkRequest is a spawn's choice of egress and credentials.
type NetworkRequest struct {
	Egress            egress.Policy // built and validated by egress.Build
	Credentials       CredentialsMode
	CredentialCommand string // run on the host at each start; prints the key
	Upstream          string // credential proxy upstream ("" = DefaultUpstream)
	Limits            ProxyLimits
	Spend             egress.SpendConfig // budget and prices (credential proxy only)
}

// credentialsFile holds a machine's token and upstream; the token is not
// the key, and it dies with the machine folder.
const credentialsFile = layout.CredentialsFile

type credentialsConfig struct {
	Token    string `json:"token"`
	Upstream string `json:"upstream"`
	// Inherited are the tokens of the machines this one was forked from:
	// the processes that ran at the fork hold them, and this machine's
	// own proxy (the only one its guest reaches) takes them as its own.
	Inherited []string `json:"inherited,omitempty"`
}

// Normalized is normalize for callers outside a spawn (fleet image warm).
func (r NetworkRequest) Normalized(d vm.Driver) (NetworkRequest, *Network, error) {
	return r.normalize(d)
}

// normalize fills defaults and validates r against the driver. A zero
// request is the behaviour before egress control (no record at all).
func (r NetworkRequest) normalize(d vm.Driver) (NetworkRequest, *Network, error) {
	if r.Egress.Mode == "" && r.Credentials == "" {
		return r, nil, nil
	}
	if r.Egress.Mode == "" {
		r.Egress.Mode = egress.ModeOpen
	}
	if r.Credentials == "" {
		r.Credentials = CredentialsProxy
	}
	if r.Egress.Allow == nil {
		r.Egress.Allow = []string{}
	}
	if err := r.validate(d.Capabilities(), d.Name()); err != nil {
		return r, nil, err
	}
	return r, r.record(), nil
}

func (r NetworkRequest) validate(caps vm.Capabilities, driver string) error {
	if err := r.Egress.Validate(); err != nil {
		return err
	}
	if r.Egress.Mode != egress.ModeOpen && caps.ForwardIP == "" {
		return fmt.Errorf("the %s driver cannot cut a guest off the network, so --egress %s would not hold: use --egress open", driver, r.Egress.Mode)
	}
	if r.Credentials == CredentialsProxy && caps.ForwardIP == "" {
		return fmt.Errorf("the %s driver cannot run the credential proxy: use --credentials env", driver)
	}
	return checkUpstream(r.Upstream)
}

func checkUpstream(s string) error {
	if s == "" {
		return nil
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return fmt.Errorf("credential upstream %q is not an http(s) URL", s)
	}
	return nil
}

func (r NetworkRequest) record() *Network {
	return &Network{Egress: r.Egress.Mode, Credentials: r.Credentials, CredentialCommand: r.CredentialCommand}
}

func newToken() string {
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	return "fleet-" + hex.EncodeToString(b)
}

// writeNetworkFiles puts a new machine's policy and credential-proxy
// settings in its folder, before it boots.
func writeNetworkFiles(m *Machine, r NetworkRequest, token string) error {
	if err := os.MkdirAll(m.Dir, 0o700); err != nil {
		return err
	}
	if r.Egress.Mode != egress.ModeOpen {
		if err := egress.SavePolicy(m.Dir, r.Egress); err != nil {
			return err
		}
	}
	if r.Egress.Mode == egress.ModeAllowlist || r.Credentials == CredentialsProxy {
		if err := saveProxyLimits(m.Dir, r.Limits); err != nil {
			return err
		}
	}
	if r.Credentials == CredentialsProxy {
		up := r.Upstream
		if up == "" {
			up = DefaultUpstream
		}
		b, _ := json.Marshal(credentialsConfig{Token: token, Upstream: up})
		if err := WriteFileAtomic(filepath.Join(m.Dir, credentialsFile), b, 0o600); err != nil {
			return err
		}
		spend := r.Spend
		if spend.Prices == nil {
			spend.Prices = egress.DefaultPrices
		}
		return saveSpend(m.Dir, spend)
	}
	return nil
}

func saveSpend(dir string, c egress.SpendConfig) error {
	b, _ := json.MarshalIndent(c, "", "  ")
	return WriteFileAtomic(filepath.Join(dir, egress.SpendFile), b, 0o600)
}

// guestNetworkEnvKeys are every variable guestNetworkFiles puts in
// /etc/environment.
var guestNetworkEnvKeys = []string{"http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "no_proxy", "NO_PROXY",
	"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "ANTHROPIC_BASE_URL", "ANTHROPIC_AUTH_TOKEN"}

// guestNetworkFiles configures the guest at first boot to use the proxies:
// every tool that honours HTTP(S)_PROXY through /etc/environment (read by
// PAM for every SSH session), sudo keeping those variables, apt, and the
// Docker daemon (the image's drop-in reads /etc/fleet/proxy.env). None of
// this is a control: the guest has no other route, whatever it configures.

func guestNetworkFiles(ip string, n *Network, token string) []vm.File {
	var env, proxyEnv strings.Builder
	var files []vm.File
	if n.Egress == egress.ModeAllowlist {
		proxy := fmt.Sprintf("http://%s:%d", ip, EgressProxyPort)
		noProxy := "localhost,127.0.0.1,::1," + ip
		for _, k := range []string{"http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"} {
			fmt.Fprintf(&proxyEnv, "%s=%s\n", k, proxy)
		}
		fmt.Fprintf(&proxyEnv, "no_proxy=%s\nNO_PROXY=%s\n", noProxy, noProxy)
		env.WriteString(proxyEnv.String())
		files = append(files,
			vm.File{Path: "/etc/fleet/proxy.env", Content: proxyEnv.String(), Mode: "0644"},
			vm.File{Path: "/etc/apt/apt.conf.d/90fleet-proxy", Mode: "0644",
				Content: fmt.Sprintf("Acquire::http::Proxy %q;\nAcquire::https::Proxy %q;\n", proxy, proxy)},
			vm.File{Path: "/etc/sudoers.d/90-fleet-proxy", Mode: "0440",
				Content: "Defaults env_keep += \"http_proxy https_proxy HTTP_PROXY HTTPS_PROXY no_proxy NO_PROXY\"\n"},
		)
	}
	if n.Egress != egress.ModeOpen {
		// Update checks and telemetry would only fill the audit log.
		env.WriteString("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1\n")
	}
	if n.Credentials == CredentialsProxy {
		fmt.Fprintf(&env, "ANTHROPIC_BASE_URL=http://%s:%d\nANTHROPIC_AUTH_TOKEN=%s\n", ip, CredentialProxyPort, token)
	}
	if env.Len() > 0 {
		files = append(files, vm.File{Path: "/etc/environment", Content: env.String(), Append: true})
	}
	return files
}

// networkSpec is how the driver wires m's network: restricted unless open,
// one forward per proxy (this binary, started by the hypervisor for each
// guest connection), and the host credential in the hypervisor's
// environment.
func (nt Net) networkSpec(ctx context.Context, m *Machine) (vm.Network, error) {
	out, err := nt.networkShape(m)
	if err != nil || m.Network == nil || m.Network.Credentials != CredentialsProxy {
		return out, err
	}
	cred, err := nt.hostCredential(ctx, m.Network.CredentialCommand)
	if err != nil {
		return vm.Network{}, err
	}
	// Always set, so an inherited value can never stand in for it.
	v := ""
	if cred.Value != "" {
		v = string(cred.Kind) + ":" + cred.Value
	}
	out.Env = append(out.Env, CredentialEnv+"="+v)
	return out, nil
}

// networkShape is m's network wiring without the host credential: the
// restriction and the forwards. A warm template is made with this alone,
// so it never holds a secret.
func (nt Net) networkShape(m *Machine) (vm.Network, error) {
	n := m.Network
	if n == nil || (n.Egress == egress.ModeOpen && n.Credentials != CredentialsProxy) {
		return vm.Network{}, nil
	}
	self := nt.c.Self
	if self == "" {
		exe, err := os.Executable()
		if err != nil {
			return vm.Network{}, fmt.Errorf("find the fleet binary for the proxies: %w", err)
		}
		self = exe
	}
	out := vm.Network{Restrict: n.Egress != egress.ModeOpen}
	if n.Egress == egress.ModeAllowlist {
		out.Forwards = append(out.Forwards, vm.Forward{GuestPort: EgressProxyPort, Command: []string{self, ProxyCommand, "egress", m.Dir}})
	}
	if n.Credentials == CredentialsProxy {
		out.Forwards = append(out.Forwards, vm.Forward{GuestPort: CredentialProxyPort, Command: []string{self, ProxyCommand, "credentials", m.Dir}})
	}
	return out, nil
}

// ProxyCommand is the hidden subcommand the hypervisor runs per guest
// connection to a proxy.
const ProxyCommand = "__proxy"

// CredentialEnv carries the host credential to the credential proxy, as
// KIND:VALUE, through the hypervisor's environment.
const CredentialEnv = "FLEET_UPSTREAM_CREDENTIAL"

// ParseCredentialEnv reads CredentialEnv's value.
func ParseCredentialEnv(v string) egress.Credential {
	kind, val, ok := strings.Cut(v, ":")
	if !ok || val == "" {
		return egress.Credential{}
	}
	switch k := egress.CredentialKind(kind); k {
	case egress.APIKey, egress.OAuthToken:
		return egress.Credential{Kind: k, Value: val}
	}
	return egress.Credential{}
}

// hostCredential finds the model credential on the host: the output of the
// user's credential command, else ANTHROPIC_API_KEY or
// CLAUDE_CODE_OAUTH_TOKEN. It is resolved when a machine starts (spawn, up,
// start), while the user is there to unlock a password manager.
func (nt Net) hostCredential(ctx context.Context, command string) (egress.Credential, error) {
	// Once per distinct command: machines naming different commands get
	// each its own credential, and one command is not run per machine.
	nt.c.credMu.Lock()
	defer nt.c.credMu.Unlock()
	if r, ok := nt.c.creds[command]; ok {
		return r.cred, r.err
	}
	cred, err := nt.resolveCredential(ctx, command)
	if nt.c.creds == nil {
		nt.c.creds = map[string]credResult{}
	}
	nt.c.creds[command] = credResult{cred, err}
	return cred, err
}

func (nt Net) resolveCredential(ctx context.Context, command string) (egress.Credential, error) {
	var cred egress.Credential
	if command == "" {
		getenv := nt.c.Getenv
		if getenv == nil {
			getenv = os.Getenv
		}
		cred, _ = egress.CredentialFromEnv(getenv)
	} else {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		out, err := nt.c.runner().Run(cctx, execx.Cmd{Name: "sh", Args: []string{"-c", command}})
		if err != nil {
			// The command's output may hold a secret: say only how it failed.
			var re *execx.RunError
			if errors.As(err, &re) {
				err = fmt.Errorf("exit status %d", re.ExitCode)
			}
			return cred, fmt.Errorf("credential command failed: %w", err)
		}
		v := strings.TrimSpace(string(out))
		kind := egress.APIKey
		if strings.HasPrefix(v, "sk-ant-oat") {
			kind = egress.OAuthToken
		}
		if v == "" || strings.ContainsAny(v, "\n\r") {
			return cred, errors.New("credential command must print one line: the key")
		}
		cred = egress.Credential{Kind: kind, Value: v}
	}
	if cred.Value == "" {
		nt.c.say("warning: no ANTHROPIC_API_KEY or CLAUDE_CODE_OAUTH_TOKEN here: the credential proxy will refuse the agents' API calls")
	}
	return cred, nil
}

// LoadCredentialsConfig reads a machine's token and upstream (for the
// credential proxy process).
func LoadCredentialsConfig(dir string) (token, upstream string, err error) {
	c, err := loadCredentials(dir)
	return c.Token, c.Upstream, err
}

func loadCredentials(dir string) (credentialsConfig, error) {
	var c credentialsConfig
	b, err := os.ReadFile(filepath.Join(dir, credentialsFile))
	if err == nil {
		err = json.Unmarshal(b, &c)
	}
	return c, err
}

// writeForkNetworkFiles gives a fork's child the network of its source as
// it stands now (policy, limits, budget and prices, upstream) with its own
// token and its own count from zero; the source's token is inherited.
func writeForkNetworkFiles(src, dst *Machine, token string) error {
	if err := os.MkdirAll(dst.Dir, 0o700); err != nil {
		return err
	}
	if p, err := egress.LoadPolicy(src.Dir); err == nil {
		if err := egress.SavePolicy(dst.Dir, p); err != nil {
			return err
		}
	} else if !os.IsNotExist(err) {
		return fmt.Errorf("read %s's egress policy: %w", src.Name, err)
	}
	if _, err := os.Stat(filepath.Join(src.Dir, proxyLimitsFile)); err == nil {
		if err := saveProxyLimits(dst.Dir, loadProxyLimits(src.Dir)); err != nil {
			return err
		}
	}
	c, err := loadCredentials(src.Dir)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read %s's credential settings: %w", src.Name, err)
	}
	c.Inherited = append(append([]string(nil), c.Inherited...), c.Token)
	c.Token = token
	b, _ := json.Marshal(c)
	if err := WriteFileAtomic(filepath.Join(dst.Dir, credentialsFile), b, 0o600); err != nil {
		return err
	}
	spend, err := egress.LoadSpendConfig(src.Dir)
	if err != nil {
		return fmt.Errorf("read %s's budget: %w", src.Name, err)
	}
	return saveSpend(dst.Dir, spend)
}

// ChangePolicy applies change to the egress policy of the named machines
// (or all). Every new policy is computed and checked before any is written,
// so a bad pattern or an unsuitable machine changes nothing. Running
// proxies pick the change up on their next connection, and cut open
// tunnels to hosts no longer allowed.
func (nt Net) ChangePolicy(ctx context.Context, names []string, all bool, change func(egress.Policy) (egress.Policy, error)) ([]*Machine, error) {
	unlock, _, ms, err := nt.c.lockSelected(ctx, names, all)
	if err != nil {
		return nil, err
	}
	defer unlock()
	next := make([]egress.Policy, len(ms))
	for i, m := range ms {
		switch {
		case m.Network == nil || m.Network.Egress == egress.ModeOpen:
			return nil, fmt.Errorf("%s has open egress: there is no policy to change (spawn with --egress allowlist)", m.Name)
		case m.Network.Egress == egress.ModeNone:
			return nil, fmt.Errorf("%s was spawned with --egress none: it has no proxy a policy could open", m.Name)
		}
		p, err := egress.LoadPolicy(m.Dir)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", m.Name, err)
		}
		if next[i], err = change(p); err != nil {
			return nil, err
		}
	}
	for i, m := range ms {
		if err := egress.SavePolicy(m.Dir, next[i]); err != nil {
			return nil, fmt.Errorf("%s: %w", m.Name, err)
		}
		// A machine on another host reads its own copy.
		if err := vm.PushFiles(ctx, nt.c.Driver, nt.c.spec(m, vm.Seed{}), layout.PolicyFile); err != nil {
			return nil, fmt.Errorf("%s: the policy is saved here but did not reach its node: %w", m.Name, err)
		}
	}
	return ms, nil
}

// Policy returns m's egress policy (open for machines without one).
func Policy(m *Machine) (egress.Policy, error) {
	if m.Network == nil || m.Network.Egress == egress.ModeOpen {
		return egress.Policy{Mode: egress.ModeOpen, Allow: []string{}}, nil
	}
	return egress.LoadPolicy(m.Dir)
}

// bootSpec is spec plus what only a boot needs: the network wiring and the
// host credential for the proxies.
func (nt Net) bootSpec(ctx context.Context, m *Machine, seed vm.Seed) (vm.Spec, error) {
	s := nt.c.spec(m, seed)
	n, err := nt.networkSpec(ctx, m)
	s.Network = n
	return s, err
}

// ProxyLimits bound what one machine's proxying may hold on the host.
type ProxyLimits struct {
	MaxConnections int `json:"max_connections,omitempty"` // 0: egress.DefaultMaxConns
	IdleTimeoutSec int `json:"idle_timeout_seconds,omitempty"`
	// New connections a second, sustained and at once (0: egress's
	// DefaultConnRate and DefaultConnBurst).
	ConnectionsPerSecond float64 `json:"connections_per_second,omitempty"`
	ConnectionBurst      int     `json:"connection_burst,omitempty"`
}

// proxyLimitsFile holds a machine's ProxyLimits; the controller writes it
// at spawn, the proxy server reads it when it starts.
const proxyLimitsFile = layout.ProxyLimitsFile

func saveProxyLimits(dir string, l ProxyLimits) error {
	b, _ := json.Marshal(l)
	return WriteFileAtomic(filepath.Join(dir, proxyLimitsFile), b, 0o600)
}

func loadProxyLimits(dir string) ProxyLimits {
	var l ProxyLimits
	if b, err := os.ReadFile(filepath.Join(dir, proxyLimitsFile)); err == nil {
		_ = json.Unmarshal(b, &l)
	}
	return l
}

// PullAudit brings m's audit log here from where m runs, for a machine on
// another host (a Slurm node): the node's proxies write it there. A no-op
// for a machine on this host. With follow it keeps pulling, every 2 s,
// until stop (always set) is called; err is the first pull's.
func (nt Net) PullAudit(ctx context.Context, m *Machine, follow bool) (stop func(), err error) {
	if _, ok := nt.c.Driver.(vm.RemoteFolder); !ok {
		return func() {}, nil
	}
	pull := func(ctx context.Context) error {
		return vm.PullFiles(ctx, nt.c.Driver, nt.c.spec(m, vm.Seed{}), layout.AuditFile)
	}
	if err = pull(ctx); err != nil {
		err = Named(m.Name, fmt.Errorf("pull the audit log from its node: %w", err))
	}
	if !follow {
		return func() {}, err
	}
	fctx, cancel := context.WithCancel(ctx)
	go func() {
		for {
			select {
			case <-fctx.Done():
				return
			case <-time.After(2 * time.Second):
				_ = pull(fctx) // the node may be gone: what was pulled stays
			}
		}
	}()
	return cancel, err
}
