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
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Resolver looks names up on the host. net.DefaultResolver is one.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// Proxy is the egress proxy for one machine: HTTP CONNECT and plain HTTP
// with absolute URLs. It serves one guest connection per ServeConn.
type Proxy struct {
	Policy   func() (Policy, error) // reread per connection and while tunnels run
	Resolver Resolver
	Dial     func(ctx context.Context, network, address string) (net.Conn, error)
	HostNets HostNets // the host's own addresses and subnets, always refused
	Audit    *Audit
	// Recheck is how often an open tunnel rereads the policy, so that
	// `fleet net deny` also cuts connections already made, and checks
	// IdleTimeout.
	Recheck time.Duration
	// Timeout bounds each step before data flows: request headers,
	// resolving, dialing, and after a CONNECT the guest's TLS ClientHello
	// and the upstream's ServerHello.
	Timeout time.Duration
	// IdleTimeout cuts a connection when no byte has passed either way for
	// this long (0: DefaultIdleTimeout).
	IdleTimeout time.Duration
	// RequestTimeout bounds the whole of a plain-HTTP request, headers and
	// body, from the connection's start (0: DefaultRequestTimeout): a
	// guest that trickles a body holds a connection no longer than this.
	RequestTimeout time.Duration
}

// Deadlines when a Proxy leaves them zero.
const (
	DefaultTimeout        = 15 * time.Second
	DefaultIdleTimeout    = 10 * time.Minute
	DefaultRequestTimeout = 2 * time.Minute
)

// copyBufs bounds what each tunnel direction holds: a fixed buffer from a
// pool rather than whatever io.Copy would allocate.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 16<<10); return &b }}

const maxHeaderBytes = 64 << 10

// ServeConn handles one guest connection and closes it.
func (p *Proxy) ServeConn(ctx context.Context, c net.Conn) {
	defer c.Close()
	start := time.Now()
	lim := &limitReader{r: c, n: maxHeaderBytes}
	br := bufio.NewReader(lim)
	// The headers' deadline is absolute: trickling them does not extend it.
	c.SetReadDeadline(start.Add(min(p.timeout(), p.requestTimeout())))
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
	p.forward(ctx, c, req, start)
}

func (p *Proxy) timeout() time.Duration {
	if p.Timeout > 0 {
		return p.Timeout
	}
	return DefaultTimeout
}

func (p *Proxy) requestTimeout() time.Duration {
	if p.RequestTimeout > 0 {
		return p.RequestTimeout
	}
	return DefaultRequestTimeout
}

func (p *Proxy) idleTimeout() time.Duration {
	if p.IdleTimeout > 0 {
		return p.IdleTimeout
	}
	return DefaultIdleTimeout
}

