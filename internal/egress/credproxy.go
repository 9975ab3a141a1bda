package egress

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Credential is the real model API credential. It exists only on the host:
// in the environment of the VM's QEMU process and the proxy processes QEMU
// starts, never in a file, a command line or the guest.
type Credential struct {
	Kind  CredentialKind
	Value string
}

// CredentialKind says how the upstream expects the credential.
type CredentialKind string

const (
	APIKey     CredentialKind = "ANTHROPIC_API_KEY"       // sent as x-api-key
	OAuthToken CredentialKind = "CLAUDE_CODE_OAUTH_TOKEN" // sent as a bearer token
)

// CredentialFromEnv finds the credential in an environment, the API key
// first.
func CredentialFromEnv(getenv func(string) string) (Credential, bool) {
	for _, k := range []CredentialKind{APIKey, OAuthToken} {
		if v := strings.TrimSpace(getenv(string(k))); v != "" {
			return Credential{Kind: k, Value: v}, true
		}
	}
	return Credential{}, false
}

// CredProxy is the credential proxy for one machine. The guest's agent sends
// its per-VM token (as a bearer token or x-api-key); the proxy checks it,
// puts the real credential in its place and forwards to Upstream.
type CredProxy struct {
	Token string
	// Inherited tokens are taken as Token (a fork's child: the agent that
	// ran at the fork holds its source's token).
	Inherited  []string
	Credential Credential // zero when the host had none
	Upstream   *url.URL
	Transport  http.RoundTripper
	Audit      *Audit
	// Meter counts the tokens of every answered message call; nil counts
	// nothing. Spend is the machine's budget and prices, read at each
	// call so fleet net budget applies to the next one.
	Meter *Meter
	Spend func() (SpendConfig, error)
	// Policy is the machine's egress policy, read at each call: the model
	// API's own network tools are confined to it (see tools.go). Nil, or
	// an error, lets nothing through that would reach the network.
	Policy func() (Policy, error)
	// Machine names the machine in what the agent is told.
	Machine string
	// RequestTimeout bounds reading one whole request, headers and body
	// (0: DefaultRequestTimeout). IdleTimeout ends a kept-alive connection
	// with no next request (0: DefaultCredIdleTimeout). WriteStall ends a
	// connection whose guest stopped reading the answer: each write must
	// finish within it, so an answer that keeps flowing is never cut (0:
	// DefaultWriteStall).
	RequestTimeout, IdleTimeout, WriteStall time.Duration
	// MaxBody is the largest request body read (0: DefaultMaxRequestBody).
	MaxBody int64

	once sync.Once
	ln   *connListener
	srv  *http.Server
	held atomic.Int64 // bytes of request bodies held in memory
}

// Limits of the credential proxy when its fields leave them zero.
// The whole-request deadline is DefaultRequestTimeout, the egress proxy's.
const (
	DefaultCredIdleTimeout = 5 * time.Minute
	DefaultWriteStall      = 2 * time.Minute
	DefaultMaxRequestBody  = 32 << 20
	// maxHeldBodies bounds the request bodies all of a machine's calls
	// hold at once; past it a call is answered "overloaded", which agents
	// retry.
	maxHeldBodies = 128 << 20
)

// ServeConn serves HTTP requests on one guest connection until it closes.
// Every connection is served by one long-lived http.Server per proxy, so a
// closed connection leaves nothing behind.
func (p *CredProxy) ServeConn(ctx context.Context, c net.Conn) {
	p.once.Do(p.start)
	tc := &trackedConn{Conn: c, closed: make(chan struct{})}
	select {
	case p.ln.conns <- tc:
	case <-ctx.Done():
		c.Close()
		return
	case <-p.ln.done:
		c.Close()
		return
	}
	select {
	case <-tc.closed:
	case <-ctx.Done():
		tc.Close()
	}
}

func (p *CredProxy) start() {
	p.ln = &connListener{conns: make(chan net.Conn), done: make(chan struct{})}
	p.srv = &http.Server{
		Handler:           p,
		ReadHeaderTimeout: DefaultTimeout,
		// The whole request, body and all. It is lifted once the body is
		// in (net/http does so at the body's end, ServeHTTP too), so an
		// answer that streams past it is not cut.
		ReadTimeout:    orDefault(p.RequestTimeout, DefaultRequestTimeout),
		IdleTimeout:    orDefault(p.IdleTimeout, DefaultCredIdleTimeout),
		MaxHeaderBytes: maxHeaderBytes,
		ErrorLog:       log.New(io.Discard, "", 0),
	}
	go p.srv.Serve(p.ln)
}

