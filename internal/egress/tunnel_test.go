package egress

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// scripted is an upstream that reads the guest's first TLS record, answers
// with answer, and records every byte it receives.
func scripted(t *testing.T, answer []byte) (string, func() []byte) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var mu sync.Mutex
	var got bytes.Buffer
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				hdr := make([]byte, recordHeaderLen)
				if _, err := io.ReadFull(c, hdr); err != nil {
					return
				}
				body := make([]byte, int(hdr[3])<<8|int(hdr[4]))
				io.ReadFull(c, body)
				mu.Lock()
				got.Write(hdr)
				got.Write(body)
				mu.Unlock()
				c.Write(answer)
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
	return ln.Addr().String(), func() []byte { mu.Lock(); defer mu.Unlock(); return bytes.Clone(got.Bytes()) }
}

// openTunnel CONNECTs through the rig and fails the test unless it is
// established.
func openTunnel(t *testing.T, r *rig, target string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c := r.conn()
	resp, br := connect(t, c, target)
	if resp.StatusCode != 200 {
		t.Fatalf("CONNECT %s: %s", target, resp.Status)
	}
	return c, br
}

// cutByProxy waits for the proxy to close the tunnel (not a timeout here)
// and returns what reached the guest.
func cutByProxy(t *testing.T, c net.Conn, br *bufio.Reader) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(br)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("the tunnel stayed open (read %q)", got)
	}
	return got
}

// upstreamGot waits until the upstream has seen n bytes or a moment has passed,
// so the test sees all the proxy forwarded.
func upstreamGot(received func() []byte, n int) []byte {
	for i := 0; i < 100 && len(received()) < n; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	return received()
}

// The example: on a non-raw allowed.test:25, a throwaway
// ClientHello naming allowed.test, then EHLO, STARTTLS and a TLS session to
// another name.
func TestTunnelCutsGuestCleartextAfterTheHello(t *testing.T) {
	r := newRig(t, "allowed.test:25")
	sh := serverHelloRecord(true)
	addr, received := scripted(t, sh)
	r.route("203.0.113.10:25", addr)
	c, br := openTunnel(t, r, "allowed.test:25")
	hello := goClientHello(t, "allowed.test")
	c.Write(hello)
	back := make([]byte, len(sh))
	if _, err := io.ReadFull(br, back); err != nil || !bytes.Equal(back, sh) {
		t.Fatalf("the ServerHello did not come back: %q %v", back, err)
	}
	c.Write([]byte("EHLO guest\r\nSTARTTLS\r\n"))
	c.Write(goClientHello(t, "other.test"))
	if rest := cutByProxy(t, c, br); len(rest) != 0 {
		t.Errorf("the guest got %q after the cut", rest)
	}
	if got := upstreamGot(received, len(hello)); !bytes.Equal(got, hello) {
		t.Errorf("the upstream received %d bytes (%q...), want only the %d of the hello", len(got), got[min(len(got), len(hello)):], len(hello))
	}
	want := fmt.Sprintf("tunnel cut: the guest broke TLS framing at byte %d: byte 0x45 'E' is not a TLS record", len(hello))
	if e := r.lastEntry(); e.Verdict != "deny" || !strings.Contains(e.Reason, want) || e.Host != "allowed.test" {
		t.Errorf("audit entry %+v, want %q", e, want)
	}
}

func TestTunnelCutsUpstreamCleartext(t *testing.T) {
	sh := serverHelloRecord(true)
	cases := []struct {
		name   string
		answer []byte
		guest  []byte // what reaches the guest
		reason string
	}{
		{"cleartext after a ServerHello", append(bytes.Clone(sh), "250 ok\r\n"...), sh, fmt.Sprintf("the upstream broke TLS framing at byte %d: byte 0x32 '2'", len(sh))},
		{"a banner before anything", []byte("220 smtp ready\r\n"), nil, "the upstream broke TLS framing at byte 0: byte 0x32 '2'"},
		{"a heartbeat", append(bytes.Clone(sh), record(recHeartbeat, 0x0303, []byte{2, 0, 1, 'x'})...), sh, fmt.Sprintf("the upstream broke TLS framing at byte %d: a heartbeat record", len(sh))},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, "allowed.test:25")
			addr, _ := scripted(t, tc.answer)
			r.route("203.0.113.10:25", addr)
			c, br := openTunnel(t, r, "allowed.test:25")
			c.Write(goClientHello(t, "allowed.test"))
			if got := cutByProxy(t, c, br); !bytes.Equal(got, tc.guest) {
				t.Errorf("the guest got %q, want %q", got, tc.guest)
			}
			if e := r.lastEntry(); !strings.Contains(e.Reason, "tunnel cut: "+tc.reason) {
				t.Errorf("audit entry %+v, want %q", e, tc.reason)
			}
		})
	}
}

