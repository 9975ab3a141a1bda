package egress

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeResolver answers from a table, as DNS would for the test names.
type fakeResolver map[string][]string

func (f fakeResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, s := range f[host] {
		out = append(out, netip.MustParseAddr(s))
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no such host %s", host)
	}
	return out, nil
}

// rig is one machine's proxy in front of stub sites. Sites have public
// test addresses (203.0.113.0/24); the dialer maps them to local stubs, so
// the proxy's address checks see what they would see in production.
type rig struct {
	t      *testing.T
	dir    string
	proxy  *Proxy
	mu     sync.Mutex
	routes map[string]string // checked address -> stub listener
	dialed []string
	served sync.WaitGroup
}

func newRig(t *testing.T, allow ...string) *rig {
	t.Helper()
	r := &rig{t: t, dir: t.TempDir(), routes: map[string]string{}}
	// Registered before the guest connections' own cleanups, so it runs
	// after them: every proxy has finished logging before the folder goes.
	t.Cleanup(r.served.Wait)
	pol, err := Build(ModeAllowlist, nil, nil, allow)
	if err != nil {
		t.Fatal(err)
	}
	r.setPolicy(pol)
	r.proxy = &Proxy{
		Policy: func() (Policy, error) { return LoadPolicy(r.dir) },
		Resolver: fakeResolver{
			"allowed.test":  {"203.0.113.10"},
			"other.test":    {"203.0.113.11"},
			"loopback.test": {"127.0.0.1"},
			"rebind.test":   {"203.0.113.10", "10.0.2.2"},
			// Go's resolver answers IPv4 in mapped form.
			"mapped.test":    {"::ffff:203.0.113.10"},
			"mapped-lo.test": {"::ffff:127.0.0.1"},
		},
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			r.mu.Lock()
			r.dialed = append(r.dialed, addr)
			to, ok := r.routes[addr]
			r.mu.Unlock()
			if !ok {
				return nil, fmt.Errorf("dial %s: no route in this test", addr)
			}
			var d net.Dialer
			return d.DialContext(ctx, network, to)
		},
		Audit:   NewAudit(r.dir),
		Timeout: 5 * time.Second,
	}
	return r
}

func (r *rig) setPolicy(p Policy) {
	if err := SavePolicy(r.dir, p); err != nil {
		r.t.Fatal(err)
	}
}

func (r *rig) route(addr string, stub string) {
	r.mu.Lock()
	r.routes[addr] = stub
	r.mu.Unlock()
}

// conn opens a guest connection to the proxy over real TCP.
func (r *rig) conn() net.Conn {
	r.t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		r.t.Fatal(err)
	}
	r.served.Add(1)
	go func() {
		defer r.served.Done()
		c, err := ln.Accept()
		ln.Close()
		if err == nil {
			r.proxy.ServeConn(context.Background(), c)
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

func (r *rig) entries() []Entry {
	f, err := os.Open(filepath.Join(r.dir, AuditFile))
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []Entry
	ReadEntries(f, func(e Entry) { out = append(out, e) })
	return out
}

func (r *rig) lastEntry() Entry {
	es := r.entries()
	if len(es) == 0 {
		r.t.Fatal("no audit entry was written")
	}
	return es[len(es)-1]
}

// connect sends CONNECT and returns the proxy's status and a reader.
func connect(t *testing.T, c net.Conn, target string) (*http.Response, *bufio.Reader) {
	t.Helper()
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		t.Fatalf("CONNECT %s: %v", target, err)
	}
	return resp, br
}

func tlsStub(t *testing.T) (*httptest.Server, *[]string) {
	var mu sync.Mutex
	var hosts []string
	s := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hosts = append(hosts, r.TLS.ServerName)
		mu.Unlock()
		io.WriteString(w, "hello from "+r.Host)
	}))
	s.StartTLS()
	t.Cleanup(s.Close)
	return s, &hosts
}

