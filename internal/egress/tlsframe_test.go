package egress

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
)

// record frames body as one TLS record.
func record(typ byte, vers uint16, body []byte) []byte {
	return append([]byte{typ, byte(vers >> 8), byte(vers), byte(len(body) >> 8), byte(len(body))}, body...)
}

// handshakeMsg frames body as one handshake message.
func handshakeMsg(typ byte, body []byte) []byte {
	n := len(body)
	return append([]byte{typ, byte(n >> 16), byte(n >> 8), byte(n)}, body...)
}

// serverHelloRecord is a ServerHello that chooses TLS 1.3 (or, with
// tls13 false, says nothing of versions: TLS 1.2).
func serverHelloRecord(tls13 bool) []byte {
	body := append([]byte{3, 3}, bytes.Repeat([]byte{0x42}, 32)...)
	body = append(body, 0, 0x13, 0x01, 0)
	if tls13 {
		body = append(body, 0, 6, 0, extSupportedVersions, 0, 2, 3, 4)
	}
	return record(recHandshake, 0x0303, handshakeMsg(hsServerHello, body))
}

var testCert = sync.OnceValue(func() tls.Certificate {
	s := httptest.NewUnstartedServer(nil)
	s.StartTLS()
	defer s.Close()
	return s.TLS.Certificates[0]
})

// goClientHello is the ClientHello record(s) crypto/tls sends for sni, as
// the guest's first flight.
func goClientHello(t testing.TB, sni string) []byte {
	t.Helper()
	a, b := net.Pipe()
	go func() {
		tls.Client(a, &tls.Config{ServerName: sni, InsecureSkipVerify: true}).Handshake()
		a.Close()
	}()
	defer b.Close()
	hi, err := readClientHello(t.Context(), b)
	if err != nil || hi.SNI != sni {
		t.Fatalf("capturing a ClientHello for %q: %v (%q)", sni, err, hi.SNI)
	}
	return slices.Clip(hi.Raw)
}

// recConn records what it writes.
type recConn struct {
	net.Conn
	mu  *sync.Mutex
	out *bytes.Buffer
}

func (c recConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	c.out.Write(b)
	c.mu.Unlock()
	return c.Conn.Write(b)
}

// transcript runs a whole TLS session in memory, data both ways, and
// returns what each side wrote.
func transcript(t testing.TB, client, server *tls.Config) (guest, upstream []byte) {
	t.Helper()
	// Loopback TCP, not net.Pipe: both sides write at once in a
	// HelloRetryRequest, and an unbuffered pipe would deadlock.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var g, u bytes.Buffer
	server.Certificates = []tls.Certificate{testCert()}
	done := make(chan error, 1)
	go func() {
		sc := tls.Server(recConn{b, &mu, &u}, server)
		buf := make([]byte, 64<<10)
		n, err := io.ReadFull(sc, buf[:20000])
		if err == nil {
			_, err = sc.Write(buf[:n])
		}
		sc.Close()
		done <- err
	}()
	cc := tls.Client(recConn{a, &mu, &g}, client)
	payload := bytes.Repeat([]byte("0123456789"), 2000)
	if _, err := cc.Write(payload); err != nil {
		t.Fatal(err)
	}
	back, err := io.ReadAll(cc)
	if err != nil || !bytes.Equal(back, payload) {
		t.Fatalf("echo: %d bytes, %v", len(back), err)
	}
	cc.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	a.Close()
	b.Close()
	mu.Lock()
	defer mu.Unlock()
	return bytes.Clone(g.Bytes()), bytes.Clone(u.Bytes())
}

var allowedTest = Host{Name: "allowed.test"}

func framers() (guest, server *framer) {
	s := newTLSSession()
	return newFramer(fromGuest, s, allowedTest), newFramer(fromUpstream, s, allowedTest)
}

func mustFeed(t *testing.T, f *framer, b []byte) {
	t.Helper()
	if n, err := f.feed(b); err != nil || n != len(b) {
		t.Fatalf("%s: %d of %d bytes accepted: %v", f.from, n, len(b), err)
	}
}

