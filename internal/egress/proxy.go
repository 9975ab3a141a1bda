package egress

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"
)

// Resolver looks names up on the host. net.DefaultResolver is one.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// Proxy is the egress proxy for one machine: HTTP CONNECT and plain HTTP
// with absolute URLs. It serves one guest connection per ServeConn.
type Proxy struct {
	Policy    func() (Policy, error) // reread per connection and while tunnels run
	Resolver  Resolver
	Dial      func(ctx context.Context, network, address string) (net.Conn, error)
	HostAddrs map[netip.Addr]bool // the host's own addresses, always refused
	Audit     *Audit
	// Recheck is how often an open tunnel rereads the policy, so that
	// `fleet net deny` also cuts connections already made.
	Recheck time.Duration
	Timeout time.Duration // for request headers, resolving, dialing, the TLS hello
}

const maxHeaderBytes = 64 << 10

// ServeConn handles one guest connection and closes it.
func (p *Proxy) ServeConn(ctx context.Context, c net.Conn) {
	defer c.Close()
	lim := &limitReader{r: c, n: maxHeaderBytes}
	br := bufio.NewReader(lim)
	c.SetReadDeadline(time.Now().Add(p.timeout()))
	req, err := http.ReadRequest(br)
	if err != nil {
		p.deny(c, Entry{}, http.StatusBadRequest, "malformed request: "+shortErr(err))
		return
	}
	lim.off()
	c.SetReadDeadline(time.Time{})
	if req.Method == http.MethodConnect {
		p.tunnel(ctx, c, br, req)
		return
	}
	p.forward(ctx, c, req)
}

func (p *Proxy) timeout() time.Duration {
	if p.Timeout > 0 {
		return p.Timeout
	}
	return 15 * time.Second
}

// admit runs every check on a destination and dials the checked address.
// On refusal it has already answered the guest and logged the decision.
func (p *Proxy) admit(ctx context.Context, c net.Conn, e *Entry, h Host) (net.Conn, bool) {
	pol, err := p.Policy()
	if err != nil {
		p.deny(c, *e, http.StatusForbidden, "no readable policy: "+shortErr(err))
		return nil, false
	}
	ok, why := pol.Decide(h)
	if !ok {
		p.deny(c, *e, http.StatusForbidden, why)
		return nil, false
	}
	addrs, err := p.resolve(ctx, pol, h)
	if err != nil {
		p.deny(c, *e, http.StatusBadGateway, "cannot resolve: "+shortErr(err))
		return nil, false
	}
	// Every address a name resolves to is checked, not just the one dialed:
	// a name that also points inside is someone's rebinding attempt.
	for _, a := range addrs {
		if r := RefusedAddr(a, p.HostAddrs); r != "" {
			e.Addr = a.String()
			p.deny(c, *e, http.StatusForbidden, fmt.Sprintf("%s resolves to %s", h, r))
			return nil, false
		}
	}
	var last error
	for _, a := range addrs {
		dctx, cancel := context.WithTimeout(ctx, p.timeout())
		up, err := p.Dial(dctx, "tcp", netip.AddrPortFrom(a, uint16(e.Port)).String())
		cancel()
		if err != nil {
			last = err
			continue
		}
		e.Addr = a.String()
		e.Verdict, e.Reason = "allow", why
		if err := p.Audit.Log(*e); err != nil {
			up.Close()
			reply(c, http.StatusForbidden, "the audit log cannot be written")
			return nil, false
		}
		return up, true
	}
	p.deny(c, *e, http.StatusBadGateway, "cannot connect: "+shortErr(last))
	return nil, false
}

