package egress

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
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
// or an exact IP address.
type Pattern struct {
	host     Host
	wildcard bool
}

// ParsePattern checks a domain pattern as users write it.
func ParsePattern(s string) (Pattern, error) {
	wild := strings.HasPrefix(s, "*.")
	rest := strings.TrimPrefix(s, "*.")
	if strings.Contains(rest, "*") {
		return Pattern{}, fmt.Errorf("invalid domain pattern %q: a wildcard may only be the first label, as in *.example.com", s)
	}
	h, err := ParseHost(rest)
	if err != nil {
		return Pattern{}, fmt.Errorf("invalid domain pattern %q: %v", s, err)
	}
	if wild && h.IP.IsValid() {
		return Pattern{}, fmt.Errorf("invalid domain pattern %q: a wildcard needs a domain, not an address", s)
	}
	if wild && !strings.Contains(h.Name, ".") {
		return Pattern{}, fmt.Errorf("invalid domain pattern %q: a wildcard over a whole top-level domain is too wide", s)
	}
	return Pattern{host: h, wildcard: wild}, nil
}

func (p Pattern) String() string {
	if p.wildcard {
		return "*." + p.host.Name
	}
	return p.host.String()
}

// Match reports whether h is covered by the pattern.
func (p Pattern) Match(h Host) bool {
	if p.host.IP.IsValid() || h.IP.IsValid() {
		return !p.wildcard && p.host.IP == h.IP && h.IP.IsValid()
	}
	if p.wildcard {
		return strings.HasSuffix(h.Name, "."+p.host.Name)
	}
	return h.Name == p.host.Name
}

// Presets are named allowlists. "claude" is what a Claude Code agent needs
// besides the model API, which goes through the credential proxy.
var Presets = map[string][]string{
	"claude": {"registry.npmjs.org", "github.com", "*.github.com", "*.githubusercontent.com"},
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
	for _, s := range append(slices.Clone(p.Allow), p.Deny...) {
		if _, err := ParsePattern(s); err != nil {
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

// Decide says whether the guest may go to h, and why. Deny wins over allow.
// Address checks come later, after the name is resolved.
func (p Policy) Decide(h Host) (bool, string) {
	switch p.Mode {
	case ModeOpen:
		return true, "egress is open"
	case ModeNone:
		return false, "egress is none"
	}
	for _, s := range p.Deny {
		if pt, err := ParsePattern(s); err == nil && pt.Match(h) {
			return false, "denied by " + pt.String()
		}
	}
	for _, s := range p.Allow {
		if pt, err := ParsePattern(s); err == nil && pt.Match(h) {
			return true, "allowed by " + pt.String()
		}
	}
	return false, "not in the allowlist"
}

// WithAllowed returns the policy with pattern allowed (and no longer denied).
func (p Policy) WithAllowed(pattern string) (Policy, error) {
	pt, err := ParsePattern(pattern)
	if err != nil {
		return p, err
	}
	s := pt.String()
	p.Deny = remove(p.Deny, s)
	if !slices.Contains(p.Allow, s) {
		p.Allow = append(slices.Clone(p.Allow), s)
	}
	return p, nil
}

// WithDenied returns the policy with pattern denied (and no longer allowed).
func (p Policy) WithDenied(pattern string) (Policy, error) {
	pt, err := ParsePattern(pattern)
	if err != nil {
		return p, err
	}
	s := pt.String()
	p.Allow = remove(p.Allow, s)
	if !slices.Contains(p.Deny, s) {
		p.Deny = append(slices.Clone(p.Deny), s)
	}
	return p, nil
}

func remove(list []string, s string) []string {
	return slices.DeleteFunc(slices.Clone(list), func(x string) bool { return x == s })
}

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
const PolicyFile = "egress.json"

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
	tmp, err := os.CreateTemp(dir, ".egress-*.json")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), filepath.Join(dir, PolicyFile))
}