// Real sessions, TLS 1.3, 1.2 and 1.3 after a HelloRetryRequest, pass
// whole, at every split point, and a byte at a time.
func TestFramerPassesRealSessionsSplitAnywhere(t *testing.T) {
	cases := []struct {
		name           string
		client, server *tls.Config
		hellos         int
	}{
		{"TLS 1.3", &tls.Config{}, &tls.Config{}, 1},
		{"TLS 1.2", &tls.Config{MaxVersion: tls.VersionTLS12}, &tls.Config{}, 1},
		{"TLS 1.3 after a HelloRetryRequest", &tls.Config{}, &tls.Config{CurvePreferences: []tls.CurveID{tls.CurveP256}}, 2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.client.ServerName, c.client.InsecureSkipVerify = "allowed.test", true
			guest, up := transcript(t, c.client, c.server)
			g, s := framers()
			mustFeed(t, s, up)
			mustFeed(t, g, guest)
			if g.hellos != c.hellos {
				t.Errorf("the framer read %d ClientHellos, want %d", g.hellos, c.hellos)
			}
			for k := 0; k <= len(guest); k++ {
				g, s := framers()
				mustFeed(t, s, up[:min(k, len(up))])
				mustFeed(t, s, up[min(k, len(up)):])
				mustFeed(t, g, guest[:k])
				mustFeed(t, g, guest[k:])
			}
			g, s = framers()
			for i := range up {
				mustFeed(t, s, up[i:i+1])
			}
			for i := range guest {
				mustFeed(t, g, guest[i:i+1])
			}
		})
	}
}

func TestFramerCutsAtTheFirstByteThatIsNotTLS(t *testing.T) {
	hello := goClientHello(t, "allowed.test")
	other := goClientHello(t, "other.test")
	sh13, sh12 := serverHelloRecord(true), serverHelloRecord(false)
	appData := record(recApplicationData, 0x0303, []byte("opaque"))
	ccs := record(recChangeCipherSpec, 0x0303, []byte{1})
	cases := []struct {
		name     string
		from     side
		upstream []byte // fed to the upstream's framer first
		good     []byte // accepted
		bad      []byte // cut at its first byte, unless cutAt says
		cutAt    int
		reason   string
	}{
		{"cleartext after the hello (STARTTLS)", fromGuest, sh13, hello, []byte("EHLO guest\r\nSTARTTLS\r\n"), 0, "0x45 'E' is not a TLS record"},
		{"cleartext after application data", fromGuest, sh13, append(hello, appData...), []byte("GET / HTTP/1.1\r\n"), 0, "0x47 'G'"},
		{"upstream banner", fromUpstream, nil, nil, []byte("220 smtp ready\r\n"), 0, "0x32 '2'"},
		{"upstream cleartext after its ServerHello", fromUpstream, nil, sh13, []byte("250 ok\r\n"), 0, "0x32 '2'"},
		{"heartbeat", fromGuest, sh13, hello, record(recHeartbeat, 0x0303, []byte{1, 0, 0x40}), 0, "heartbeat"},
		{"heartbeat from upstream", fromUpstream, nil, sh13, record(recHeartbeat, 0x0303, []byte{2, 0, 0}), 0, "heartbeat"},
		{"SSLv2-style hello mid-stream", fromGuest, sh13, hello, []byte{0x80, 0x2e, 0x01, 0x00, 0x02}, 0, "0x80"},
		{"unknown content type", fromGuest, sh13, hello, record(25, 0x0303, []byte{0}), 0, "0x19"},
		{"oversized record", fromGuest, sh13, hello, []byte{recApplicationData, 3, 3, 0x48, 0x01}, 4, "length of 18433"},
		{"SSL 3.0 version", fromGuest, sh13, hello, record(recApplicationData, 0x0300, []byte{0}), 2, "version 3.0"},
		{"version 3.4 in a record", fromGuest, sh13, hello, record(recApplicationData, 0x0304, []byte{0}), 2, "version 3.4"},
		{"version byte not 3", fromGuest, sh13, hello, record(recApplicationData, 0x0203, []byte{0}), 1, "0x02"},
		{"empty handshake record", fromGuest, sh13, hello, record(recHandshake, 0x0303, nil), 4, "empty record"},
		{"ChangeCipherSpec of two bytes", fromGuest, sh13, hello, record(recChangeCipherSpec, 0x0303, []byte{1, 1}), 4, "2 bytes, not 1"},
		{"ChangeCipherSpec of another value", fromGuest, sh13, hello, record(recChangeCipherSpec, 0x0303, []byte{2}), 5, "0x02, not 0x01"},
		{"upstream's first record is data", fromUpstream, nil, nil, appData, 0, "not a handshake or an alert"},
		{"upstream's first message is not a ServerHello", fromUpstream, nil, nil, record(recHandshake, 0x0303, handshakeMsg(11, []byte{0, 0, 0})), 8, "not a ServerHello"},
		{"a malformed ServerHello", fromUpstream, nil, nil, record(recHandshake, 0x0303, handshakeMsg(hsServerHello, []byte{3, 3})), 10, "malformed ServerHello"},
		// A second hello in the clear to another name: refused at its last
		// byte, so the upstream never has a whole one.
		{"second ClientHello to another name, TLS 1.3 after CCS", fromGuest, sh13, append(hello, ccs...), other, len(other) - 1, "TLS server name other.test does not match"},
		{"second ClientHello to another name, TLS 1.2 before CCS", fromGuest, sh12, hello, other, len(other) - 1, "other.test"},
		{"second ClientHello, before the ServerHello", fromGuest, nil, hello, other, len(other) - 1, "other.test"},
		{"another record type inside a split hello", fromGuest, nil, hello, append(record(recHandshake, 0x0303, other[5:20]), appData...), 20, "inside a hello"},
		{"a hello too long to read", fromGuest, sh13, hello, record(recHandshake, 0x0303, []byte{hsClientHello, 1, 0, 0}), 8, "over the 32768"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			// Whole, and split at every byte boundary.
			stream := append(bytes.Clone(c.good), c.bad...)
			for k := -1; k <= len(stream); k++ {
				g, s := framers()
				if c.from == fromGuest && c.upstream != nil {
					mustFeed(t, s, c.upstream)
				}
				f := g
				if c.from == fromUpstream {
					f = s
				}
				parts := [][]byte{stream}
				if k >= 0 {
					parts = [][]byte{stream[:k], stream[k:]}
				}
				accepted := 0
				var err error
				for _, p := range parts {
					var n int
					n, err = f.feed(p)
					accepted += n
					if err != nil {
						break
					}
				}
				var fe *framingError
				if !errors.As(err, &fe) || !strings.Contains(fe.Error(), c.reason) || fe.from != c.from {
					t.Fatalf("split at %d: %v, want a cut by %s with %q", k, err, c.from, c.reason)
				}
				if want := len(c.good) + c.cutAt; accepted != want || fe.off != int64(want) {
					t.Fatalf("split at %d: %d bytes accepted, cut at byte %d, want both %d", k, accepted, fe.off, want)
				}
			}
		})
	}
}