// admit runs every check on a destination and dials the checked address.
// On refusal it has already answered the guest and logged the decision.
func (p *Proxy) admit(ctx context.Context, c net.Conn, e *Entry, h Host) (net.Conn, Verdict, bool) {
	pol, err := p.Policy()
	if err != nil {
		p.deny(c, *e, http.StatusForbidden, "no readable policy: "+shortErr(err))
		return nil, Verdict{}, false
	}
	v := pol.Decide(h, e.Port)
	if !v.Allow {
		p.deny(c, *e, http.StatusForbidden, v.Reason)
		return nil, v, false
	}
	addrs, err := p.resolve(ctx, pol, h)
	if err != nil {
		p.deny(c, *e, http.StatusBadGateway, "cannot resolve: "+shortErr(err))
		return nil, v, false
	}
	// Every address a name resolves to is checked, not just the one dialed:
	// a name that also points inside is someone's rebinding attempt.
	for _, a := range addrs {
		if r := RefusedAddr(a, p.HostNets); r != "" {
			e.Addr = a.String()
			p.deny(c, *e, http.StatusForbidden, fmt.Sprintf("%s resolves to %s", h, r))
			return nil, v, false
		}
	}
	for _, a := range addrs {
		if why := pol.DeniedAddr(a, e.Port); why != "" {
			e.Addr = a.String()
			p.deny(c, *e, http.StatusForbidden, fmt.Sprintf("%s resolves to %s, %s", h, a, why))
			return nil, v, false
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
		e.Verdict, e.Reason = VerdictAllow, v.Reason
		if err := p.Audit.Log(*e); err != nil {
			up.Close()
			reply(c, http.StatusForbidden, "the audit log cannot be written")
			return nil, v, false
		}
		return up, v, true
	}
	p.deny(c, *e, http.StatusBadGateway, "cannot connect: "+shortErr(last))
	return nil, v, false
}

func (p *Proxy) resolve(ctx context.Context, pol Policy, h Host) ([]netip.Addr, error) {
	if h.IP.IsValid() {
		return []netip.Addr{h.IP}, nil
	}
	if s, ok := pol.PinnedAddr(h); ok {
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
	e.Proxy, e.Verdict, e.Reason, e.Status = ProxyEgress, VerdictDeny, why, code
	p.Audit.Log(e) // a denial stands even if it cannot be logged
	reply(c, code, why)
}

// tunnel serves CONNECT. Unless the allowing entry is marked raw, the
// guest must then speak TLS, and the server name in its ClientHello must be
// the host it asked for: otherwise an allowed name could carry cleartext,
// or a TLS session to any other site behind the same address.
func (p *Proxy) tunnel(ctx context.Context, c net.Conn, br *bufio.Reader, req *http.Request) {
	e := Entry{Proxy: ProxyEgress, Method: "CONNECT"}
	h, port, err := ParseHostPort(req.RequestURI)
	if err != nil {
		e.Host = printable(req.RequestURI)
		p.deny(c, e, http.StatusBadRequest, "malformed host: "+err.Error())
		return
	}
	e.Host, e.Port = h.String(), port
	up, v, ok := p.admit(ctx, c, &e, h)
	if !ok {
		return
	}
	defer up.Close()
	if _, err := io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		return
	}
	p.splice(ctx, c, br, up, e, h, v.Raw)
}

// clientHello checks what the guest sends first: a TLS handshake record,
// within the timeout, whose ClientHello names the CONNECT host. It returns
// the hello with the bytes read, to go upstream unchanged.
func (p *Proxy) clientHello(ctx context.Context, c net.Conn, br *bufio.Reader, e Entry, h Host) (helloInfo, bool) {
	c.SetReadDeadline(time.Now().Add(p.timeout()))
	defer c.SetReadDeadline(time.Time{})
	first, err := br.Peek(1)
	switch {
	case err != nil:
		p.logDeny(e, "no TLS ClientHello: "+shortErr(err))
		return helloInfo{}, false
	case first[0] != recHandshake:
		p.logDeny(e, fmt.Sprintf("not TLS: a tunnel to %s carries only TLS to that name (first byte %q; an entry marked /raw allows other protocols)", h, first[0]))
		return helloInfo{}, false
	}
	hi, err := readClientHello(ctx, br)
	if err != nil {
		p.logDeny(e, "malformed TLS ClientHello: "+shortErr(err))
		return helloInfo{}, false
	}
	if why := helloProblem(h, hi); why != "" {
		e.SNI = printable(hi.SNI)
		p.logDeny(e, why)
		return helloInfo{}, false
	}
	return hi, true
}

// helloProblem says why a ClientHello may not go to h, or "" if it may.
// An encrypted ClientHello (ECH) hides the name it really asks for behind
// the one in the clear, so it is refused: a CDN would route it to any of
// its sites.
func helloProblem(h Host, hi helloInfo) string {
	if why := sniMismatch(h, hi.SNI); why != "" {
		return why
	}
	if hi.ECH {
		return "TLS with an encrypted ClientHello (ECH) to " + h.String() + ": the server name it asks for is hidden"
	}
	return ""
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
		return fmt.Sprintf("TLS server name %s does not match CONNECT host %s", printable(sni), h)
	}
	return ""
}

