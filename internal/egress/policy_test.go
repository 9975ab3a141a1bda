package egress

import (
	"net/netip"
	"strings"
	"testing"
)

func TestParseHost(t *testing.T) {
	good := map[string]string{
		"github.com":            "github.com",
		"API.Anthropic.com":     "api.anthropic.com",
		"xn--bcher-kva.example": "xn--bcher-kva.example",
		"_dmarc.example.com":    "_dmarc.example.com",
		"203.0.113.10":          "203.0.113.10",
		"[2001:db8::1]":         "2001:db8::1",
		"2001:db8::1":           "2001:db8::1",
		"a":                     "a",
	}
	for in, want := range good {
		h, err := ParseHost(in)
		if err != nil || h.String() != want {
			t.Errorf("ParseHost(%q) = %v, %v; want %q", in, h, err, want)
		}
	}
	bad := []string{
		"", "github.com.", ".github.com", "git..hub.com", "github.com\x00.evil.com",
		"user@github.com", "github.com%2f", "git hub.com", "github.com/x", "-github.com",
		"github-.com", "127.1", "2130706433", "0x7f.0.0.1", "0177.0.0.1", "1.2.3.04",
		"[fe80::1%eth0]", "fe80::1%25eth0", "[::1", "gïthub.com", "github.com:443",
		strings.Repeat("a", 64) + ".com", strings.Repeat("a.", 127) + "com",
	}
	for _, in := range bad {
		if h, err := ParseHost(in); err == nil {
			t.Errorf("ParseHost(%q) = %v, want an error", in, h)
		}
	}
}

func TestParseHostPort(t *testing.T) {
	for in, ok := range map[string]bool{
		"github.com:443": true, "[2001:db8::1]:443": true, "github.com": false,
		"github.com:0": false, "github.com:65536": false, "github.com:0443": false,
		"github.com:+443": false, "github.com:https": false, "user@github.com:443": false,
	} {
		_, _, err := ParseHostPort(in)
		if (err == nil) != ok {
			t.Errorf("ParseHostPort(%q) error = %v, want ok=%v", in, err, ok)
		}
	}
}

func TestPatterns(t *testing.T) {
	cases := []struct {
		pattern, host string
		match         bool
	}{
		{"github.com", "github.com", true},
		{"github.com", "api.github.com", false},
		{"github.com", "evilgithub.com", false},
		{"*.github.com", "api.github.com", true},
		{"*.github.com", "a.b.github.com", true},
		{"*.github.com", "github.com", false},
		{"*.github.com", "evilgithub.com", false},
		{"*.github.com", "github.com.evil.com", false},
		{"GitHub.COM", "github.com", true},
		{"203.0.113.10", "203.0.113.10", true},
		{"203.0.113.10", "203.0.113.11", false},
	}
	for _, c := range cases {
		p, err := ParsePattern(c.pattern)
		if err != nil {
			t.Fatalf("ParsePattern(%q): %v", c.pattern, err)
		}
		h, err := ParseHost(c.host)
		if err != nil {
			t.Fatal(err)
		}
		if got := p.Match(h, 443); got != c.match {
			t.Errorf("%q matches %q = %v, want %v", c.pattern, c.host, got, c.match)
		}
	}
	for _, bad := range []string{"*", "*.com", "a.*.com", "*.*.com", "**.github.com", "*github.com", "*.203.0.113.10", "github.com.", "", "exa mple.com"} {
		if _, err := ParsePattern(bad); err == nil {
			t.Errorf("ParsePattern(%q) accepted a bad pattern", bad)
		} else if !strings.Contains(err.Error(), "invalid domain pattern") {
			t.Errorf("ParsePattern(%q) error %q does not say what is wrong", bad, err)
		}
	}
}

