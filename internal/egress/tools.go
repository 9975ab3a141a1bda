package egress

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The model API can reach the network for its caller: its web fetch tool
// fetches URLs, MCP servers are connected to, code execution runs in a
// sandbox, and image and document blocks may name a URL for the API to
// fetch. Through the credential proxy all of that would be the guest's,
// whatever its egress policy says. So every request body is read, and each
// such part is refused or confined to the machine's policy. Tool types are
// matched against a list of those known to stay inside it, not a list of
// those known not to: a tool type the API adds later is refused until it
// is looked at.
//
// Kept as they are:
//   - client tools (no type, or "custom"): the guest runs them itself,
//     through its own egress proxy;
//   - bash_*, text_editor_*, computer_*, memory_*: defined by the API but
//     run by the guest, like client tools;
//   - web_search_*: its results come from the API's search index; it does
//     not fetch a URL the guest chooses;
//   - tool_search_tool_*: it searches the request's own tool definitions;
//   - mcp_toolset: it only selects tools of an MCP server, and every
//     server in mcp_servers is checked.
//
// Confined or refused, unless the machine's egress is open:
//   - web_fetch_*: its allowed_domains is set to the names the policy
//     allows (intersected with the guest's own list, less its
//     blocked_domains); with none left the call is refused;
//   - mcp_servers: each url's host and port must be allowed by the policy;
//   - image and document sources of type url: likewise;
//   - code_execution_* and container: refused, the sandbox's own network
//     reach is the API's to decide, not the policy's;
//   - any other typed tool: refused.
//   - anthropic-beta values that switch these on (code-execution-*,
//     skills-*, mcp-client-*, web-fetch-*) are dropped unless the call
//     uses the feature and it passed.

// confine refuses or confines every part of r that makes the API reach
// the network, against pol. It returns why it refuses, or "" to forward.
// polErr is why the policy could not be read: then nothing reaching the
// network passes.
func confine(r *apiRequest, pol Policy, polErr error) string {
	if polErr != nil {
		pol = Policy{Mode: ModeNone}
	}
	if r.Malformed != "" {
		return r.Malformed
	}
	open := pol.Mode == ModeOpen
	unreadable := func(what string) string {
		if polErr != nil {
			return what + " would reach the network, and this machine's egress policy cannot be read (" + shortErr(polErr) + ")"
		}
		return ""
	}
	for i, t := range r.Tools {
		m, ok := t.(map[string]any)
		if !ok {
			return "a tools entry is not an object"
		}
		tv, hasType := m["type"]
		typ, isString := tv.(string)
		if hasType && !isString {
			return "a tool's type is not a string"
		}
		switch toolKindOf(typ) {
		case toolSafe:
			continue
		case toolFetch:
			if open {
				continue
			}
			if why := unreadable("the web fetch tool"); why != "" {
				return why
			}
			changed, why := confineFetch(m, pol)
			if why != "" {
				return why
			}
			if changed {
				r.Tools[i], r.toolsChanged = m, true
			}
		case toolCode:
			if !open {
				return "the code execution tool (" + printable(typ) + ") runs in the API's sandbox, whose network this machine's egress policy does not govern; it is refused unless egress is open"
			}
		default:
			if !open {
				return "tool type " + printable(typ) + " is not one fleet knows to stay within this machine's egress policy; it is refused unless egress is open"
			}
		}
	}
	if r.Container && !open {
		return "a code execution container runs in the API's sandbox, whose network this machine's egress policy does not govern; it is refused unless egress is open"
	}
	for _, s := range r.MCPServers {
		m, ok := s.(map[string]any)
		if !ok {
			return "an mcp_servers entry is not an object"
		}
		u, _ := m["url"].(string)
		if why := unreadable("the MCP server " + printable(u)); why != "" {
			return why
		}
		if ok, why := urlAllowed(pol, u); !ok {
			return "the MCP server " + printable(u) + " is not reachable under this machine's egress policy: " + why
		}
	}
	for _, u := range r.URLs {
		if why := unreadable("a block whose source is the URL " + printable(u)); why != "" {
			return why
		}
		if ok, why := urlAllowed(pol, u); !ok {
			return "the API would fetch " + printable(u) + " for this call, and it is not reachable under this machine's egress policy: " + why
		}
	}
	return ""
}