func TestFramerAcceptsWhatTLSAllows(t *testing.T) {
	hello := goClientHello(t, "allowed.test")
	g, s := framers()
	mustFeed(t, g, hello)
	mustFeed(t, s, serverHelloRecord(false))
	// A record of the largest TLS 1.2 size, an empty application data
	// record, alerts, and the record versions 3.1 and 3.2 of old servers.
	mustFeed(t, s, record(recApplicationData, 0x0303, make([]byte, maxRecordLen)))
	mustFeed(t, s, record(recApplicationData, 0x0301, nil))
	mustFeed(t, s, record(recAlert, 0x0302, []byte{1, 0}))
	mustFeed(t, g, record(recHandshake, 0x0303, handshakeMsg(16, make([]byte, 40)))) // ClientKeyExchange
	mustFeed(t, g, record(recChangeCipherSpec, 0x0303, []byte{1}))
	// After the guest's ChangeCipherSpec, TLS 1.2 handshake records are
	// encrypted: bytes that look like a huge ClientHello are not read.
	mustFeed(t, g, record(recHandshake, 0x0303, []byte{hsClientHello, 0xff, 0xff, 0xff, 9, 9, 9}))
	// A later ChangeCipherSpec (renegotiation) is encrypted too.
	mustFeed(t, g, record(recChangeCipherSpec, 0x0303, make([]byte, 25)))
	// A second ClientHello to the same name (after a HelloRetryRequest).
	g, s = framers()
	mustFeed(t, g, hello)
	mustFeed(t, s, serverHelloRecord(true))
	mustFeed(t, g, record(recChangeCipherSpec, 0x0303, []byte{1}))
	mustFeed(t, g, goClientHello(t, "allowed.test"))
	if g.hellos != 2 {
		t.Errorf("read %d hellos, want 2", g.hellos)
	}
}