func TestRefusedAddr(t *testing.T) {
	host := HostNets{netip.MustParsePrefix("198.51.100.7/24"), netip.MustParsePrefix("2001:db8::5/64")}
	cases := map[string]string{
		"127.0.0.1":            "loopback",
		"127.8.9.10":           "loopback",
		"::1":                  "loopback",
		"10.0.2.2":             "private",
		"172.16.0.1":           "private",
		"192.168.1.1":          "private",
		"169.254.169.254":      "metadata",
		"169.254.10.1":         "link-local",
		"fe80::1":              "link-local",
		"100.64.0.1":           "carrier-grade NAT",
		"100.127.255.255":      "carrier-grade NAT",
		"fd00::1":              "unique-local",
		"fd00:ec2::254":        "metadata",
		"::ffff:127.0.0.1":     "IPv4-mapped",
		"::ffff:8.8.8.8":       "IPv4-mapped",
		"0.0.0.0":              "unspecified",
		"0.1.2.3":              "this-network",
		"::":                   "unspecified",
		"224.0.0.1":            "multicast",
		"ff02::1":              "multicast",
		"255.255.255.255":      "reserved",
		"64:ff9b::7f00:1":      "NAT64",
		"2002:7f00:1::":        "6to4",
		"198.51.100.7":         "this host",
		"198.51.100.0":         "network address of a host subnet",
		"198.51.100.255":       "broadcast address of a host subnet",
		"198.51.100.8":         "",
		"2001:db8::5":          "this host",
		"8.8.8.8":              "",
		"203.0.113.10":         "",
		"2606:4700::6810:84e5": "",
		"100.128.0.1":          "",
	}
	for in, want := range cases {
		got := RefusedAddr(netip.MustParseAddr(in), host)
		if want == "" && got != "" || want != "" && !strings.Contains(got, want) {
			t.Errorf("RefusedAddr(%s) = %q, want %q", in, got, want)
		}
	}
}

func TestPolicyDecide(t *testing.T) {
	p, err := Build(ModeAllowlist, []string{"claude"}, nil, []string{"pypi.org"})
	if err != nil {
		t.Fatal(err)
	}
	decide := func(p Policy, s string) bool {
		h, err := ParseHost(s)
		if err != nil {
			t.Fatal(err)
		}
		return p.Decide(h, 443).Allow
	}
	for host, want := range map[string]bool{
		"registry.npmjs.org": true, "github.com": true, "codeload.github.com": true,
		"objects.githubusercontent.com": true, "pypi.org": true, "api.anthropic.com": false,
		"example.com": false, "npmjs.org": false,
	} {
		if got := decide(p, host); got != want {
			t.Errorf("claude+pypi allows %s = %v, want %v", host, got, want)
		}
	}
	p, _ = p.WithDenied("codeload.github.com")
	if decide(p, "codeload.github.com") || !decide(p, "api.github.com") {
		t.Error("a deny must win over a wildcard allow, and only for its own host")
	}
	p, _ = p.WithAllowed("codeload.github.com")
	if !decide(p, "codeload.github.com") {
		t.Error("allow after deny must allow again")
	}
	if decide(Policy{Mode: ModeNone, Allow: []string{"github.com"}}, "github.com") {
		t.Error("mode none must deny even listed hosts")
	}
}

func TestBuildRefusesUnknownPresetAndBadPattern(t *testing.T) {
	if _, err := Build(ModeAllowlist, []string{"claud"}, nil, nil); err == nil || !strings.Contains(err.Error(), `unknown egress preset "claud"`) {
		t.Errorf("unknown preset: %v", err)
	}
	if _, err := Build(ModeAllowlist, []string{"pypi"}, map[string][]string{"pypi": {"pypi.org", "*.org"}}, nil); err == nil {
		t.Error("a user preset with a too-wide wildcard was accepted")
	}
	p, err := Build(ModeAllowlist, []string{"mirror"}, map[string][]string{"mirror": {"deb.example.com"}}, nil)
	if err != nil || len(p.Allow) != 1 {
		t.Errorf("user preset: %v %v", p, err)
	}
	if _, err := ParseMode("closed"); err == nil {
		t.Error("unknown mode accepted")
	}
}