type toolKind int

const (
	toolUnknown toolKind = iota
	toolSafe
	toolFetch
	toolCode
)

func toolKindOf(typ string) toolKind {
	switch {
	case typ == "" || typ == "custom" || typ == "mcp_toolset":
		return toolSafe
	case strings.HasPrefix(typ, "web_fetch_"):
		return toolFetch
	case strings.HasPrefix(typ, "code_execution_"):
		return toolCode
	}
	for _, p := range []string{"web_search_", "bash_", "text_editor_", "computer_", "memory_", "tool_search_tool_"} {
		if strings.HasPrefix(typ, p) {
			return toolSafe
		}
	}
	return toolUnknown
}

// confineFetch sets a web fetch tool's allowed_domains to the names pol
// allows, intersected with the guest's own list and less its
// blocked_domains (the API takes one list or the other). The API's domain
// filter also covers a listed name's subdomains, so a name is given only
// when no deny entry lies at or under it.
func confineFetch(t map[string]any, pol Policy) (changed bool, why string) {
	allowed := fetchDomains(pol)
	var list []any
	if given, ok := t["allowed_domains"]; ok && given != nil {
		gl, ok := given.([]any)
		if !ok {
			return false, "the web fetch tool's allowed_domains is not a list"
		}
		for _, g := range gl {
			s, _ := g.(string)
			if fetchNameAllowed(pol, domainOf(s)) {
				list = append(list, s)
			} else {
				changed = true
			}
		}
	} else {
		changed = true
		for _, n := range allowed {
			list = append(list, n)
		}
	}
	if blocked, ok := t["blocked_domains"]; ok {
		bl, _ := blocked.([]any)
		var names []string
		for _, b := range bl {
			s, _ := b.(string)
			names = append(names, domainOf(s))
		}
		list = slices.DeleteFunc(list, func(v any) bool {
			d := domainOf(v.(string))
			return slices.ContainsFunc(names, func(b string) bool { return b != "" && (d == b || strings.HasSuffix(d, "."+b)) })
		})
		delete(t, "blocked_domains")
		changed = true
	}
	if len(list) == 0 {
		return false, "the web fetch tool may fetch only from this machine's allowed hosts, and none is left to give it (allow one on port 443 with fleet net allow)"
	}
	if changed {
		t["allowed_domains"] = list
	}
	return changed, ""
}

// fetchDomains are the names pol allows the web fetch tool: exact domain
// entries on the web's ports. A wildcard entry cannot be given: the API's
// list has no way to say "subdomains only".
func fetchDomains(pol Policy) []string {
	var out []string
	for _, s := range pol.Allow {
		pt, err := ParsePattern(s)
		if err != nil || pt.wildcard || pt.host.Name == "" {
			continue
		}
		if n := pt.host.Name; !slices.Contains(out, n) && fetchNameAllowed(pol, n) {
			out = append(out, n)
		}
	}
	return out
}

// fetchNameAllowed says pol allows name and its subdomains on 443 or 80
// and denies nothing at or under it: the API's allowed_domains lets the
// tool fetch every subdomain of a name it lists, so a name is given only
// where the policy would let the guest reach those too (an entry and its
// *. wildcard).
func fetchNameAllowed(pol Policy, name string) bool {
	h, err := ParseHost(name)
	if err != nil || h.Name == "" {
		return false
	}
	sub, err := ParseHost("any-subdomain." + name)
	if err != nil {
		return false
	}
	for _, x := range []Host{h, sub} {
		if !pol.Decide(x, 443).Allow && !pol.Decide(x, 80).Allow {
			return false
		}
	}
	for _, s := range pol.Deny {
		d, err := ParseDenyPattern(s)
		if err == nil && d.host.Name != "" && (d.host.Name == h.Name || strings.HasSuffix(d.host.Name, "."+h.Name)) {
			return false
		}
	}
	return true
}

// domainOf is the host of an allowed_domains entry ("example.com/docs").
func domainOf(s string) string {
	s, _, _ = strings.Cut(s, "/")
	return strings.ToLower(s)
}