func TestTunnelRefusesASecondHelloToAnotherName(t *testing.T) {
	r := newRig(t, "allowed.test")
	sh := serverHelloRecord(true)
	addr, received := scripted(t, sh)
	r.route("203.0.113.10:443", addr)
	c, br := openTunnel(t, r, "allowed.test:443")
	hello, other := goClientHello(t, "allowed.test"), goClientHello(t, "other.test")
	c.Write(hello)
	io.ReadFull(br, make([]byte, len(sh)))
	ccs := record(recChangeCipherSpec, 0x0303, []byte{1})
	c.Write(append(bytes.Clone(ccs), other...))
	cutByProxy(t, c, br)
	// All of the second hello but its last byte went up: never a whole one.
	want := len(hello) + len(ccs) + len(other) - 1
	if got := upstreamGot(received, want); len(got) != want {
		t.Errorf("the upstream received %d bytes, want %d", len(got), want)
	}
	if e := r.lastEntry(); !strings.Contains(e.Reason, "a ClientHello refused: TLS server name other.test does not match CONNECT host allowed.test") {
		t.Errorf("audit entry %+v", e)
	}
}

// A guest that sends more than its hello before the upstream answered as a
// TLS server sends nothing more up: a cleartext server gets one hello at
// most, however the guest pipelines.
func TestTunnelHoldsTheGuestUntilTheServerHello(t *testing.T) {
	r := newRig(t, "allowed.test:25")
	r.proxy.Timeout = 300 * time.Millisecond
	addr, received := recorder(t, "")
	r.route("203.0.113.10:25", addr)
	c, br := openTunnel(t, r, "allowed.test:25")
	hello := goClientHello(t, "allowed.test")
	smuggled := record(recApplicationData, 0x0303, []byte("\r\nEHLO guest\r\nMAIL FROM:<a@b>\r\n"))
	c.Write(append(bytes.Clone(hello), smuggled...))
	cutByProxy(t, c, br)
	if got := upstreamGot(func() []byte { return []byte(received()) }, len(hello)); !bytes.Equal(got, hello) {
		t.Errorf("the upstream received %q, want only the hello", got[min(len(got), len(hello)):])
	}
	if e := r.lastEntry(); !strings.Contains(e.Reason, "tunnel cut: the upstream sent no TLS ServerHello within 300ms") {
		t.Errorf("audit entry %+v", e)
	}
}

// tlsEcho is a TLS server that echoes what it reads.
func tlsEcho(t *testing.T, cfg *tls.Config) (string, chan tls.ConnectionState) {
	cfg.Certificates = []tls.Certificate{testCert()}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	states := make(chan tls.ConnectionState, 1)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				tc := c.(*tls.Conn)
				if tc.Handshake() == nil {
					states <- tc.ConnectionState()
				}
				io.Copy(tc, tc)
			}()
		}
	}()
	return ln.Addr().String(), states
}

func TestRealTLSSessionsPassTheTunnelBothWays(t *testing.T) {
	cases := []struct {
		name           string
		client, server *tls.Config
		version        uint16
	}{
		{"TLS 1.3", &tls.Config{}, &tls.Config{}, tls.VersionTLS13},
		{"TLS 1.2", &tls.Config{MaxVersion: tls.VersionTLS12}, &tls.Config{}, tls.VersionTLS12},
		{"TLS 1.3 after a HelloRetryRequest", &tls.Config{}, &tls.Config{CurvePreferences: []tls.CurveID{tls.CurveP256}}, tls.VersionTLS13},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, "allowed.test")
			addr, states := tlsEcho(t, tc.server)
			r.route("203.0.113.10:443", addr)
			c, br := openTunnel(t, r, "allowed.test:443")
			c.SetDeadline(time.Now().Add(20 * time.Second))
			tc.client.ServerName, tc.client.InsecureSkipVerify = "allowed.test", true
			cc := tls.Client(&bufConn{c, br}, tc.client)
			payload := make([]byte, 1<<20)
			rand.Read(payload)
			go cc.Write(payload)
			back := make([]byte, len(payload))
			if _, err := io.ReadFull(cc, back); err != nil || !bytes.Equal(back, payload) {
				t.Fatalf("1 MiB echoed through the tunnel: %v", err)
			}
			if st := <-states; st.Version != tc.version || st.ServerName != "allowed.test" {
				t.Errorf("session version %x, server name %q", st.Version, st.ServerName)
			}
			cc.Close()
			for _, e := range r.entries() {
				if e.Verdict == "deny" {
					t.Errorf("a good session was refused: %+v", e)
				}
			}
		})
	}
}

// bufConn reads through the reader that took the CONNECT response.
type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufConn) Read(p []byte) (int, error) { return b.r.Read(p) }