func (p *Proxy) logDeny(e Entry, why string) {
	e.Verdict, e.Reason = VerdictDeny, why
	p.Audit.Log(e)
}

// splice copies both ways until both sides finish, the tunnel idles out,
// or the policy no longer allows the host. A raw tunnel starts both
// directions at once, since its upstream may speak first (SSH).
func (p *Proxy) splice(ctx context.Context, c net.Conn, br *bufio.Reader, up net.Conn, e Entry, h Host, raw bool) {
	done := make(chan struct{})
	defer close(done)
	var once sync.Once
	cut := func() { once.Do(func() { c.Close(); up.Close() }) }
	act := &activity{}
	act.touch()
	go p.watch(ctx, done, act, e, h, cut)
	if !raw {
		p.spliceTLS(ctx, c, br, up, e, h, act, cut)
		return
	}
	downDone := make(chan struct{})
	go func() {
		copyTouching(c, up, act)
		closeWrite(c)
		close(downDone)
	}()
	copyTouching(up, br, act)
	closeWrite(up)
	<-downDone
}

// spliceTLS carries a tunnel that is not raw: TLS records only, both ways,
// checked by a framer on each direction (see tlsframe.go) and cut at the
// first byte that is not. The guest's ClientHello goes first, alone;
// nothing else of the guest's goes up until the upstream has answered with
// a ServerHello, so a server that speaks another protocol gets one hello
// at most, and its own first bytes cut the tunnel.
func (p *Proxy) spliceTLS(ctx context.Context, c net.Conn, br *bufio.Reader, up net.Conn, e Entry, h Host, act *activity, cut func()) {
	var logOnce sync.Once
	fail := func(err error) bool {
		var fe *framingError
		if !errors.As(err, &fe) {
			return false
		}
		logOnce.Do(func() { p.logDeny(e, "tunnel cut: "+fe.Error()) })
		cut()
		return true
	}
	hi, ok := p.clientHello(ctx, c, br, e, h)
	if !ok {
		cut()
		return
	}
	sess := newTLSSession()
	guest, server := newFramer(fromGuest, sess, h), newFramer(fromUpstream, sess, h)
	// The framer reads the hello too, so it knows where the guest's
	// stream stands.
	if _, err := guest.feed(hi.Raw); fail(err) {
		return
	}
	if _, err := up.Write(hi.Raw); err != nil {
		cut()
		return
	}
	downDone := make(chan struct{})
	go func() {
		fail(copyTouching(c, framedReader{up, server}, act))
		closeWrite(c)
		close(downDone)
	}()
	wait := time.NewTimer(p.timeout())
	defer wait.Stop()
	select {
	case <-sess.helloSeen:
	case <-downDone:
		return // the upstream ended, or was cut, before its ServerHello
	case <-wait.C:
		p.logDeny(e, fmt.Sprintf("tunnel cut: the upstream sent no TLS ServerHello within %s", p.timeout()))
		cut()
		<-downDone
		return
	}
	fail(copyTouching(up, framedReader{br, guest}, act))
	closeWrite(up)
	<-downDone
}

// watch cuts a tunnel once it has idled for IdleTimeout or its host is no
// longer allowed.
func (p *Proxy) watch(ctx context.Context, done <-chan struct{}, act *activity, e Entry, h Host, cut func()) {
	every := p.Recheck
	if every <= 0 {
		every = 2 * time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-ctx.Done():
			cut()
			return
		case <-t.C:
		}
		if idle := act.idle(); idle >= p.idleTimeout() {
			p.logDeny(e, fmt.Sprintf("tunnel cut: idle for %s", idle.Round(time.Second)))
			cut()
			return
		}
		if p.Recheck <= 0 {
			continue
		}
		pol, err := p.Policy()
		why := ""
		switch v := pol.Decide(h, e.Port); {
		case err != nil:
			why = "no readable policy"
		case !v.Allow:
			why = v.Reason
		default:
			if a, aerr := netip.ParseAddr(e.Addr); aerr == nil {
				if d := pol.DeniedAddr(a, e.Port); d != "" {
					why = fmt.Sprintf("%s resolves to %s, %s", h, a, d)
				}
			}
		}
		if why != "" {
			p.logDeny(e, "tunnel cut: "+why)
			cut()
			return
		}
	}
}