func (p *Proxy) resolve(ctx context.Context, pol Policy, h Host) ([]netip.Addr, error) {
	if h.IP.IsValid() {
		return []netip.Addr{h.IP}, nil
	}
	if s, ok := pol.Hosts[h.Name]; ok {
		a, err := netip.ParseAddr(s)
		return []netip.Addr{a}, err
	}
	ctx, cancel := context.WithTimeout(ctx, p.timeout())
	defer cancel()
	addrs, err := p.Resolver.LookupNetIP(ctx, "ip", h.Name)
	if err == nil && len(addrs) == 0 {
		err = errors.New("no addresses")
	}
	// Go's resolver returns IPv4 answers in IPv4-mapped form; those are
	// the host's own lookups, not a guest's trick, so they are unmapped
	// before the checks (a guest's literal ::ffff:… is still refused).
	for i := range addrs {
		addrs[i] = addrs[i].Unmap()
	}
	return addrs, err
}

func (p *Proxy) deny(c net.Conn, e Entry, code int, why string) {
	e.Proxy, e.Verdict, e.Reason = "egress", "deny", why
	p.Audit.Log(e) // a denial stands even if it cannot be logged
	reply(c, code, why)
}

// tunnel serves CONNECT. If the guest then speaks TLS, the server name in its
// ClientHello must be the host it asked for: otherwise an allowed name could
// carry a TLS session to any other site behind the same address.
func (p *Proxy) tunnel(ctx context.Context, c net.Conn, br *bufio.Reader, req *http.Request) {
	e := Entry{Proxy: "egress", Method: "CONNECT"}
	h, port, err := ParseHostPort(req.RequestURI)
	if err != nil {
		e.Host = printable(req.RequestURI)
		p.deny(c, e, http.StatusBadRequest, "malformed host: "+err.Error())
		return
	}
	e.Host, e.Port = h.String(), port
	up, ok := p.admit(ctx, c, &e, h)
	if !ok {
		return
	}
	defer up.Close()
	if _, err := io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		return
	}
	p.splice(ctx, c, br, up, e, h)
}

// clientFirst checks what the guest sends first. If it is a TLS handshake
// record, the ClientHello's server name must be the CONNECT host: otherwise
// an allowed name could carry a TLS session to any other site behind the
// same address. It returns the bytes read, to go upstream unchanged.
func (p *Proxy) clientFirst(ctx context.Context, c net.Conn, br *bufio.Reader, e Entry, h Host) ([]byte, bool) {
	first, err := br.Peek(1) // no deadline: server-first protocols wait here
	if err != nil || first[0] != 0x16 {
		return nil, err == nil
	}
	c.SetReadDeadline(time.Now().Add(p.timeout()))
	defer c.SetReadDeadline(time.Time{})
	sni, raw, err := readClientHello(ctx, br)
	if err != nil {
		p.logDeny(e, "malformed TLS ClientHello: "+shortErr(err))
		return nil, false
	}
	if why := sniMismatch(h, sni); why != "" {
		e.SNI = sni
		p.logDeny(e, why)
		return nil, false
	}
	return raw, true
}

func sniMismatch(h Host, sni string) string {
	switch {
	case h.IP.IsValid() && sni == "":
		return ""
	case sni == "":
		return "TLS without a server name to " + h.String()
	}
	got, err := ParseHost(sni)
	if err != nil || got != h {
		return fmt.Sprintf("TLS server name %q does not match CONNECT host %s", printable(sni), h)
	}
	return ""
}

func (p *Proxy) logDeny(e Entry, why string) {
	e.Verdict, e.Reason = "deny", why
	p.Audit.Log(e)
}