func TestConnectAllowedTLSReachesTheCheckedAddress(t *testing.T) {
	r := newRig(t, "allowed.test")
	site, names := tlsStub(t)
	r.route("203.0.113.10:443", site.Listener.Addr().String())
	c := r.conn()
	resp, _ := connect(t, c, "allowed.test:443")
	if resp.StatusCode != 200 {
		t.Fatalf("CONNECT to an allowed host: %s", resp.Status)
	}
	tc := tls.Client(c, &tls.Config{ServerName: "allowed.test", InsecureSkipVerify: true})
	fmt.Fprintf(tc, "GET / HTTP/1.1\r\nHost: allowed.test\r\nConnection: close\r\n\r\n")
	body, _ := io.ReadAll(tc)
	if !strings.Contains(string(body), "hello from allowed.test") {
		t.Fatalf("the site did not answer through the tunnel: %q", body)
	}
	if len(*names) != 1 || (*names)[0] != "allowed.test" {
		t.Errorf("the site saw server names %v", *names)
	}
	e := r.lastEntry()
	if e.Verdict != "allow" || e.Host != "allowed.test" || e.Addr != "203.0.113.10" || e.Reason != "allowed by allowed.test:443" {
		t.Errorf("audit entry %+v", e)
	}
}

func TestConnectRefusals(t *testing.T) {
	cases := []struct {
		name, target string
		status       int
		reason       string
	}{
		{"not allowed", "other.test:443", 403, "not in the allowlist"},
		{"allowed name resolving to loopback", "loopback.test:443", 403, "resolves to a loopback address"},
		{"allowed name also resolving inside", "rebind.test:443", 403, "resolves to a private address"},
		{"metadata literal", "169.254.169.254:443", 403, "cloud metadata"},
		{"trailing dot", "allowed.test.:443", 400, "ends with a dot"},
		{"userinfo", "user@allowed.test:443", 400, "malformed host"},
		{"escaped NUL byte", "allowed.test%00.evil:443", 400, "malformed"},
		{"raw NUL byte", "allowed.test\x00.evil:443", 400, "malformed"},
		{"numeric shorthand", "127.1:443", 400, "numeric"},
		{"over-long name", strings.Repeat("a", 300) + ":443", 400, "longer than"},
		{"no port", "allowed.test", 400, "not host:port"},
		{"mapped loopback", "[::ffff:127.0.0.1]:443", 403, "IPv4-mapped"},
		{"resolver's mapped loopback", "mapped-lo.test:443", 403, "resolves to a loopback address"},
	}
	r := newRig(t, "allowed.test", "loopback.test", "rebind.test", "169.254.169.254", "::ffff:127.0.0.1", "mapped-lo.test")
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp, br := connect(t, r.conn(), c.target)
			body, _ := io.ReadAll(io.LimitReader(br, 4096))
			if resp.StatusCode != c.status || !strings.Contains(string(body), c.reason) {
				t.Errorf("CONNECT %s: %s %q, want %d with %q", c.target, resp.Status, body, c.status, c.reason)
			}
			if e := r.lastEntry(); e.Verdict != "deny" || !strings.Contains(e.Reason, c.reason) {
				t.Errorf("audit entry %+v", e)
			}
		})
	}
	if len(r.dialed) != 0 {
		t.Errorf("refused requests still dialed %v", r.dialed)
	}
}

func TestResolverAnswersInMappedFormAreUnmapped(t *testing.T) {
	r := newRig(t, "mapped.test")
	site, _ := tlsStub(t)
	r.route("203.0.113.10:443", site.Listener.Addr().String())
	if resp, _ := connect(t, r.conn(), "mapped.test:443"); resp.StatusCode != 200 {
		t.Fatalf("a public IPv4 answer in mapped form was refused: %s", resp.Status)
	}
}

func TestConnectRefusesTLSWhoseServerNameDiffers(t *testing.T) {
	r := newRig(t, "allowed.test")
	site, names := tlsStub(t)
	r.route("203.0.113.10:443", site.Listener.Addr().String())
	for _, sni := range []string{"other.test", ""} {
		c := r.conn()
		if resp, _ := connect(t, c, "allowed.test:443"); resp.StatusCode != 200 {
			t.Fatal(resp.Status)
		}
		tc := tls.Client(c, &tls.Config{ServerName: sni, InsecureSkipVerify: true})
		if err := tc.Handshake(); err == nil {
			t.Errorf("SNI %q through a CONNECT to allowed.test: handshake succeeded", sni)
		}
		e := r.lastEntry()
		if e.Verdict != "deny" || !strings.Contains(e.Reason, "TLS") {
			t.Errorf("SNI %q: audit entry %+v", sni, e)
		}
	}
	if len(*names) != 0 {
		t.Errorf("the site saw a TLS session: %v", *names)
	}
}