// activity is when a connection last moved a byte.
type activity struct{ last atomic.Int64 }

func (a *activity) touch()              { a.last.Store(time.Now().UnixNano()) }
func (a *activity) idle() time.Duration { return time.Since(time.Unix(0, a.last.Load())) }

type touchReader struct {
	r   io.Reader
	act *activity
}

func (t touchReader) Read(b []byte) (int, error) {
	n, err := t.r.Read(b)
	if n > 0 {
		t.act.touch()
	}
	return n, err
}

// copyTouching copies through a pooled buffer, and returns why it ended
// (nil at EOF).
func copyTouching(dst io.Writer, src io.Reader, act *activity) error {
	buf := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(buf)
	// writerOnly hides dst's ReadFrom, which would copy through a buffer
	// of its own instead of the pooled one.
	_, err := io.CopyBuffer(writerOnly{dst}, touchReader{src, act}, *buf)
	return err
}

type writerOnly struct{ io.Writer }

type touchConn struct {
	net.Conn
	act *activity
}

func (t *touchConn) Read(b []byte) (int, error) { return touchReader{t.Conn, t.act}.Read(b) }

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}

// forward serves a plain-HTTP request in absolute form, one per connection.
// The request, body and all, must have arrived by RequestTimeout after
// start.
func (p *Proxy) forward(ctx context.Context, c net.Conn, req *http.Request, start time.Time) {
	e := Entry{Proxy: ProxyEgress, Method: printable(req.Method)}
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
	up, _, ok := p.admit(ctx, c, &e, h)
	if !ok {
		return
	}
	defer up.Close()
	// One request, one response: the whole exchange must keep moving.
	act := &activity{}
	act.touch()
	done := make(chan struct{})
	defer close(done)
	go p.watch(ctx, done, act, e, h, func() { c.Close(); up.Close() })
	up = &touchConn{Conn: up, act: act}
	for _, k := range []string{"Proxy-Authorization", "Proxy-Connection", "Connection", "Keep-Alive", "Te", "Trailer", "Upgrade"} {
		req.Header.Del(k)
	}
	// The Host header is the host that was checked, never the guest's own.
	req.Host = u.Host
	req.Close = true
	c.SetReadDeadline(start.Add(p.requestTimeout()))
	var body *bodyReader
	if req.Body != nil && req.Body != http.NoBody {
		// Wrapped only when there is one: any other Body makes the
		// request chunked.
		body = &bodyReader{ReadCloser: req.Body}
		req.Body = body
	}
	if err := req.Write(up); err != nil {
		if body != nil && errors.Is(body.err, os.ErrDeadlineExceeded) {
			p.deny(c, e, http.StatusRequestTimeout, fmt.Sprintf("request cut: it did not arrive whole within %s", p.requestTimeout()))
			return
		}
		reply(c, http.StatusBadGateway, "upstream write failed")
		return
	}
	c.SetReadDeadline(time.Time{})
	resp, err := http.ReadResponse(bufio.NewReader(up), req)
	if err != nil {
		reply(c, http.StatusBadGateway, "bad upstream response: "+shortErr(err))
		return
	}
	defer resp.Body.Close()
	resp.Close = true
	resp.Write(c)
}

// bodyReader keeps the error reading a guest's request body ended with,
// to tell a guest too slow from an upstream that failed.
type bodyReader struct {
	io.ReadCloser
	err error
}

func (b *bodyReader) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && err != io.EOF {
		b.err = err
	}
	return n, err
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