// urlAllowed says whether the API may reach u for the guest. The URL must
// read the same to every parser: http or https, no user info, no
// backslash, space or control byte.
func urlAllowed(pol Policy, u string) (bool, string) {
	if strings.ContainsFunc(u, func(r rune) bool { return r <= ' ' || r == 0x7f || r == '\\' }) {
		return false, "the URL has a space, a backslash or a control character"
	}
	p, err := url.Parse(u)
	if err != nil || (p.Scheme != "https" && p.Scheme != "http") || p.Host == "" || p.User != nil || p.Opaque != "" {
		return false, "not a plain http(s) URL"
	}
	auth := u[strings.Index(u, "//")+2:]
	if i := strings.IndexAny(auth, "/?#"); i >= 0 {
		auth = auth[:i]
	}
	if strings.Contains(auth, "@") {
		return false, "the URL names a user"
	}
	h, err := ParseHost(p.Hostname())
	if err != nil {
		return false, shortErr(err)
	}
	port := 443
	if p.Scheme == "http" {
		port = 80
	}
	if ps := p.Port(); ps != "" {
		if port, err = strconv.Atoi(ps); err != nil || port < 1 || port > 65535 {
			return false, "bad port"
		}
	}
	v := pol.Decide(h, port)
	if !v.Allow {
		return false, v.Reason
	}
	if why := deniedByAddress(pol, h, port); why != "" {
		return false, why
	}
	return true, v.Reason
}

// lookupNetIP resolves names for deniedByAddress (a variable for tests).
var lookupNetIP = net.DefaultResolver.LookupNetIP

// deniedByAddress applies the policy's deny entries written as addresses
// to a name, as the egress proxy does: the name is resolved here, on the
// host (the API's own resolver may answer otherwise; a deny by name is
// the sure way). A name that does not resolve passes only when no such
// entry exists.
func deniedByAddress(pol Policy, h Host, port int) string {
	if h.IP.IsValid() {
		return pol.DeniedAddr(h.IP, port)
	}
	has := false
	for _, s := range pol.Deny {
		if d, err := ParseDenyPattern(s); err == nil && d.host.IP.IsValid() {
			has = true
			break
		}
	}
	if !has {
		return ""
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	addrs, err := lookupNetIP(ctx, "ip", h.Name)
	if err != nil {
		return "its name does not resolve here, and this machine denies addresses (" + shortErr(err) + ")"
	}
	if name, ok := pol.PinnedAddr(h); ok {
		if a, err := netip.ParseAddr(name); err == nil {
			addrs = append(addrs, a)
		}
	}
	for _, a := range addrs {
		if why := pol.DeniedAddr(a, port); why != "" {
			return h.Name + " resolves to " + a.String() + ", " + why
		}
	}
	return ""
}

// filterBetas drops the anthropic-beta values that switch on a network
// feature the call does not use or was not allowed (confine has refused
// every use that breaks the policy, so a use present here passed).
func filterBetas(h http.Header, r *apiRequest, open bool) {
	vals := h.Values("Anthropic-Beta")
	if len(vals) == 0 {
		return
	}
	uses := func(kind toolKind) bool {
		if r == nil {
			return false
		}
		return slices.ContainsFunc(r.Tools, func(t any) bool {
			m, _ := t.(map[string]any)
			typ, _ := m["type"].(string)
			return toolKindOf(typ) == kind
		})
	}
	var keep []string
	dropped := false
	for _, v := range vals {
		for _, b := range strings.Split(v, ",") {
			b = strings.TrimSpace(b)
			lb := strings.ToLower(b)
			drop := false
			switch {
			case b == "":
				continue
			case open:
			case strings.HasPrefix(lb, "code-execution-"), strings.HasPrefix(lb, "skills-"):
				drop = true
			case strings.HasPrefix(lb, "mcp-client-"):
				drop = r == nil || len(r.MCPServers) == 0
			case strings.HasPrefix(lb, "web-fetch-"):
				drop = !uses(toolFetch)
			}
			if drop {
				dropped = true
			} else {
				keep = append(keep, b)
			}
		}
	}
	if !dropped {
		return
	}
	h.Del("Anthropic-Beta")
	if len(keep) > 0 {
		h.Set("Anthropic-Beta", strings.Join(keep, ","))
	}
}

// refusal is the API error for a request confine refused.
func refusal(why string) string {
	return fmt.Sprintf("fleet credential proxy: %s. The model API's own network tools may reach only what this machine's egress policy allows.", why)
}