// Close ends the proxy's server and every connection it serves.
func (p *CredProxy) Close() error {
	p.once.Do(p.start)
	p.ln.Close()
	return p.srv.Close()
}

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// APIRoutes are the model API calls the Claude CLI makes, and all the
// credential proxy forwards: a guest holding the token gets the model, not
// the rest of the account (files, batches, admin keys).
var APIRoutes = []struct{ Method, Path string }{
	{http.MethodPost, "/v1/messages"},
	{http.MethodPost, "/v1/messages/count_tokens"},
	{http.MethodGet, "/v1/models"},
	{http.MethodGet, "/v1/models/*"}, // one model's details
}

// apiRoute says whether method and path are one of APIRoutes. The path
// must be clean: no dot segments, doubled or encoded slashes.
func apiRoute(method, path, rawPath string) bool {
	if rawPath != "" || strings.Contains(path, "//") || strings.Contains(path, "/.") {
		return false
	}
	for _, r := range APIRoutes {
		if r.Method != method {
			continue
		}
		if prefix, ok := strings.CutSuffix(r.Path, "*"); ok {
			rest, found := strings.CutPrefix(path, prefix)
			if found && rest != "" && !strings.Contains(rest, "/") {
				return true
			}
		} else if path == r.Path {
			return true
		}
	}
	return false
}