func TestPlainHTTPForwardsWithTheCheckedHost(t *testing.T) {
	var gotHost, gotProxyAuth string
	site := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		gotHost, gotProxyAuth = req.Host, req.Header.Get("Proxy-Authorization")
		io.WriteString(w, "plain "+req.URL.Path)
	}))
	defer site.Close()
	r := newRig(t, "allowed.test:8080")
	r.route("203.0.113.10:8080", site.Listener.Addr().String())
	c := r.conn()
	fmt.Fprintf(c, "GET http://allowed.test:8080/x HTTP/1.1\r\nHost: evil.test\r\nProxy-Authorization: secret\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(body) != "plain /x" {
		t.Fatalf("%s %q", resp.Status, body)
	}
	if gotHost != "allowed.test:8080" || gotProxyAuth != "" {
		t.Errorf("site saw Host %q and Proxy-Authorization %q", gotHost, gotProxyAuth)
	}

	for req, want := range map[string]string{
		"GET http://other.test/ HTTP/1.1\r\nHost: other.test\r\n\r\n":         "403",
		"GET http://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n":     "403",
		"GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n":                        "400",
		"GET https://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n":    "400",
		"GET http://u:p@allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n": "400",
		"GET http://allowed.test./ HTTP/1.1\r\nHost: allowed.test\r\n\r\n":    "400",
		"GET http://[::1]:8080/ HTTP/1.1\r\nHost: x\r\n\r\n":                  "403",
		"GARBAGE\r\n\r\n": "400",
		"GET http://allowed.test/ HTTP/1.1\r\nX: " + strings.Repeat("a", 70000) + "\r\n\r\n": "400",
	} {
		c := r.conn()
		io.WriteString(c, req)
		line, _ := bufio.NewReader(c).ReadString('\n')
		if !strings.Contains(line, want) {
			t.Errorf("%.60q: got %q, want %s", req, line, want)
		}
	}
}

func TestPolicyChangesApplyToRunningTunnels(t *testing.T) {
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go io.Copy(c, c)
		}
	}()
	r := newRig(t)
	r.proxy.Recheck = 50 * time.Millisecond
	r.route("203.0.113.10:7", echo.Addr().String())

	if resp, _ := connect(t, r.conn(), "allowed.test:7"); resp.StatusCode != 403 {
		t.Fatalf("before allow: %s", resp.Status)
	}
	pol, _ := LoadPolicy(r.dir)
	pol, _ = pol.WithAllowed("allowed.test:7/raw")
	r.setPolicy(pol)
	c := r.conn()
	resp, br := connect(t, c, "allowed.test:7")
	if resp.StatusCode != 200 {
		t.Fatalf("after allow: %s", resp.Status)
	}
	io.WriteString(c, "ping\n")
	if line, _ := br.ReadString('\n'); line != "ping\n" {
		t.Fatalf("echo through the tunnel: %q", line)
	}
	pol, _ = pol.WithDenied("allowed.test")
	r.setPolicy(pol)
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := br.ReadString('\n'); err == nil || strings.Contains(err.Error(), "timeout") {
		t.Fatalf("a denied host's tunnel stayed open: %v", err)
	}
	if e := r.lastEntry(); !strings.Contains(e.Reason, "tunnel cut: denied by allowed.test") {
		t.Errorf("audit entry %+v", e)
	}
}

func TestAllowFailsClosedWhenTheAuditLogCannotBeWritten(t *testing.T) {
	r := newRig(t, "allowed.test")
	site, _ := tlsStub(t)
	r.route("203.0.113.10:443", site.Listener.Addr().String())
	r.proxy.Audit = &Audit{path: filepath.Join(r.dir, "no", "such", "dir", "log"), now: time.Now}
	if resp, _ := connect(t, r.conn(), "allowed.test:443"); resp.StatusCode != 403 {
		t.Errorf("an unlogged connection was allowed: %s", resp.Status)
	}
}

func TestRawEntryCarriesAServerThatSpeaksFirst(t *testing.T) {
	banner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer banner.Close()
	go func() {
		c, err := banner.Accept()
		if err == nil {
			io.WriteString(c, "SSH-2.0-stub\r\n")
			io.Copy(io.Discard, c)
			c.Close()
		}
	}()
	r := newRig(t, "allowed.test:22/raw")
	r.route("203.0.113.10:22", banner.Addr().String())
	c := r.conn()
	resp, br := connect(t, c, "allowed.test:22")
	if resp.StatusCode != 200 {
		t.Fatal(resp.Status)
	}
	if line, err := br.ReadString('\n'); err != nil || line != "SSH-2.0-stub\r\n" {
		t.Fatalf("the server's banner did not come through before the guest spoke: %q %v", line, err)
	}
}