func TestPolicyFileRoundTripAndValidation(t *testing.T) {
	dir := t.TempDir()
	p, _ := Build(ModeAllowlist, []string{"claude"}, nil, nil)
	p.Hosts = map[string]string{"mirror.corp": "203.0.113.10"}
	if err := SavePolicy(dir, p); err != nil {
		t.Fatal(err)
	}
	got, err := LoadPolicy(dir)
	if err != nil || len(got.Allow) != len(p.Allow) || got.Hosts["mirror.corp"] != "203.0.113.10" {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	bad := p
	bad.Allow = append(bad.Allow, "*")
	if err := SavePolicy(dir, bad); err == nil {
		t.Fatal("an invalid policy was saved")
	}
	if got, _ := LoadPolicy(dir); len(got.Allow) != len(p.Allow) {
		t.Error("a refused save changed the file")
	}
	if _, err := LoadPolicy(t.TempDir()); err == nil {
		t.Error("a missing policy must be an error (and so deny)")
	}
}

func FuzzParseHost(f *testing.F) {
	for _, s := range []string{"github.com", "127.1", "[::1]", "a..b", "x\x00y", "user@h", "h.", "0x7f.1", "*.a.b", "::ffff:127.0.0.1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		h, err := ParseHost(s)
		if err != nil {
			return
		}
		if h.IP.IsValid() == (h.Name != "") {
			t.Fatalf("%q: exactly one of name and IP must be set: %+v", s, h)
		}
		if h.Name != "" {
			if strings.ContainsAny(h.Name, "\x00@%/:[] \\") || strings.HasSuffix(h.Name, ".") || h.Name != strings.ToLower(h.Name) || len(h.Name) > 253 {
				t.Fatalf("%q parsed to unsafe name %q", s, h.Name)
			}
			// The canonical form must parse to itself: what is checked is
			// what is dialed.
			again, err := ParseHost(h.Name)
			if err != nil || again != h {
				t.Fatalf("%q: canonical %q does not round-trip: %v %v", s, h.Name, again, err)
			}
		}
		if h.IP.IsValid() && h.IP.Zone() != "" {
			t.Fatalf("%q: zone accepted", s)
		}
	})
}

func TestPatternPortsAndRaw(t *testing.T) {
	cases := []struct {
		pattern, canonical string
		port               int
		match              bool
		raw                bool
	}{
		{"github.com", "github.com:443", 443, true, false},
		{"github.com", "github.com:443", 22, false, false},
		{"github.com:22", "github.com:22", 22, true, false},
		{"github.com:22", "github.com:22", 443, false, false},
		{"github.com:22/raw", "github.com:22/raw", 22, true, true},
		{"*.example.com:8443", "*.example.com:8443", 8443, true, false},
		{"[2001:db8::1]:443", "[2001:db8::1]:443", 443, true, false},
		{"203.0.113.10:80", "203.0.113.10:80", 80, true, false},
	}
	for _, c := range cases {
		p, err := ParsePattern(c.pattern)
		if err != nil {
			t.Fatalf("ParsePattern(%q): %v", c.pattern, err)
		}
		if p.String() != c.canonical || p.Raw() != c.raw {
			t.Errorf("ParsePattern(%q) = %s raw=%v, want %s raw=%v", c.pattern, p, p.Raw(), c.canonical, c.raw)
		}
		h := p.host
		if c.pattern[0] == '*' {
			h, _ = ParseHost("a.example.com")
		}
		if got := p.Match(h, c.port); got != c.match {
			t.Errorf("%q on port %d = %v, want %v", c.pattern, c.port, got, c.match)
		}
	}
	for _, bad := range []string{"github.com:0", "github.com:65536", "github.com:022", "github.com:ssh", "github.com:22/tcp", "github.com:22/raw/raw", "github.com:", ":22"} {
		if _, err := ParsePattern(bad); err == nil {
			t.Errorf("ParsePattern(%q) accepted a bad pattern", bad)
		}
	}
	if _, err := ParseDenyPattern("github.com/raw"); err == nil {
		t.Error("a deny entry marked raw without a port was accepted")
	}
}