func (p *CredProxy) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(rw)
	w := &guestWriter{ResponseWriter: rw, rc: rc, secret: p.Credential.Value, stall: orDefault(p.WriteStall, DefaultWriteStall)}
	// Trailers are sent from the header map after the handler returns.
	defer scrubHeaders(w.Header(), p.Credential.Value)
	e := Entry{Proxy: ProxyCredentials, Method: printable(r.Method), Path: printable(r.URL.Path)}
	deny := func(code int, typ, reason, msg string) {
		e.Verdict, e.Status, e.Reason = VerdictDeny, code, reason
		p.Audit.Log(e)
		apiError(w, code, typ, msg)
	}
	if !apiRoute(r.Method, r.URL.Path, r.URL.RawPath) {
		deny(http.StatusForbidden, "permission_error", "not a model API call: the credential proxy forwards only "+routeList(),
			"fleet credential proxy: "+e.Method+" "+e.Path+" is not forwarded (only "+routeList()+")")
		return
	}
	if !p.tokenOK(r) {
		p.refuse(w, e, "wrong or missing fleet token")
		return
	}
	if p.Credential.Value == "" {
		p.refuse(w, e, "the host had no ANTHROPIC_API_KEY or CLAUDE_CODE_OAUTH_TOKEN (and no credential command) when this machine started")
		return
	}
	if r.Header.Get("Upgrade") != "" {
		deny(http.StatusBadRequest, "invalid_request_error", "protocol upgrade refused", "fleet credential proxy: the model API is plain HTTP; a protocol upgrade is not forwarded")
		return
	}
	if ce := r.Header.Values("Content-Encoding"); len(ce) > 1 || (len(ce) == 1 && !strings.EqualFold(strings.TrimSpace(ce[0]), "identity")) {
		// The body is read to check it: it must be the bytes the API reads.
		deny(http.StatusUnsupportedMediaType, "invalid_request_error", "compressed request body refused", "fleet credential proxy: a compressed request body is not forwarded; send it uncompressed")
		return
	}
	body, release, err := p.readBody(r)
	defer release()
	switch {
	case errors.Is(err, errBodyTooLarge):
		max := p.maxBody()
		deny(http.StatusRequestEntityTooLarge, "request_too_large", "request body over "+strconv.FormatInt(max, 10)+" bytes",
			fmt.Sprintf("fleet credential proxy: the request body is larger than its cap of %d MiB", max>>20))
		return
	case errors.Is(err, errBodiesBusy):
		deny(529, "overloaded_error", "too many request bodies held at once", "fleet credential proxy: this machine's calls hold too many request bodies at once; retry shortly")
		return
	case err != nil:
		deny(http.StatusRequestTimeout, "invalid_request_error", "request body not read: "+shortErr(err), "fleet credential proxy: the request body did not arrive whole in time")
		return
	}
	// The request is in: from here the answer may stream for as long as it
	// flows.
	rc.SetReadDeadline(time.Time{})

	var req *apiRequest
	var pol Policy
	var polErr error
	if r.Method == http.MethodPost {
		if req, err = parseRequest(body); err != nil {
			deny(http.StatusBadRequest, "invalid_request_error", "unreadable request body: "+shortErr(err),
				"fleet credential proxy: the request body is not one plain JSON object, so it cannot be checked ("+shortErr(err)+")")
			return
		}
		pol, polErr = p.policy()
		if why := confine(req, pol, polErr); why != "" {
			deny(http.StatusForbidden, "permission_error", "model API network tool refused: "+why, refusal(why))
			return
		}
		if body, err = req.Body(); err != nil {
			deny(http.StatusInternalServerError, "api_error", shortErr(err), "fleet credential proxy: "+shortErr(err))
			return
		}
	} else {
		pol, polErr = p.policy()
	}
	open := polErr == nil && pol.Mode == ModeOpen

	metered := r.Method == http.MethodPost && r.URL.Path == "/v1/messages" && p.Meter != nil
	var prices []Price
	var endCall func(how settlement, u Usage)
	if metered {
		spend, err := p.spendConfig()
		if err != nil {
			// A budget that cannot be read is not an open one.
			deny(http.StatusInternalServerError, "api_error", "budget unreadable: "+shortErr(err),
				"fleet credential proxy: this machine's budget cannot be read ("+shortErr(err)+")")
			return
		}
		prices = spend.Prices
		res := req.reservation(prices)
		ok, why, err := p.Meter.Reserve(res, spend.Budget)
		if err != nil {
			deny(http.StatusInternalServerError, "api_error", "spend not held: "+shortErr(err),
				"fleet credential proxy: this machine's spend cannot be counted ("+shortErr(err)+"); the call was not sent")
			return
		}
		if !ok {
			name := p.Machine
			if name == "" {
				name = "<machine>"
			}
			deny(BudgetStatus, "invalid_request_error", BudgetReason+": "+why, "fleet: this machine's budget is reached ("+why+"); "+
				"the call was not sent. Raise it on the host with: fleet net budget "+name+" +N")
			return
		}
		var once sync.Once
		endCall = func(how settlement, u Usage) {
			once.Do(func() {
				switch how {
				case settled:
					p.Meter.Settle(res, u, true)
				case released:
					p.Meter.Release(res)
				default:
					p.Meter.Settle(res, Usage{}, false)
				}
			})
		}
		// An answer never read to its end keeps the whole reservation.
		defer endCall(kept, Usage{})
	}

	r.Body = io.NopCloser(bytes.NewReader(body))
	r.ContentLength = int64(len(body))
	r.TransferEncoding = nil
	r.Header.Del("Content-Length")
	allowReason := "token matched; forwarded to " + p.Upstream.Host
	if req != nil && req.toolsChanged {
		allowReason += "; web fetch confined to the egress allowlist"
	}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(p.Upstream)
			h := pr.Out.Header
			h.Del("Authorization")
			h.Del("X-Api-Key")
			h.Del("Proxy-Authorization")
			h.Del("Upgrade")
			h.Del("Connection")
			// The proxy decides the encoding, so it can always read the
			// usage: nothing the guest sends decides that.
			h.Set("Accept-Encoding", "identity")
			filterBetas(h, req, open)
			switch p.Credential.Kind {
			case OAuthToken:
				h.Set("Authorization", "Bearer "+p.Credential.Value)
				if !strings.Contains(h.Get("Anthropic-Beta"), "oauth-2025-04-20") {
					h.Add("Anthropic-Beta", "oauth-2025-04-20")
				}
			default:
				h.Set("X-Api-Key", p.Credential.Value)
			}
		},
		Transport:     p.Transport,
		FlushInterval: -1, // the API streams server-sent events
		ModifyResponse: func(resp *http.Response) error {
			if resp.StatusCode == http.StatusSwitchingProtocols {
				return errors.New("the upstream switched protocols")
			}
			scrubHeaders(resp.Header, p.Credential.Value)
			resp.Body = &trailerScrub{ReadCloser: resp.Body, resp: resp, secret: p.Credential.Value}
			c := &Counter{Stream: strings.Contains(resp.Header.Get("Content-Type"), "text/event-stream")}
			resp.Body, c.Unreadable = decodeBody(resp)
			if metered {
				failed := resp.StatusCode >= 400
				resp.Body = &meteredBody{ReadCloser: resp.Body, c: c, done: func(c *Counter) {
					u, _, ok := c.Result(prices)
					switch {
					case ok:
						endCall(settled, u)
					case failed && c.APIError():
						// Refused by the API (a 429 or 529 agents retry):
						// nothing billed, so nothing held.
						endCall(released, Usage{})
					default:
						endCall(kept, Usage{})
					}
				}}
			}
			e.Verdict, e.Status, e.Reason = VerdictAllow, resp.StatusCode, allowReason
			p.Audit.Log(e)
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, err error) {
			// A call that never reached the API costs nothing; any other
			// failure may have been billed and keeps its reservation.
			var oe *net.OpError
			if metered && errors.As(err, &oe) && oe.Op == "dial" {
				endCall(released, Usage{})
			}
			e.Verdict, e.Status, e.Reason = VerdictAllow, http.StatusBadGateway, "upstream failed: "+shortErr(err)
			p.Audit.Log(e)
			apiError(w, http.StatusBadGateway, "api_error", "fleet credential proxy: upstream failed: "+shortErr(err))
		},
	}
	rp.ServeHTTP(w, r)
}