func TestFramerRefusesAnEncryptedClientHello(t *testing.T) {
	// A minimal ClientHello naming allowed.test in the clear, with an
	// outer encrypted_client_hello extension that could name anything.
	sni := []byte("allowed.test")
	sniExt := append([]byte{0, 0, 0, byte(len(sni) + 5), 0, byte(len(sni) + 3), 0, 0, byte(len(sni))}, sni...)
	ech := append([]byte{0xfe, 0x0d, 0, 58, 0, 0, 1, 0, 1, 7, 0, 32}, make([]byte, 32)...)
	ech = append(ech, 0, 16)
	ech = append(ech, make([]byte, 16)...)
	exts := append(sniExt, ech...)
	body := append([]byte{3, 3}, make([]byte, 32)...)
	body = append(body, 0, 0, 2, 0x13, 0x01, 1, 0, byte(len(exts)>>8), byte(len(exts)))
	body = append(body, exts...)
	msg := handshakeMsg(hsClientHello, body)
	hi, err := parseClientHelloMsg(msg)
	if err != nil || hi.SNI != "allowed.test" || !hi.ECH {
		t.Fatalf("parsing the crafted hello: %+v %v", hi, err)
	}
	g, _ := framers()
	if _, err := g.feed(record(recHandshake, 0x0301, msg)); err == nil || !strings.Contains(err.Error(), "ECH") {
		t.Fatalf("an encrypted ClientHello: %v", err)
	}
}

func TestRecordBoundedReadsNoFurtherThanTheRecord(t *testing.T) {
	hello := goClientHello(t, "allowed.test")
	after := []byte("EHLO guest\r\n")
	hi, err := readClientHello(t.Context(), bytes.NewReader(append(bytes.Clone(hello), after...)))
	if err != nil || !bytes.Equal(hi.Raw, hello) {
		t.Fatalf("read %d bytes (%v), want exactly the %d of the hello's records", len(hi.Raw), err, len(hello))
	}
	// A hello split over two records, then another record: both of the
	// hello's, nothing of the next.
	msg := hello[recordHeaderLen:]
	split := append(record(recHandshake, 0x0301, msg[:100]), record(recHandshake, 0x0301, msg[100:])...)
	next := record(recApplicationData, 0x0303, after)
	hi, err = readClientHello(t.Context(), bytes.NewReader(append(bytes.Clone(split), next...)))
	if err != nil || hi.SNI != "allowed.test" || !bytes.Equal(hi.Raw, split) {
		t.Fatalf("a split hello: read %d bytes (%v), want the %d of its two records", len(hi.Raw), err, len(split))
	}
}

// refWalk is an independent, simple reading of a record stream: the length
// of its longest prefix of well-formed record headers and bodies.
func refWalk(b []byte) int {
	i := 0
	for i < len(b) {
		if len(b)-i < recordHeaderLen {
			return i // a header cut short is not judged yet
		}
		t, v1, v2 := b[i], b[i+1], b[i+2]
		n := int(b[i+3])<<8 | int(b[i+4])
		if t < 20 || t > 23 || v1 != 3 || v2 < 1 || v2 > 3 || n > maxRecordLen {
			return i
		}
		i += recordHeaderLen + n
	}
	return len(b)
}

func FuzzFramer(f *testing.F) {
	guest, up := transcript(f, &tls.Config{ServerName: "allowed.test", InsecureSkipVerify: true}, &tls.Config{})
	// Small seeds, so the fuzzer's minimizing stays quick.
	f.Add(guest[:min(len(guest), 1024)], up[:min(len(up), 1024)], uint16(7))
	f.Add([]byte("\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00"), []byte("220 hi"), uint16(3))
	f.Add(goClientHello(f, "allowed.test"), serverHelloRecord(true), uint16(100))
	f.Fuzz(func(t *testing.T, gb, ub []byte, split uint16) {
		for _, c := range []struct {
			from side
			b    []byte
		}{{fromUpstream, ub}, {fromGuest, gb}} {
			whole, _ := framers()
			parts, _ := framers()
			if c.from == fromUpstream {
				_, whole = framers()
				_, parts = framers()
			}
			n1, err1 := whole.feed(c.b)
			k := int(split) % (len(c.b) + 1)
			n2, err2 := parts.feed(c.b[:k])
			if err2 == nil {
				var m int
				m, err2 = parts.feed(c.b[k:])
				n2 += m
			}
			// The split does not change the verdict or where it falls.
			if n1 != n2 || (err1 == nil) != (err2 == nil) {
				t.Fatalf("%s: whole %d %v, split at %d: %d %v", c.from, n1, err1, k, n2, err2)
			}
			if n1 > len(c.b) || (err1 == nil && n1 != len(c.b)) {
				t.Fatalf("%s: accepted %d of %d, %v", c.from, n1, len(c.b), err1)
			}
			// What passed is records with good headers, as a simpler
			// reading sees them.
			if ref := refWalk(c.b[:n1]); ref < n1 && n1-ref >= recordHeaderLen {
				t.Fatalf("%s: accepted %d bytes, but a bad record header starts at %d", c.from, n1, ref)
			}
			if cap(whole.msg) > maxHelloLen+4 {
				t.Fatalf("held %d bytes", cap(whole.msg))
			}
		}
	})
}
