package egress

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
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
	Token      string
	Credential Credential // zero when the host had none
	Upstream   *url.URL
	Transport  http.RoundTripper
	Audit      *Audit
	// Meter counts the tokens of every answered message call; nil counts
	// nothing. Spend is the machine's budget and prices, read at each
	// call so fleet net budget applies to the next one.
	Meter *Meter
	Spend func() (SpendConfig, error)
	// Machine names the machine in what the agent is told.
	Machine string
}

// ServeConn serves HTTP requests on one guest connection until it closes.
func (p *CredProxy) ServeConn(ctx context.Context, c net.Conn) {
	done := make(chan struct{})
	var once sync.Once
	srv := &http.Server{
		Handler:           p,
		ReadHeaderTimeout: DefaultTimeout,
		IdleTimeout:       5 * time.Minute,
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateClosed || s == http.StateHijacked {
				once.Do(func() { close(done) })
			}
		},
	}
	go srv.Serve(newOneConnListener(c))
	select {
	case <-done:
	case <-ctx.Done():
		c.Close()
	}
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

func (p *CredProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	e := Entry{Proxy: "credentials", Method: printable(r.Method), Path: printable(r.URL.Path)}
	if !apiRoute(r.Method, r.URL.Path, r.URL.RawPath) {
		e.Verdict, e.Status, e.Reason = "deny", http.StatusForbidden, "not a model API call: the credential proxy forwards only "+routeList()
		p.Audit.Log(e)
		apiError(w, http.StatusForbidden, "permission_error", "fleet credential proxy: "+e.Method+" "+e.Path+" is not forwarded (only "+routeList()+")")
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
	metered := r.Method == http.MethodPost && r.URL.Path == "/v1/messages"
	var spend SpendConfig
	if metered && p.Meter != nil {
		var err error
		if spend, err = p.spendConfig(); err != nil {
			// A budget that cannot be read is not an open one.
			e.Verdict, e.Status, e.Reason = "deny", http.StatusInternalServerError, "budget unreadable: "+shortErr(err)
			p.Audit.Log(e)
			apiError(w, http.StatusInternalServerError, "api_error", "fleet credential proxy: this machine's budget cannot be read ("+shortErr(err)+")")
			return
		}
		if done, why := spend.Budget.Reached(p.Meter.Usage()); done {
			e.Verdict, e.Status, e.Reason = "deny", BudgetStatus, BudgetReason+": "+why
			p.Audit.Log(e)
			name := p.Machine
			if name == "" {
				name = "<machine>"
			}
			apiError(w, BudgetStatus, "invalid_request_error", "fleet: this machine's budget is reached ("+why+"); "+
				"the call was not sent. Raise it on the host with: fleet net budget "+name+" +N")
			return
		}
	}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(p.Upstream)
			h := pr.Out.Header
			h.Del("Authorization")
			h.Del("X-Api-Key")
			h.Del("Proxy-Authorization")
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
			scrubHeaders(resp.Header, p.Credential.Value)
			if metered && p.Meter != nil && resp.StatusCode == http.StatusOK {
				stream := strings.Contains(resp.Header.Get("Content-Type"), "text/event-stream")
				resp.Body = &meteredBody{ReadCloser: resp.Body, c: &Counter{Stream: stream}, done: func(c *Counter) {
					if u, _, ok := c.Result(spend.Prices); ok {
						p.Meter.Record(u)
					}
				}}
			}
			e.Verdict, e.Status, e.Reason = "allow", resp.StatusCode, "token matched; forwarded to "+p.Upstream.Host
			p.Audit.Log(e)
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, err error) {
			e.Verdict, e.Status, e.Reason = "allow", http.StatusBadGateway, "upstream failed: "+shortErr(err)
			p.Audit.Log(e)
			apiError(w, http.StatusBadGateway, "api_error", "fleet credential proxy: upstream failed: "+shortErr(err))
		},
	}
	rp.ServeHTTP(w, r)
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
// records the usage once, at the end or when the guest hangs up (the
// API bills what it started).
type meteredBody struct {
	io.ReadCloser
	c    *Counter
	once sync.Once
	done func(*Counter)
}

func (b *meteredBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.c.Write(p[:n])
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

// scrubHeaders drops every response header that echoes the credential, so
// an upstream (or a debugging proxy in front of it) that reflects request
// headers cannot hand the key to the guest.
func scrubHeaders(h http.Header, secret string) {
	if secret == "" {
		return
	}
	for k, vs := range h {
		for _, v := range vs {
			if strings.Contains(v, secret) {
				h.Del(k)
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
	return p.Token != "" && subtle.ConstantTimeCompare([]byte(got), []byte(p.Token)) == 1
}

func (p *CredProxy) refuse(w http.ResponseWriter, e Entry, why string) {
	e.Verdict, e.Status, e.Reason = "deny", http.StatusUnauthorized, why
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

// oneConnListener hands http.Server a single connection, then blocks until
// closed.
type oneConnListener struct {
	c      net.Conn
	conns  chan net.Conn // holds c until Accept takes it
	closed chan struct{}
	once   sync.Once
}

func newOneConnListener(c net.Conn) *oneConnListener {
	l := &oneConnListener{c: c, conns: make(chan net.Conn, 1), closed: make(chan struct{})}
	l.conns <- c
	return l
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *oneConnListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *oneConnListener) Addr() net.Addr { return l.c.LocalAddr() }