// recorder is an upstream that records every byte it receives and can
// speak first, as SMTP and other STARTTLS protocols do.
func recorder(t *testing.T, banner string) (string, func() string) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var mu sync.Mutex
	var got strings.Builder
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.WriteString(c, banner)
				b := make([]byte, 4096)
				for {
					n, err := c.Read(b)
					mu.Lock()
					got.Write(b[:n])
					mu.Unlock()
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String(), func() string { mu.Lock(); defer mu.Unlock(); return got.String() }
}

func TestTunnelsCarryOnlyTLSToTheirName(t *testing.T) {
	cases := []struct {
		name, target, banner, send, reason string
	}{
		{"plain HTTP with another Host on an allowed port 80", "allowed.test:80", "", "GET / HTTP/1.1\r\nHost: other.test\r\n\r\n", "not TLS"},
		{"STARTTLS: cleartext first, TLS later", "allowed.test:25", "220 smtp ready\r\n", "EHLO guest\r\nSTARTTLS\r\n", "not TLS"},
		{"raw bytes", "allowed.test:443", "", "\x00\x01\x02", "not TLS"},
		{"an SSLv2-style hello", "allowed.test:443", "", "\x80\x2e\x01\x00\x02\x00\x15\x00\x00\x00\x10", "not TLS"},
		{"a heartbeat first", "allowed.test:443", "", "\x18\x03\x03\x00\x03\x01\x40\x00", "not TLS"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := newRig(t, "allowed.test:80", "allowed.test:25", "allowed.test")
			addr, received := recorder(t, c.banner)
			_, port, _ := net.SplitHostPort(c.target)
			r.route("203.0.113.10:"+port, addr)
			conn := r.conn()
			resp, br := connect(t, conn, c.target)
			if resp.StatusCode != 200 {
				t.Fatal(resp.Status)
			}
			io.WriteString(conn, c.send)
			conn.SetReadDeadline(time.Now().Add(3 * time.Second))
			rest, _ := io.ReadAll(br)
			if len(rest) != 0 {
				t.Errorf("the guest got %q from the upstream", rest)
			}
			time.Sleep(50 * time.Millisecond)
			if got := received(); got != "" {
				t.Errorf("the upstream received %q", got)
			}
			if e := r.lastEntry(); e.Verdict != "deny" || !strings.Contains(e.Reason, c.reason) {
				t.Errorf("audit entry %+v", e)
			}
		})
	}
}