func TestDecidePortsDenySubdomainsAndPins(t *testing.T) {
	p, err := Build(ModeAllowlist, nil, nil, []string{"*.example.test", "git.test:22/raw", "web.test:80"})
	if err != nil {
		t.Fatal(err)
	}
	p, _ = p.WithDenied("x.example.test")
	p.Hosts = map[string]string{"Mirror.Corp": "203.0.113.10"}
	host := func(s string) Host { h, _ := ParseHost(s); return h }
	cases := []struct {
		host        string
		port        int
		allow, raw  bool
		reasonMatch string
	}{
		{"a.example.test", 443, true, false, "allowed by *.example.test:443"},
		{"a.example.test", 80, false, false, "port 80 of a.example.test is not in the allowlist"},
		{"x.example.test", 443, false, false, "denied by x.example.test"},
		{"a.x.example.test", 443, false, false, "denied by x.example.test"},
		{"a.b.x.example.test", 443, false, false, "denied by x.example.test"},
		{"ax.example.test", 443, true, false, "allowed"},
		{"git.test", 22, true, true, "allowed by git.test:22/raw"},
		{"git.test", 443, false, false, "port 443"},
		{"web.test", 80, true, false, "allowed by web.test:80"},
		{"web.test", 443, false, false, "port 443"},
		{"other.test", 443, false, false, "not in the allowlist"},
	}
	for _, c := range cases {
		v := p.Decide(host(c.host), c.port)
		if v.Allow != c.allow || v.Raw != c.raw || !strings.Contains(v.Reason, c.reasonMatch) {
			t.Errorf("%s:%d = %+v, want allow=%v raw=%v reason ~ %q", c.host, c.port, v, c.allow, c.raw, c.reasonMatch)
		}
	}
	if a, ok := p.PinnedAddr(host("mirror.corp")); !ok || a != "203.0.113.10" {
		t.Errorf("a pin written Mirror.Corp does not match mirror.corp: %q %v", a, ok)
	}
	// A port-specific deny leaves other ports alone; an allow lifts the
	// deny that named it.
	p, _ = p.WithDenied("git.test:22")
	if p.Decide(host("git.test"), 22).Allow {
		t.Error("deny git.test:22 did not deny it")
	}
	p, _ = p.WithAllowed("x.example.test")
	if !p.Decide(host("x.example.test"), 443).Allow {
		t.Errorf("allow after deny did not allow again: %+v", p)
	}
}

func TestPresetsSayTheirPorts(t *testing.T) {
	for name, list := range Presets {
		for _, s := range list {
			p, err := ParsePattern(s)
			if err != nil || p.String() != s {
				t.Errorf("preset %s entry %q is not in canonical form with its port (%v)", name, s, err)
			}
		}
	}
}

func TestDeniedAddrCoversOnlyAddressEntries(t *testing.T) {
	p := Policy{Mode: ModeAllowlist, Allow: []string{"allowed.test:443"},
		Deny: []string{"203.0.113.7", "203.0.113.8:80", "2001:db8::1", "allowed.test", "bad entry"}}
	for _, c := range []struct {
		addr string
		port int
		want string
	}{
		{"203.0.113.7", 443, "denied by 203.0.113.7"},
		{"203.0.113.7", 22, "denied by 203.0.113.7"},
		{"::ffff:203.0.113.7", 443, "denied by 203.0.113.7"},
		{"203.0.113.8", 80, "denied by 203.0.113.8:80"},
		{"203.0.113.8", 443, ""},
		{"2001:db8::1", 443, "denied by 2001:db8::1"},
		{"2001:db8::2", 443, ""},
		{"203.0.113.70", 443, ""},
	} {
		if got := p.DeniedAddr(netip.MustParseAddr(c.addr), c.port); got != c.want {
			t.Errorf("%s port %d: %q, want %q", c.addr, c.port, got, c.want)
		}
	}
	p.Mode = ModeOpen
	if got := p.DeniedAddr(netip.MustParseAddr("203.0.113.7"), 443); got != "" {
		t.Errorf("open mode has no proxy to deny with: %q", got)
	}
}
