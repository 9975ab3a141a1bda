package egress

import "net/netip"

// refusedPrefixes are address ranges no guest may reach through the proxy,
// whatever name led there: they are the host itself, its networks, the
// cloud's metadata service, or IPv6 forms that embed an IPv4 address.
var refusedPrefixes = []struct {
	prefix netip.Prefix
	why    string
}{
	{netip.MustParsePrefix("169.254.169.254/32"), "a cloud metadata address"},
	{netip.MustParsePrefix("fd00:ec2::254/128"), "a cloud metadata address"},
	{netip.MustParsePrefix("0.0.0.0/8"), "a this-network address"},
	{netip.MustParsePrefix("100.64.0.0/10"), "a carrier-grade NAT address"},
	{netip.MustParsePrefix("192.0.0.0/24"), "a reserved address"},
	{netip.MustParsePrefix("240.0.0.0/4"), "a reserved address"},
	{netip.MustParsePrefix("::/96"), "an IPv4-compatible IPv6 address"},
	{netip.MustParsePrefix("64:ff9b::/96"), "a NAT64 address"},
	{netip.MustParsePrefix("64:ff9b:1::/48"), "a NAT64 address"},
	{netip.MustParsePrefix("2002::/16"), "a 6to4 address"},
	{netip.MustParsePrefix("2001::/32"), "a Teredo address"},
	{netip.MustParsePrefix("fec0::/10"), "a site-local address"},
	{netip.MustParsePrefix("100::/64"), "a discard address"},
}

// HostNets are the host's interface addresses with their prefixes.
type HostNets []netip.Prefix

// why says whether a is one of the host's own addresses, or the network
// or broadcast address of one of its IPv4 subnets: each reaches the host
// (or every machine on its network) whatever its class.
func (n HostNets) why(a netip.Addr) string {
	for _, p := range n {
		switch {
		case p.Addr() == a:
			return "an address of this host"
		case !p.Addr().Is4() || p.Bits() >= 31 || !p.Contains(a):
		case p.Masked().Addr() == a:
			return "the network address of a host subnet"
		case lastAddr(p) == a:
			return "the broadcast address of a host subnet"
		}
	}
	return ""
}

// lastAddr is the highest address of an IPv4 prefix.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v |= 1<<(32-p.Bits()) - 1
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// RefusedAddr says why a guest may not connect to a, or "" if it may.
// host are the host's own interface addresses and subnets, refused whatever
// their class (a public address on the host would otherwise reach its
// services).
func RefusedAddr(a netip.Addr, host HostNets) string {
	switch {
	case !a.IsValid():
		return "an invalid address"
	case a.Is4In6():
		return "an IPv4-mapped IPv6 address"
	case a.Zone() != "":
		return "a scoped address"
	case a.IsUnspecified():
		return "the unspecified address"
	case a.IsLoopback():
		return "a loopback address"
	}
	for _, r := range refusedPrefixes {
		if r.prefix.Contains(a) {
			return r.why
		}
	}
	switch {
	case a.IsLinkLocalUnicast():
		return "a link-local address"
	case a.IsPrivate() && a.Is4():
		return "a private address"
	case a.IsPrivate():
		return "a unique-local address"
	case a.IsMulticast(), a.IsLinkLocalMulticast(), a.IsInterfaceLocalMulticast():
		return "a multicast address"
	case a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return "the broadcast address"
	}
	return host.why(a)
}