func TestTunnelWithoutAClientHelloIsCutAtTheDeadline(t *testing.T) {
	r := newRig(t, "allowed.test")
	addr, _ := recorder(t, "")
	r.route("203.0.113.10:443", addr)
	r.proxy.Timeout = 300 * time.Millisecond
	c := r.conn()
	resp, br := connect(t, c, "allowed.test:443")
	if resp.StatusCode != 200 {
		t.Fatal(resp.Status)
	}
	start := time.Now()
	if _, err := br.ReadByte(); err == nil || strings.Contains(err.Error(), "timeout") {
		t.Fatalf("a silent tunnel was not cut: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("cut after %s", d)
	}
	if e := r.lastEntry(); !strings.Contains(e.Reason, "no TLS ClientHello") {
		t.Errorf("audit entry %+v", e)
	}
}

func TestIdleTunnelIsCut(t *testing.T) {
	r := newRig(t, "allowed.test:7/raw")
	addr, _ := recorder(t, "hi\n")
	r.route("203.0.113.10:7", addr)
	r.proxy.IdleTimeout, r.proxy.Recheck = 300*time.Millisecond, 50*time.Millisecond
	c := r.conn()
	resp, br := connect(t, c, "allowed.test:7")
	if resp.StatusCode != 200 {
		t.Fatal(resp.Status)
	}
	if line, _ := br.ReadString('\n'); line != "hi\n" {
		t.Fatalf("banner %q", line)
	}
	if _, err := br.ReadByte(); err == nil || strings.Contains(err.Error(), "timeout") {
		t.Fatalf("an idle tunnel was not cut: %v", err)
	}
	if e := r.lastEntry(); !strings.Contains(e.Reason, "tunnel cut: idle") {
		t.Errorf("audit entry %+v", e)
	}
}

func TestPinnedHostsMatchWithoutCase(t *testing.T) {
	r := newRig(t)
	pol, _ := Build(ModeAllowlist, nil, nil, []string{"mirror.corp"})
	pol.Hosts = map[string]string{"MIRROR.Corp": "203.0.113.10"}
	r.setPolicy(pol)
	site, _ := tlsStub(t)
	r.route("203.0.113.10:443", site.Listener.Addr().String())
	if resp, _ := connect(t, r.conn(), "Mirror.CORP:443"); resp.StatusCode != 200 {
		t.Fatalf("a pinned name in another case: %s", resp.Status)
	}
}

func TestGuestStringsAreCutAndEscapedInTheLog(t *testing.T) {
	if why := sniMismatch(Host{Name: "allowed.test"}, "evil\x1b[31m\x00.test"); strings.ContainsAny(why, "\x1b\x00") {
		t.Errorf("a server name reached the reason raw: %q", why)
	}
	dir := t.TempDir()
	a := NewAudit(dir)
	a.Log(Entry{Proxy: "egress", Verdict: "deny", Host: strings.Repeat("h", 5000), SNI: strings.Repeat("s", 5000), Reason: "r"})
	var got []Entry
	f, _ := os.Open(filepath.Join(dir, AuditFile))
	ReadEntries(f, func(e Entry) { got = append(got, e) })
	f.Close()
	if len(got) != 1 || len(got[0].Host) > maxField+3 || len(got[0].SNI) > maxField+3 {
		t.Fatalf("long fields were not cut: %d entries", len(got))
	}
	line := Entry{Verdict: "deny", Proxy: "egress", Host: "a\x1b[2Jb", SNI: "\x07", Reason: "x\ny"}.String()
	if strings.ContainsAny(line, "\x1b\x07\n") {
		t.Errorf("a rendered entry carries control bytes: %q", line)
	}
}

func TestAuditLogRotatesAndTailStreamsBothFiles(t *testing.T) {
	dir := t.TempDir()
	a := NewAudit(dir)
	a.MaxBytes = 4096
	for i := 0; i < 200; i++ {
		if err := a.Log(Entry{Proxy: "egress", Verdict: "allow", Host: fmt.Sprintf("h%03d.test", i), Reason: "r"}); err != nil {
			t.Fatal(err)
		}
	}
	var total int64
	for _, name := range []string{AuditFile, AuditFile + ".1"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() > a.MaxBytes {
			t.Errorf("%s is %d bytes, over the cap %d", name, fi.Size(), a.MaxBytes)
		}
		total += fi.Size()
	}
	var hosts []string
	err := Tail(context.Background(), dir, false, time.Millisecond, func(line []byte) error {
		return ReadEntries(strings.NewReader(string(line)), func(e Entry) { hosts = append(hosts, e.Host) })
	})
	if err != nil || len(hosts) == 0 || hosts[len(hosts)-1] != "h199.test" {
		t.Fatalf("tail: %v, %d lines, last %v", err, len(hosts), hosts[len(hosts)-1:])
	}
	for i := 1; i < len(hosts); i++ {
		if hosts[i] <= hosts[i-1] {
			t.Fatalf("tail out of order at %d: %s after %s", i, hosts[i], hosts[i-1])
		}
	}
}

func TestTailFollowsAcrossRotationAndSkipsPartialLines(t *testing.T) {
	dir := t.TempDir()
	a := NewAudit(dir)
	a.MaxBytes = 1024
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	lines := make(chan string, 100)
	go Tail(ctx, dir, true, 5*time.Millisecond, func(line []byte) error {
		if line[len(line)-1] != '\n' {
			t.Errorf("a partial line was passed on: %q", line)
		}
		ReadEntries(strings.NewReader(string(line)), func(e Entry) { lines <- e.Host })
		return nil
	})
	// A line being written (no newline yet) waits for its end.
	os.WriteFile(filepath.Join(dir, AuditFile), []byte(`{"host":"part`), 0o600)
	time.Sleep(30 * time.Millisecond)
	f, _ := os.OpenFile(filepath.Join(dir, AuditFile), os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(`ial.test","reason":"r"}` + "\n")
	f.Close()
	want := []string{"partial.test"}
	for i := 0; i < 40; i++ {
		h := fmt.Sprintf("h%02d.test", i)
		a.Log(Entry{Host: h, Reason: "r"})
		want = append(want, h)
		time.Sleep(2 * time.Millisecond)
	}
	for i, w := range want {
		select {
		case got := <-lines:
			if got != w {
				t.Fatalf("line %d: %s, want %s", i, got, w)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("line %d (%s) never came", i, w)
		}
	}
}
