package egress

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// credRig serves a credential proxy on real TCP in front of a stub upstream
// that records what it received.
type credRig struct {
	proxy    *CredProxy
	addr     string
	received []http.Header
	dir      string
}

func newCredRig(t *testing.T, cred Credential) *credRig {
	r := &credRig{dir: t.TempDir()}
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.received = append(r.received, req.Header.Clone())
		// An upstream that echoes request headers, as debugging proxies do.
		w.Header().Set("X-Echo-Api-Key", req.Header.Get("X-Api-Key"))
		w.Header().Set("X-Echo-Auth", req.Header.Get("Authorization"))
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprintf(w, "event: message_stop\ndata: %s\n\n", req.URL.Path)
	}))
	t.Cleanup(up.Close)
	u, _ := url.Parse(up.URL)
	r.proxy = &CredProxy{Token: "fleet-token-1", Credential: cred, Upstream: u, Transport: http.DefaultTransport, Audit: NewAudit(r.dir)}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go r.proxy.ServeConn(context.Background(), c)
		}
	}()
	r.addr = ln.Addr().String()
	return r
}

func (r *credRig) post(t *testing.T, header, value string) (int, string) {
	req, _ := http.NewRequest("POST", "http://"+r.addr+"/v1/messages", strings.NewReader(`{"model":"x"}`))
	if header != "" {
		req.Header.Set(header, value)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestCredentialProxySwapsTheTokenForTheKey(t *testing.T) {
	r := newCredRig(t, Credential{Kind: APIKey, Value: "sk-ant-real"})
	for _, h := range [][2]string{{"Authorization", "Bearer fleet-token-1"}, {"X-Api-Key", "fleet-token-1"}} {
		code, body := r.post(t, h[0], h[1])
		if code != 200 || !strings.Contains(body, "data: /v1/messages") {
			t.Fatalf("with the token in %s: %d %q", h[0], code, body)
		}
	}
	for _, got := range r.received {
		if got.Get("X-Api-Key") != "sk-ant-real" || got.Get("Authorization") != "" {
			t.Errorf("upstream got x-api-key %q, authorization %q", got.Get("X-Api-Key"), got.Get("Authorization"))
		}
		if strings.Contains(fmt.Sprint(got), "fleet-token-1") {
			t.Error("the fleet token reached the upstream")
		}
	}
	if e := lastEntryIn(t, r.dir); e.Verdict != "allow" || e.Status != 200 || e.Path != "/v1/messages" || strings.Contains(fmt.Sprint(e), "sk-ant") {
		t.Errorf("audit entry %+v", e)
	}
}

func TestCredentialProxyRefusesWrongTokens(t *testing.T) {
	r := newCredRig(t, Credential{Kind: APIKey, Value: "sk-ant-real"})
	for _, h := range [][2]string{{"", ""}, {"Authorization", "Bearer fleet-token-2"}, {"X-Api-Key", "fleet-token-"}, {"Authorization", "fleet-token-1"}} {
		code, body := r.post(t, h[0], h[1])
		if code != 401 || !strings.Contains(body, "authentication_error") || !strings.Contains(body, "wrong or missing fleet token") {
			t.Errorf("%v: %d %q", h, code, body)
		}
	}
	if len(r.received) != 0 {
		t.Errorf("a refused request reached the upstream")
	}
	if e := lastEntryIn(t, r.dir); e.Verdict != "deny" {
		t.Errorf("audit entry %+v", e)
	}
}

func TestCredentialProxyWithoutAHostCredentialSaysSo(t *testing.T) {
	r := newCredRig(t, Credential{})
	code, body := r.post(t, "Authorization", "Bearer fleet-token-1")
	if code != 401 || !strings.Contains(body, "no ANTHROPIC_API_KEY or CLAUDE_CODE_OAUTH_TOKEN") {
		t.Errorf("%d %q", code, body)
	}
}

func TestCredentialProxyOAuthToken(t *testing.T) {
	r := newCredRig(t, Credential{Kind: OAuthToken, Value: "oauth-real"})
	if code, _ := r.post(t, "X-Api-Key", "fleet-token-1"); code != 200 {
		t.Fatal(code)
	}
	got := r.received[0]
	if got.Get("Authorization") != "Bearer oauth-real" || got.Get("X-Api-Key") != "" || !strings.Contains(got.Get("Anthropic-Beta"), "oauth-2025-04-20") {
		t.Errorf("upstream got %v", got)
	}
}

func TestCredentialProxyKeepsTheConnectionForManyRequests(t *testing.T) {
	r := newCredRig(t, Credential{Kind: APIKey, Value: "k"})
	c, err := net.Dial("tcp", r.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	for i := 0; i < 3; i++ {
		fmt.Fprintf(c, "GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Api-Key: fleet-token-1\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("request %d on one connection: %v %v", i, resp, err)
		}
		io.Copy(io.Discard, resp.Body)
	}
}

func TestCredentialFromEnv(t *testing.T) {
	env := map[string]string{"CLAUDE_CODE_OAUTH_TOKEN": "o", "ANTHROPIC_API_KEY": " k\n"}
	c, ok := CredentialFromEnv(func(k string) string { return env[k] })
	if !ok || c.Kind != APIKey || c.Value != "k" {
		t.Errorf("%+v %v", c, ok)
	}
	delete(env, "ANTHROPIC_API_KEY")
	if c, _ := CredentialFromEnv(func(k string) string { return env[k] }); c.Kind != OAuthToken {
		t.Errorf("%+v", c)
	}
	if _, ok := CredentialFromEnv(func(string) string { return "" }); ok {
		t.Error("found a credential in an empty environment")
	}
}

func lastEntryIn(t *testing.T, dir string) Entry {
	r := &rig{t: t, dir: dir}
	return r.lastEntry()
}

func (r *credRig) do(t *testing.T, method, path string) (int, string, http.Header) {
	req, _ := http.NewRequest(method, "http://"+r.addr+path, strings.NewReader(`{}`))
	req.Header.Set("Authorization", "Bearer fleet-token-1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

func TestCredentialProxyForwardsOnlyTheModelAPI(t *testing.T) {
	r := newCredRig(t, Credential{Kind: APIKey, Value: "sk-ant-real"})
	for _, c := range []struct{ method, path string }{
		{"POST", "/v1/messages"}, {"POST", "/v1/messages?beta=true"}, {"POST", "/v1/messages/count_tokens?beta=true"},
		{"GET", "/v1/models"}, {"GET", "/v1/models/claude-sonnet-4-5"},
	} {
		if code, body, _ := r.do(t, c.method, c.path); code != 200 {
			t.Errorf("%s %s: %d %q", c.method, c.path, code, body)
		}
	}
	n := len(r.received)
	for _, c := range []struct{ method, path string }{
		{"GET", "/v1/files"}, {"POST", "/v1/files"}, {"POST", "/v1/messages/batches"}, {"GET", "/v1/messages"},
		{"DELETE", "/v1/models/x"}, {"POST", "/v1/organizations/api_keys"}, {"GET", "/v1/models/x/y"},
		{"POST", "/v1/messages/../organizations/api_keys"}, {"POST", "/v1/messages/%2e%2e/files"},
		{"POST", "//v1/messages"}, {"POST", "/v1//messages"}, {"POST", "/v1/messages/"}, {"PUT", "/v1/messages"},
		{"POST", "/api/oauth/profile"}, {"GET", "/"},
	} {
		code, body, _ := r.do(t, c.method, c.path)
		if code != 403 || !strings.Contains(body, "permission_error") || !strings.Contains(body, "not forwarded") {
			t.Errorf("%s %s: %d %q, want a 403 in the API's error shape", c.method, c.path, code, body)
		}
		if e := lastEntryIn(t, r.dir); e.Verdict != "deny" || e.Status != 403 {
			t.Errorf("%s %s: audit entry %+v", c.method, c.path, e)
		}
	}
	if len(r.received) != n {
		t.Errorf("%d refused requests reached the upstream", len(r.received)-n)
	}
}

func TestCredentialProxyStripsTheKeyFromResponseHeaders(t *testing.T) {
	for _, cred := range []Credential{{Kind: APIKey, Value: "sk-ant-real"}, {Kind: OAuthToken, Value: "sk-ant-oat-real"}} {
		r := newCredRig(t, cred)
		code, _, h := r.do(t, "POST", "/v1/messages")
		if code != 200 {
			t.Fatalf("%s: %d", cred.Kind, code)
		}
		if strings.Contains(fmt.Sprint(h), cred.Value) {
			t.Errorf("%s: the key came back to the guest in %v", cred.Kind, h)
		}
		if h.Get("Content-Type") != "text/event-stream" {
			t.Errorf("%s: an innocent header was dropped: %v", cred.Kind, h)
		}
	}
}

// An upstream that echoes the key everywhere an answer has room for it:
// informational 103 headers, header names and values, announced and
// unannounced trailers. Read raw, the guest's bytes never hold it.
func TestTheKeyNeverComesBackInAnyPartOfAResponse(t *testing.T) {
	const key = "sk-ant-echo-KEY-1234"
	for _, nameInTrailer := range []bool{false, true} {
		rig := newProxyRig(t, func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			got := r.Header.Get("X-Api-Key")
			h := w.Header()
			h.Set("Link", "</style.css>; rel=preload; k="+got)
			h.Set("X-"+got, "1")
			w.WriteHeader(http.StatusEarlyHints)
			h.Set("Link", "</a.js>; rel=preload")
			h.Set("X-Echo", strings.ToUpper(got))
			w.WriteHeader(http.StatusEarlyHints)
			for k := range h {
				delete(h, k)
			}
			announce := "X-Trailer-Key, X-Fine"
			if nameInTrailer {
				announce += ", X-" + got
			}
			h.Set("Trailer", announce)
			h.Set("Content-Type", "text/event-stream")
			h.Set("X-Innocent", "yes")
			w.WriteHeader(200)
			io.WriteString(w, sseAnswer(1, 1))
			w.(http.Flusher).Flush()
			h.Set("X-Trailer-Key", got)
			h.Set("X-Fine", "ok")
			h.Set("X-"+got, "2")
			h.Set(http.TrailerPrefix+"X-Late", "Bearer "+got)
			h.Set(http.TrailerPrefix+"X-Late-Fine", "ok")
		}, Budget{}, func(p *CredProxy) { p.Credential.Value = key })
		c, err := net.Dial("tcp", strings.TrimPrefix(rig.base, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		body := `{"max_tokens":1}`
		fmt.Fprintf(c, "POST /v1/messages HTTP/1.1\r\nHost: x\r\nX-Api-Key: tok\r\nTE: trailers\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
		raw, _ := io.ReadAll(c)
		if rig.calls.Load() != 1 {
			t.Fatalf("the upstream got %d calls; the guest read %q", rig.calls.Load(), raw)
		}
		if strings.Contains(strings.ToLower(string(raw)), strings.ToLower(key)) {
			t.Fatalf("the key came back:\n%s", raw)
		}
		// (Innocent unannounced trailers may go with the scrubbed ones:
		// httputil counts trailers to decide how to pass them on.)
		want := []string{"HTTP/1.1 103", "</a.js>", "X-Innocent: yes", `"text":"hi"`}
		if !nameInTrailer {
			want = append(want, "X-Fine: ok") // an announced trailer
		}
		for _, w := range want {
			if !strings.Contains(string(raw), w) {
				t.Errorf("the answer lost %q:\n%s", w, raw)
			}
		}
	}
}

// 2,000 connections, each served and closed, leave no goroutine behind.
func TestConnectionsLeaveNothingBehind(t *testing.T) {
	rig := newProxyRig(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, `{"data":[]}`) }, Budget{})
	get := func() {
		c, s := net.Pipe()
		done := make(chan struct{})
		go func() { rig.p.ServeConn(context.Background(), s); close(done) }()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Api-Key: tok\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("%v %v", resp, err)
		}
		io.Copy(io.Discard, resp.Body)
		c.Close()
		<-done // ServeConn returns once its connection is gone
	}
	get()
	start := runtime.NumGoroutine()
	for i := 0; i < 2000; i++ {
		get()
	}
	deadline := time.Now().Add(10 * time.Second)
	n := runtime.NumGoroutine()
	for n > start+10 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		n = runtime.NumGoroutine()
	}
	if n > start+10 {
		t.Fatalf("%d goroutines after 2,000 connections, %d before", n, start)
	}
}

// A body that never arrives whole is cut at the request deadline, however
// it trickles; the call never reaches the upstream.
func TestASlowBodyIsCut(t *testing.T) {
	rig := newProxyRig(t, func(w http.ResponseWriter, r *http.Request) {}, Budget{}, func(p *CredProxy) { p.RequestTimeout = 300 * time.Millisecond })
	c, err := net.Dial("tcp", strings.TrimPrefix(rig.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "POST /v1/messages HTTP/1.1\r\nHost: x\r\nX-Api-Key: tok\r\nContent-Length: 100000\r\n\r\n{")
	cut := make(chan struct{})
	go func() { io.Copy(io.Discard, c); close(cut) }()
	t0 := time.Now()
	for i := 0; ; i++ {
		select {
		case <-cut:
			if rig.calls.Load() != 0 {
				t.Error("a body that never arrived was forwarded")
			}
			return
		case <-time.After(50 * time.Millisecond):
		}
		c.Write([]byte(" ")) // one byte at a time, never the whole body
		if time.Since(t0) > 10*time.Second {
			t.Fatalf("still open after %d trickled bytes", i)
		}
	}
}

// An answer that streams for longer than the request deadline, and
// longer than a write may stall, is not cut while it flows.
func TestAFlowingStreamIsNotCut(t *testing.T) {
	rig := newProxyRig(t, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-haiku-4-5\",\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n")
		for i := 0; i < 8; i++ {
			w.(http.Flusher).Flush()
			time.Sleep(100 * time.Millisecond)
			fmt.Fprintf(w, "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"part%d\"}}\n\n", i)
		}
		io.WriteString(w, "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":9}}\n\n")
	}, Budget{USD: 10}, func(p *CredProxy) { p.RequestTimeout, p.WriteStall = 200*time.Millisecond, 300*time.Millisecond })
	code, body := rig.post(haikuCall)
	if code != 200 || !strings.Contains(body, "part7") {
		t.Fatalf("%d %q", code, body)
	}
	if u := rig.usage(); u.OutputTokens != 9 || u.HeldTokens != 0 {
		t.Errorf("%+v", u)
	}
}

func TestRequestBodiesAreBoundedAndPlain(t *testing.T) {
	rig := newProxyRig(t, func(w http.ResponseWriter, r *http.Request) {}, Budget{}, func(p *CredProxy) { p.MaxBody = 4096 })
	big := `{"max_tokens":1,"messages":"` + strings.Repeat("x", 5000) + `"}`
	if code, body := rig.post(big); code != 413 || !strings.Contains(body, "request_too_large") {
		t.Errorf("an oversized body: %d %s", code, body)
	}
	// Chunked, with no length to refuse up front.
	req, _ := http.NewRequest("POST", rig.base+"/v1/messages", io.MultiReader(strings.NewReader(big)))
	req.Header.Set("X-Api-Key", "tok")
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		if resp.StatusCode != 413 {
			t.Errorf("an oversized chunked body: %d", resp.StatusCode)
		}
	}
	if code, body := rig.post(`{"max_tokens":1}`, "Content-Encoding", "gzip"); code != 415 {
		t.Errorf("a compressed body: %d %s", code, body)
	}
	if code, body := rig.post(`{"max_tokens":1}`, "Connection", "Upgrade", "Upgrade", "websocket"); code != 400 {
		t.Errorf("an upgrade: %d %s", code, body)
	}
	if rig.calls.Load() != 0 {
		t.Errorf("%d refused calls reached the upstream", rig.calls.Load())
	}
}

