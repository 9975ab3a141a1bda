package egress

import (
	"encoding/json"
	"fmt"
	"github.com/agentfleet/agentfleet/internal/layout"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// Mode is how much network a guest gets.
type Mode string

const (
	// ModeOpen is QEMU's ordinary user networking: the guest reaches
	// anything the host reaches. No proxy, no log.
	ModeOpen Mode = "open"
	// ModeAllowlist gives the guest no route out; its only way out is the
	// host proxy, which allows the named domains.
	ModeAllowlist Mode = "allowlist"
	// ModeNone gives the guest no way out at all.
	ModeNone Mode = "none"
)

// ParseMode checks a --egress value.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case ModeOpen, ModeAllowlist, ModeNone:
		return m, nil
	}
	return "", fmt.Errorf("unknown egress mode %q (want open, allowlist or none)", s)
}

// Pattern is one allow or deny entry: an exact domain ("github.com"), every
// subdomain of one ("*.github.com", which does not match github.com itself),
// or an exact IP address, on one port. An entry without a port means 443:
// "github.com:22" names another. The suffix "/raw" lets a CONNECT tunnel to
// it carry any protocol ("github.com:22/raw" for git over SSH); every other
// tunnel must carry TLS to the name it asked for.
type Pattern struct {
	host     Host
	wildcard bool
	port     int // 0 only in deny entries written without a port: every port
	raw      bool
}

// DefaultPort is the port of an allow entry that names none.
const DefaultPort = 443

// ParsePattern checks an allow entry as users write it.
func ParsePattern(s string) (Pattern, error) { return parsePattern(s, DefaultPort) }

// ParseDenyPattern checks a deny entry: without a port it covers every port.
func ParseDenyPattern(s string) (Pattern, error) { return parsePattern(s, 0) }

func parsePattern(s string, defaultPort int) (Pattern, error) {
	bad := func(format string, a ...any) (Pattern, error) {
		return Pattern{}, fmt.Errorf("invalid domain pattern %q: "+format, append([]any{printable(s)}, a...)...)
	}
	rest, raw := strings.CutSuffix(s, "/raw")
	if strings.Contains(rest, "/") {
		return bad("the only suffix is /raw, as in github.com:22/raw")
	}
	hostPart, port := rest, defaultPort
	if h, p, err := net.SplitHostPort(rest); err == nil {
		n, perr := strconv.Atoi(p)
		if perr != nil || n < 1 || n > 65535 || p[0] == '0' || p[0] == '+' {
			return bad("bad port %q", printable(p))
		}
		hostPart, port = h, n
	}
	wild := strings.HasPrefix(hostPart, "*.")
	name := strings.TrimPrefix(hostPart, "*.")
	if strings.Contains(name, "*") {
		return bad("a wildcard may only be the first label, as in *.example.com")
	}
	h, err := ParseHost(name)
	if err != nil {
		return bad("%v", err)
	}
	if wild && h.IP.IsValid() {
		return bad("a wildcard needs a domain, not an address")
	}
	if wild && !strings.Contains(h.Name, ".") {
		return bad("a wildcard over a whole top-level domain is too wide")
	}
	if raw && port == 0 {
		return bad("/raw needs a port, as in github.com:22/raw")
	}
	return Pattern{host: h, wildcard: wild, port: port, raw: raw}, nil
}

// String is the canonical form, port always written, so one entry has one
// spelling in a policy file.
func (p Pattern) String() string {
	h := p.host.String()
	if p.wildcard {
		h = "*." + p.host.Name
	}
	if p.port == 0 {
		return h
	}
	s := net.JoinHostPort(h, strconv.Itoa(p.port))
	if p.raw {
		s += "/raw"
	}
	return s
}

// Raw reports whether a tunnel to this entry may carry any protocol.
func (p Pattern) Raw() bool { return p.raw }

// Match reports whether h on port is covered by the pattern.
func (p Pattern) Match(h Host, port int) bool {
	if p.port != 0 && p.port != port {
		return false
	}
	return p.matchHost(h)
}

func (p Pattern) matchHost(h Host) bool {
	if p.host.IP.IsValid() || h.IP.IsValid() {
		return !p.wildcard && p.host.IP == h.IP && h.IP.IsValid()
	}
	if p.wildcard {
		return strings.HasSuffix(h.Name, "."+p.host.Name)
	}
	return h.Name == p.host.Name
}

