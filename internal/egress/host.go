// Package egress is the host side of a guest's only way out: a policy of
// allowed domains, the address classes no guest may reach whatever a name
// resolves to, an HTTP proxy that enforces both and logs every decision, and
// the credential proxy that swaps a per-VM token for the real model API key.
//
// The proxies serve one connection each: QEMU starts them per guest
// connection (guestfwd cmd:), so they live exactly as long as the VM that
// uses them and need no daemon. Everything here is plain Go over net.Conn so
// it is tested without a VM.
package egress

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// Host is a checked destination: a lower-case DNS name or an IP literal,
// never both.
type Host struct {
	Name string
	IP   netip.Addr
}

func (h Host) String() string {
	if h.IP.IsValid() {
		return h.IP.String()
	}
	return h.Name
}

const (
	maxNameLen  = 253
	maxLabelLen = 63
)

// ParseHost checks a host from a CONNECT line, an absolute URL or an allow
// pattern. It is strict on purpose: the name checked must be the name
// connected to, so anything a resolver or a URL parser could read two ways
// (trailing dots, userinfo, percent signs, NUL bytes, numeric shorthand like
// 127.1) is refused rather than normalized.
func ParseHost(s string) (Host, error) {
	switch {
	case s == "":
		return Host{}, fmt.Errorf("empty host")
	case len(s) > maxNameLen:
		return Host{}, fmt.Errorf("host is longer than %d characters", maxNameLen)
	}
	if strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]") {
		s = s[1 : len(s)-1]
	}
	if strings.ContainsAny(s, ":") {
		ip, err := netip.ParseAddr(s)
		if err != nil || !ip.Is6() || ip.Zone() != "" {
			return Host{}, fmt.Errorf("%q is not a valid IPv6 address", s)
		}
		return Host{IP: ip}, nil
	}
	if ip, err := netip.ParseAddr(s); err == nil {
		return Host{IP: ip}, nil
	}
	name := strings.ToLower(s)
	if strings.HasSuffix(name, ".") {
		return Host{}, fmt.Errorf("host %q ends with a dot", s)
	}
	labels := strings.Split(name, ".")
	for _, l := range labels {
		if err := checkLabel(l); err != nil {
			return Host{}, fmt.Errorf("host %q: %w", s, err)
		}
	}
	if isNumeric(labels[len(labels)-1]) {
		return Host{}, fmt.Errorf("host %q looks like a numeric address but is not a dotted-quad IPv4 address", s)
	}
	return Host{Name: name}, nil
}

func checkLabel(l string) error {
	if l == "" {
		return fmt.Errorf("empty label")
	}
	if len(l) > maxLabelLen {
		return fmt.Errorf("label longer than %d characters", maxLabelLen)
	}
	for i := 0; i < len(l); i++ {
		c := l[i]
		ok := c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_'
		if !ok {
			return fmt.Errorf("invalid character %q", c)
		}
	}
	if l[0] == '-' || l[len(l)-1] == '-' {
		return fmt.Errorf("label %q starts or ends with a hyphen", l)
	}
	return nil
}

func isNumeric(l string) bool {
	if strings.HasPrefix(l, "0x") {
		return true
	}
	for i := 0; i < len(l); i++ {
		if l[i] < '0' || l[i] > '9' {
			return false
		}
	}
	return true
}

// ParseHostPort splits and checks "host:port" as a CONNECT line carries it.
func ParseHostPort(hostport string) (Host, int, error) {
	hs, ps, err := net.SplitHostPort(hostport)
	if err != nil {
		return Host{}, 0, fmt.Errorf("%q is not host:port", hostport)
	}
	port, err := strconv.Atoi(ps)
	if err != nil || port < 1 || port > 65535 || ps[0] == '0' || ps[0] == '+' {
		return Host{}, 0, fmt.Errorf("bad port %q", ps)
	}
	h, err := ParseHost(hs)
	return h, port, err
}