type settlement int

const (
	kept settlement = iota
	settled
	released
)

func (p *CredProxy) policy() (Policy, error) {
	if p.Policy == nil {
		return Policy{Mode: ModeNone}, errors.New("the credential proxy was not given this machine's policy")
	}
	return p.Policy()
}

func (p *CredProxy) maxBody() int64 {
	if p.MaxBody > 0 {
		return p.MaxBody
	}
	return DefaultMaxRequestBody
}

var (
	errBodyTooLarge = errors.New("request body too large")
	errBodiesBusy   = errors.New("too many request bodies held")
)

// readBody reads the request's body whole, within MaxBody and the share of
// maxHeldBodies still free; release gives the share back.
func (p *CredProxy) readBody(r *http.Request) (body []byte, release func(), err error) {
	var held int64
	release = func() { p.held.Add(-held); held = 0 }
	max := p.maxBody()
	if r.ContentLength > max {
		return nil, release, errBodyTooLarge
	}
	// A declared length is held against the machine's share before it is
	// allocated: 256 connections each announcing 32 MiB and trickling
	// must not cost 8 GiB up front.
	if r.ContentLength > 0 {
		if p.held.Add(r.ContentLength) > maxHeldBodies {
			p.held.Add(-r.ContentLength)
			return nil, release, errBodiesBusy
		}
		held = r.ContentLength
		body = make([]byte, 0, r.ContentLength)
	}
	chunk := make([]byte, 32<<10)
	for {
		n, rerr := r.Body.Read(chunk)
		if n > 0 {
			if int64(len(body)+n) > max {
				return nil, release, errBodyTooLarge
			}
			if grow := int64(len(body)+n) - held; grow > 0 {
				if p.held.Add(grow) > maxHeldBodies {
					p.held.Add(-grow)
					return nil, release, errBodiesBusy
				}
				held += grow
			}
			body = append(body, chunk[:n]...)
		}
		if rerr == io.EOF {
			return body, release, nil
		}
		if rerr != nil {
			return nil, release, rerr
		}
	}
}

// BudgetStatus and BudgetReason mark a call refused at the budget (the
// API answers an account out of credit with a 400 too, which agents show
// and do not retry).
const (
	BudgetStatus = http.StatusBadRequest
	BudgetReason = "budget reached"
)

func (p *CredProxy) spendConfig() (SpendConfig, error) {
	if p.Spend == nil {
		return SpendConfig{Prices: DefaultPrices}, nil
	}
	return p.Spend()
}

// meteredBody feeds a response to its Counter as the guest reads it and
// settles the call once: at the end, or when the guest hangs up or the
// answer breaks off (then the count is not known, and the reservation
// stays: the API bills what it started).
type meteredBody struct {
	io.ReadCloser
	c    *Counter
	once sync.Once
	done func(*Counter)
}

func (b *meteredBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.c.Write(p[:n])
	if err == io.EOF {
		b.c.Done()
	}
	if err != nil {
		b.once.Do(func() { b.done(b.c) })
	}
	return n, err
}