// covers is a deny entry's match: a domain also covers its subdomains, so
// "deny x.example" holds even where "*.example" is allowed.
func (p Pattern) covers(h Host, port int) bool {
	if p.port != 0 && p.port != port {
		return false
	}
	if !p.wildcard && p.host.Name != "" && strings.HasSuffix(h.Name, "."+p.host.Name) {
		return true
	}
	return p.matchHost(h)
}

// Presets are named allowlists. "claude" is what a Claude Code agent needs
// besides the model API, which goes through the credential proxy.
var Presets = map[string][]string{
	"claude": {"registry.npmjs.org:443", "github.com:443", "*.github.com:443", "*.githubusercontent.com:443"},
	"none":   {},
}

// Policy is what one VM may reach. It lives on the host, in the machine's
// folder, and the proxy rereads it on every connection, so `fleet net allow`
// takes effect without a restart and nothing in the guest can change it.
type Policy struct {
	Mode  Mode     `json:"mode"`
	Allow []string `json:"allow"`
	Deny  []string `json:"deny,omitempty"`
	// Hosts pins names to addresses, like curl --resolve: for internal
	// mirrors without DNS. The pinned address is still checked.
	Hosts map[string]string `json:"hosts,omitempty"`
}

// Validate checks every pattern and pinned address.
func (p Policy) Validate() error {
	if _, err := ParseMode(string(p.Mode)); err != nil {
		return err
	}
	for _, s := range p.Allow {
		if _, err := ParsePattern(s); err != nil {
			return err
		}
	}
	for _, s := range p.Deny {
		if _, err := ParseDenyPattern(s); err != nil {
			return err
		}
	}
	for name, addr := range p.Hosts {
		if _, err := ParseHost(name); err != nil {
			return fmt.Errorf("hosts: %v", err)
		}
		if _, err := netip.ParseAddr(addr); err != nil {
			return fmt.Errorf("hosts: %q for %s is not an IP address", addr, name)
		}
	}
	return nil
}

// Verdict is a policy's answer for one destination.
type Verdict struct {
	Allow  bool
	Raw    bool // the allowing entry lets a tunnel carry any protocol
	Reason string
}

// Decide says whether the guest may go to h on port, and why. Deny wins
// over allow. Address checks come later, after the name is resolved.
func (p Policy) Decide(h Host, port int) Verdict {
	switch p.Mode {
	case ModeOpen:
		return Verdict{Allow: true, Raw: true, Reason: "egress is open"}
	case ModeNone:
		return Verdict{Reason: "egress is none"}
	}
	for _, s := range p.Deny {
		if pt, err := ParseDenyPattern(s); err == nil && pt.covers(h, port) {
			return Verdict{Reason: "denied by " + pt.String()}
		}
	}
	other := false
	for _, s := range p.Allow {
		pt, err := ParsePattern(s)
		if err != nil {
			continue
		}
		if pt.Match(h, port) {
			return Verdict{Allow: true, Raw: pt.raw, Reason: "allowed by " + pt.String()}
		}
		other = other || pt.matchHost(h)
	}
	if other {
		return Verdict{Reason: fmt.Sprintf(reasonPortPrefix+"%d of %s is not in the allowlist (an entry without a port means %d; name it as %s:%d)", port, h, DefaultPort, h, port)}
	}
	return Verdict{Reason: ReasonNotAllowed}
}

// DeniedAddr says which deny entry written as an address covers a on
// port, or "" if none does. The proxy asks it of every address a name
// resolves to: `fleet net deny 203.0.113.7` holds whatever name leads
// there.
func (p Policy) DeniedAddr(a netip.Addr, port int) string {
	if p.Mode == ModeOpen {
		return ""
	}
	for _, s := range p.Deny {
		pt, err := ParseDenyPattern(s)
		if err != nil || !pt.host.IP.IsValid() || (pt.port != 0 && pt.port != port) {
			continue
		}
		if pt.host.IP.Unmap() == a.Unmap() {
			return "denied by " + pt.String()
		}
	}
	return ""
}

// PinnedAddr is the address the hosts pins give h's name, matched without
// regard to case as DNS names are.
func (p Policy) PinnedAddr(h Host) (string, bool) {
	for name, addr := range p.Hosts {
		if strings.EqualFold(name, h.Name) {
			return addr, true
		}
	}
	return "", false
}