func TestDenyWrittenAsAnAddressCoversNamesResolvingThere(t *testing.T) {
	cases := []struct {
		name, deny, target string
		refused            bool
	}{
		{"every port", "203.0.113.10", "allowed.test:443", true},
		{"that port", "203.0.113.10:443", "allowed.test:443", true},
		{"another port", "203.0.113.10:80", "allowed.test:443", false},
		{"one of several answers", "203.0.113.11", "two.test:443", true},
		{"a pinned name", "203.0.113.10", "pinned.test:443", true},
		{"in IPv4-mapped form", "::ffff:203.0.113.10", "allowed.test:443", true},
		{"another address", "203.0.113.99", "allowed.test:443", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, "allowed.test", "two.test", "pinned.test")
			r.proxy.Resolver.(fakeResolver)["two.test"] = []string{"203.0.113.12", "203.0.113.11"}
			pol, _ := LoadPolicy(r.dir)
			pol.Hosts = map[string]string{"pinned.test": "203.0.113.10"}
			pol, err := pol.WithDenied(tc.deny)
			if err != nil {
				t.Fatal(err)
			}
			r.setPolicy(pol)
			site, _ := tlsStub(t)
			for _, a := range []string{"203.0.113.10:443", "203.0.113.12:443", "203.0.113.11:443"} {
				r.route(a, site.Listener.Addr().String())
			}
			resp, _ := connect(t, r.conn(), tc.target)
			if refused := resp.StatusCode == 403; refused != tc.refused {
				t.Fatalf("CONNECT %s with deny %s: %s", tc.target, tc.deny, resp.Status)
			}
			if e := r.lastEntry(); tc.refused && (e.Verdict != "deny" || !strings.Contains(e.Reason, "denied by")) {
				t.Errorf("audit entry %+v", e)
			}
			if tc.refused && len(r.dialed) != 0 {
				t.Errorf("a refused name was dialed: %v", r.dialed)
			}
		})
	}
}

func TestDenyingAnAddressCutsRunningTunnelsToNamesThere(t *testing.T) {
	r := newRig(t, "allowed.test:7/raw")
	r.proxy.Recheck = 50 * time.Millisecond
	addr, _ := recorder(t, "hi\n")
	r.route("203.0.113.10:7", addr)
	c, br := openTunnel(t, r, "allowed.test:7")
	if line, _ := br.ReadString('\n'); line != "hi\n" {
		t.Fatalf("banner %q", line)
	}
	pol, _ := LoadPolicy(r.dir)
	pol, _ = pol.WithDenied("203.0.113.10")
	r.setPolicy(pol)
	cutByProxy(t, c, br)
	if e := r.lastEntry(); !strings.Contains(e.Reason, "tunnel cut: allowed.test resolves to 203.0.113.10, denied by 203.0.113.10") {
		t.Errorf("audit entry %+v", e)
	}
}

// trickle writes s a byte at a time, every, until the connection fails.
func trickle(c net.Conn, s string, every time.Duration) {
	for i := 0; i < len(s); i++ {
		if _, err := c.Write([]byte{s[i]}); err != nil {
			return
		}
		time.Sleep(every)
	}
}

func TestSlowRequestsAreCutAtTheirDeadline(t *testing.T) {
	site := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		b, _ := io.ReadAll(req.Body)
		fmt.Fprintf(w, "got %d bytes, TE %v", len(b), req.TransferEncoding)
	}))
	defer site.Close()
	body := strings.Repeat("x", 60)
	cases := []struct {
		name, head, body string
		want             string
	}{
		{"a body trickled past the deadline", "POST http://allowed.test:8080/ HTTP/1.1\r\nHost: allowed.test\r\nContent-Length: 60\r\n\r\n", body, "408"},
		{"a chunked body trickled past it", "POST http://allowed.test:8080/ HTTP/1.1\r\nHost: allowed.test\r\nTransfer-Encoding: chunked\r\n\r\n", "3c\r\n" + body + "\r\n0\r\n\r\n", "408"},
		{"headers trickled past it", "", "GET http://allowed.test:8080/ HTTP/1.1\r\nHost: allowed.test\r\nX: " + body + "\r\n\r\n", "400"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, "allowed.test:8080")
			r.proxy.RequestTimeout = 400 * time.Millisecond
			r.route("203.0.113.10:8080", site.Listener.Addr().String())
			c := r.conn()
			io.WriteString(c, tc.head)
			// 60 bytes at 50 ms would take 3 s; the deadline cuts at 400 ms.
			go trickle(c, tc.body, 50*time.Millisecond)
			c.SetReadDeadline(time.Now().Add(2500 * time.Millisecond))
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil || !strings.Contains(line, tc.want) {
				t.Fatalf("got %q (%v), want %s before the trickle ends", line, err, tc.want)
			}
			if tc.want == "408" {
				if e := r.lastEntry(); e.Verdict != "deny" || !strings.Contains(e.Reason, "request cut: it did not arrive whole within 400ms") {
					t.Errorf("audit entry %+v", e)
				}
			}
		})
	}
	// A body on time still goes whole, and a request without one is not
	// turned into a chunked one.
	r := newRig(t, "allowed.test:8080")
	r.route("203.0.113.10:8080", site.Listener.Addr().String())
	for req, want := range map[string]string{
		"POST http://allowed.test:8080/ HTTP/1.1\r\nHost: allowed.test\r\nContent-Length: 60\r\n\r\n" + body: "got 60 bytes, TE []",
		"GET http://allowed.test:8080/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n":                               "got 0 bytes, TE []",
	} {
		c := r.conn()
		io.WriteString(c, req)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		if string(b) != want {
			t.Errorf("%.40q: %q, want %q", req, b, want)
		}
	}
}