// blockingBody sends nothing until it is closed: a guest trickling a body
// it announced as large.
type blockingBody struct{ done chan struct{} }

func (b blockingBody) Read([]byte) (int, error) { <-b.done; return 0, io.ErrUnexpectedEOF }
func (b blockingBody) Close() error             { return nil }

// An announced length is held against the machine's share before any of
// it is allocated: the fifth 32 MiB announcement is refused at once.
func TestAnnouncedBodiesAreHeldBeforeTheyAreAllocated(t *testing.T) {
	p := &CredProxy{}
	body := blockingBody{make(chan struct{})}
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		r := httptest.NewRequest(http.MethodPost, "/v1/messages", nil)
		r.Body, r.ContentLength = body, 32<<20
		wg.Add(1)
		go func() { defer wg.Done(); _, release, _ := p.readBody(r); release() }()
	}
	deadline := time.Now().Add(5 * time.Second)
	for p.held.Load() < 128<<20 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	r := httptest.NewRequest(http.MethodPost, "/v1/messages", nil)
	r.Body, r.ContentLength = body, 32<<20
	if _, release, err := p.readBody(r); !errors.Is(err, errBodiesBusy) {
		t.Errorf("a fifth 32 MiB body while four are announced: %v", err)
		release()
	}
	close(body.done)
	wg.Wait()
	if n := p.held.Load(); n != 0 {
		t.Fatalf("%d bytes still held after every call ended", n)
	}
}

// A fork's child takes its own token and the one its source's running
// agent holds; no other, and an empty inherited token matches nothing.
func TestCredentialProxyTakesInheritedTokensOnly(t *testing.T) {
	r := newCredRig(t, Credential{Kind: APIKey, Value: "sk-ant-real"})
	r.proxy.Token, r.proxy.Inherited = "child-token", []string{"", "source-token"}
	for _, tc := range []struct {
		token string
		want  int
	}{{"child-token", 200}, {"source-token", 200}, {"", 401}, {"fleet-token-1", 401}, {"source-tokenX", 401}, {"child-tokensource-token", 401}} {
		code, body := r.post(t, "Authorization", "Bearer "+tc.token)
		if code != tc.want {
			t.Errorf("token %q: %d %q, want %d", tc.token, code, body, tc.want)
		}
	}
	r.proxy.Token, r.proxy.Inherited = "", []string{""}
	if code, _ := r.post(t, "Authorization", "Bearer "); code != 401 {
		t.Errorf("no token at all: %d, want 401", code)
	}
}