// splice copies both ways until both sides finish, or until the policy no
// longer allows the host. The upstream may speak first (SSH, SMTP), so its
// direction starts at once; the guest's starts once its first bytes pass
// clientFirst.
func (p *Proxy) splice(ctx context.Context, c net.Conn, br *bufio.Reader, up net.Conn, e Entry, h Host) {
	done := make(chan struct{})
	defer close(done)
	var once sync.Once
	cut := func() { once.Do(func() { c.Close(); up.Close() }) }
	if p.Recheck > 0 {
		go func() {
			t := time.NewTicker(p.Recheck)
			defer t.Stop()
			for {
				select {
				case <-done:
					return
				case <-ctx.Done():
					cut()
					return
				case <-t.C:
					pol, err := p.Policy()
					if ok, why := pol.Decide(h); err != nil || !ok {
						if err != nil {
							why = "no readable policy"
						}
						p.logDeny(e, "tunnel cut: "+why)
						cut()
						return
					}
				}
			}
		}()
	}
	downDone := make(chan struct{})
	go func() { io.Copy(c, up); closeWrite(c); close(downDone) }()
	hello, ok := p.clientFirst(ctx, c, br, e, h)
	if !ok {
		cut()
		<-downDone
		return
	}
	if _, err := up.Write(hello); err == nil {
		io.Copy(up, br)
	}
	closeWrite(up)
	<-downDone
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}

// forward serves a plain-HTTP request in absolute form, one per connection.
func (p *Proxy) forward(ctx context.Context, c net.Conn, req *http.Request) {
	e := Entry{Proxy: "egress", Method: printable(req.Method)}
	u := req.URL
	if u == nil || u.Scheme != "http" || u.Host == "" {
		p.deny(c, e, http.StatusBadRequest, "only CONNECT and absolute http:// URLs go through this proxy")
		return
	}
	if u.User != nil {
		e.Host = "(userinfo)"
		p.deny(c, e, http.StatusBadRequest, "malformed host: userinfo in URL")
		return
	}
	hostport := u.Host
	if u.Port() == "" {
		hostport = net.JoinHostPort(u.Hostname(), "80")
	}
	h, port, err := ParseHostPort(hostport)
	if err != nil {
		e.Host = printable(u.Host)
		p.deny(c, e, http.StatusBadRequest, "malformed host: "+err.Error())
		return
	}
	e.Host, e.Port, e.Path = h.String(), port, printable(u.Path)
	up, ok := p.admit(ctx, c, &e, h)
	if !ok {
		return
	}
	defer up.Close()
	for _, k := range []string{"Proxy-Authorization", "Proxy-Connection", "Connection", "Keep-Alive", "Te", "Trailer", "Upgrade"} {
		req.Header.Del(k)
	}
	// The Host header is the host that was checked, never the guest's own.
	req.Host = u.Host
	req.Close = true
	if err := req.Write(up); err != nil {
		reply(c, http.StatusBadGateway, "upstream write failed")
		return
	}
	resp, err := http.ReadResponse(bufio.NewReader(up), req)
	if err != nil {
		reply(c, http.StatusBadGateway, "bad upstream response: "+shortErr(err))
		return
	}
	defer resp.Body.Close()
	resp.Close = true
	resp.Write(c)
}

// reply writes a short plain-text HTTP response, the proxy's only way to
// tell the guest why.
func reply(w io.Writer, code int, msg string) {
	body := "fleet egress: " + msg + "\n"
	fmt.Fprintf(w, "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
		code, http.StatusText(code), len(body), body)
}

// printable keeps a guest's string fit for a log line.
func printable(s string) string {
	if len(s) > 200 {
		s = s[:200]
	}
	q := strconv.Quote(s)
	if q[1:len(q)-1] == s {
		return s
	}
	return q
}

func shortErr(err error) string {
	if err == nil {
		return "unknown error"
	}
	return printable(err.Error())
}

// limitReader caps how much a request's headers may take; off lifts the
// cap for the body and the tunnel.
type limitReader struct {
	r io.Reader
	n int64 // -1: no limit
}

func (l *limitReader) Read(b []byte) (int, error) {
	if l.n < 0 {
		return l.r.Read(b)
	}
	if l.n == 0 {
		return 0, errors.New("request headers too large")
	}
	if int64(len(b)) > l.n {
		b = b[:l.n]
	}
	n, err := l.r.Read(b)
	l.n -= int64(n)
	return n, err
}

func (l *limitReader) off() { l.n = -1 }