func (b *meteredBody) Close() error {
	b.once.Do(func() { b.done(b.c) })
	return b.ReadCloser.Close()
}

func routeList() string {
	var out []string
	for _, r := range APIRoutes {
		out = append(out, r.Method+" "+r.Path)
	}
	return strings.Join(out, ", ")
}

// scrubHeaders drops every response header, trailer or informational
// header that echoes the credential in its name or value, in any case, so
// an upstream (or a debugging proxy in front of it) that reflects request
// headers cannot hand the key to the guest.
func scrubHeaders(h http.Header, secret string) {
	if secret == "" {
		return
	}
	ls := strings.ToLower(secret)
	for k, vs := range h {
		if strings.Contains(strings.ToLower(k), ls) {
			delete(h, k)
			continue
		}
		for _, v := range vs {
			if strings.Contains(strings.ToLower(v), ls) {
				delete(h, k)
				break
			}
		}
	}
}

func (p *CredProxy) tokenOK(r *http.Request) bool {
	got := r.Header.Get("X-Api-Key")
	if a := r.Header.Get("Authorization"); strings.HasPrefix(a, "Bearer ") {
		got = strings.TrimPrefix(a, "Bearer ")
	}
	ok := 0
	for _, t := range append([]string{p.Token}, p.Inherited...) {
		if t != "" {
			ok |= subtle.ConstantTimeCompare([]byte(got), []byte(t))
		}
	}
	return ok == 1
}

func (p *CredProxy) refuse(w http.ResponseWriter, e Entry, why string) {
	e.Verdict, e.Status, e.Reason = VerdictDeny, http.StatusUnauthorized, why
	p.Audit.Log(e)
	apiError(w, http.StatusUnauthorized, "authentication_error", "fleet credential proxy: "+why)
}

// apiError answers in the Anthropic API's error shape, so the agent shows
// the message rather than a parse failure.
func apiError(w http.ResponseWriter, code int, typ, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(map[string]any{
		"type":  "error",
		"error": map[string]string{"type": typ, "message": msg},
	})
}

// connListener is the listener of a CredProxy's one server: ServeConn
// hands it each guest connection.
type connListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func (l *connListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *connListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *connListener) Addr() net.Addr { return credAddr{} }

type credAddr struct{}

func (credAddr) Network() string { return "guest" }
func (credAddr) String() string  { return "credential-proxy" }

// trackedConn tells ServeConn when the server has closed its connection.
type trackedConn struct {
	net.Conn
	once   sync.Once
	closed chan struct{}
}

func (c *trackedConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// guestWriter is the answer on its way to the guest: every header block
// (1xx, final) is scrubbed of the credential as it is written, and each
// write must finish within stall, so a guest that stops reading is cut
// while one still reading is not.
type guestWriter struct {
	http.ResponseWriter
	rc     *http.ResponseController
	secret string
	stall  time.Duration
	final  bool
}

func (g *guestWriter) WriteHeader(code int) {
	scrubHeaders(g.Header(), g.secret)
	g.deadline()
	if code >= 200 {
		g.final = true
	}
	g.ResponseWriter.WriteHeader(code)
}

func (g *guestWriter) Write(b []byte) (int, error) {
	if !g.final {
		g.WriteHeader(http.StatusOK)
	}
	g.deadline()
	return g.ResponseWriter.Write(b)
}

func (g *guestWriter) FlushError() error {
	g.deadline()
	return g.rc.Flush()
}

func (g *guestWriter) Flush() { g.FlushError() }

func (g *guestWriter) Unwrap() http.ResponseWriter { return g.ResponseWriter }

func (g *guestWriter) deadline() { g.rc.SetWriteDeadline(time.Now().Add(g.stall)) }

// trailerScrub scrubs the credential from an answer's trailers, which the
// transport fills in at the body's end.
type trailerScrub struct {
	io.ReadCloser
	resp   *http.Response
	secret string
}

func (t *trailerScrub) Read(b []byte) (int, error) {
	n, err := t.ReadCloser.Read(b)
	if err != nil {
		scrubHeaders(t.resp.Trailer, t.secret)
	}
	return n, err
}

func (t *trailerScrub) Close() error {
	err := t.ReadCloser.Close()
	scrubHeaders(t.resp.Trailer, t.secret)
	return err
}