// WithAllowed returns the policy with pattern allowed, and no longer
// denied by an entry for the same name on that port or every port.
func (p Policy) WithAllowed(pattern string) (Policy, error) {
	pt, err := ParsePattern(pattern)
	if err != nil {
		return p, err
	}
	p.Deny = slices.DeleteFunc(slices.Clone(p.Deny), func(s string) bool {
		d, err := ParseDenyPattern(s)
		return err == nil && d.sameName(pt) && (d.port == 0 || d.port == pt.port)
	})
	s := pt.String()
	if !slices.Contains(p.Allow, s) {
		p.Allow = append(slices.Clone(p.Allow), s)
	}
	return p, nil
}

// WithDenied returns the policy with pattern denied, and the allow entries
// it names removed.
func (p Policy) WithDenied(pattern string) (Policy, error) {
	pt, err := ParseDenyPattern(pattern)
	if err != nil {
		return p, err
	}
	p.Allow = slices.DeleteFunc(slices.Clone(p.Allow), func(s string) bool {
		a, err := ParsePattern(s)
		return err == nil && a.sameName(pt) && (pt.port == 0 || a.port == pt.port)
	})
	s := pt.String()
	if !slices.Contains(p.Deny, s) {
		p.Deny = append(slices.Clone(p.Deny), s)
	}
	return p, nil
}

func (p Pattern) sameName(q Pattern) bool { return p.host == q.host && p.wildcard == q.wildcard }

// Build makes a policy from a mode, preset names (user presets first, then
// the built-in ones) and extra domains. It fails on an unknown preset or a
// bad pattern, so nothing half-valid is ever written.
func Build(mode Mode, presets []string, userPresets map[string][]string, allow []string) (Policy, error) {
	p := Policy{Mode: mode, Allow: []string{}}
	if mode != ModeAllowlist {
		return p, nil
	}
	for _, name := range presets {
		list, ok := userPresets[name]
		if !ok {
			list, ok = Presets[name]
		}
		if !ok {
			return Policy{}, fmt.Errorf("unknown egress preset %q (known: %s)", name, strings.Join(presetNames(userPresets), ", "))
		}
		for _, s := range list {
			var err error
			if p, err = p.WithAllowed(s); err != nil {
				return Policy{}, fmt.Errorf("preset %s: %w", name, err)
			}
		}
	}
	for _, s := range allow {
		var err error
		if p, err = p.WithAllowed(s); err != nil {
			return Policy{}, err
		}
	}
	return p, nil
}

func presetNames(user map[string][]string) []string {
	var names []string
	for n := range Presets {
		names = append(names, n)
	}
	for n := range user {
		if _, ok := Presets[n]; !ok {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	return names
}

// PolicyFile is where a machine's policy lives in its folder.
const PolicyFile = layout.PolicyFile

// LoadPolicy reads a machine's policy. A missing or unreadable policy is an
// error, and callers treat it as "deny everything".
func LoadPolicy(dir string) (Policy, error) {
	b, err := os.ReadFile(filepath.Join(dir, PolicyFile))
	if err != nil {
		return Policy{}, err
	}
	var p Policy
	if err := json.Unmarshal(b, &p); err != nil {
		return Policy{}, fmt.Errorf("%s: %w", PolicyFile, err)
	}
	return p, p.Validate()
}

// SavePolicy writes a machine's policy atomically (a reader sees the old or
// the new file, never half of one).
func SavePolicy(dir string, p Policy) error {
	if err := p.Validate(); err != nil {
		return err
	}
	b, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		return err
	}
	return writeAtomic(dir, PolicyFile, append(b, '\n'))
}

// writeAtomic replaces dir/name with b through a temporary file and a
// rename, so a reader in another process sees the old file or the new.
func writeAtomic(dir, name string, b []byte) error {
	tmp, err := os.CreateTemp(dir, "."+name+"-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), filepath.Join(dir, name))
}

// The reasons of refusals an allowlist entry would have let through.
const (
	ReasonNotAllowed = "not in the allowlist"
	reasonPortPrefix = "port "
)

// Allowable says e is a refusal that allowing its host (fleet net allow)
// would have let through: not a deny entry, a private address, a name
// that does not resolve or a tunnel that broke the rules.
func (e Entry) Allowable() bool {
	return e.Proxy == ProxyEgress && e.Verdict == VerdictDeny && e.Host != "" &&
		(e.Reason == ReasonNotAllowed || (strings.HasPrefix(e.Reason, reasonPortPrefix) && strings.Contains(e.Reason, "is not in the allowlist")))
}
