//go:build linux

package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// The stub sites live in a network namespace of their own, behind a veth
// pair with documentation addresses (one of 192.0.2.0/24, 198.51.100.0/24,
// 203.0.113.0/24, picked at run time): public-looking to the proxy, so its
// address checks treat them as the internet, with no outside network
// needed. The host side is stubHostIP, the sites stubSiteIP.
var stubHostIP, stubSiteIP string

const (
	stubHTTP  = 8080
	stubHTTPS = 8443
)

// stubRanges are the documentation ranges the stub network may use.
var stubRanges = []string{"203.0.113.0/24", "198.51.100.0/24", "192.0.2.0/24"}

// pickStubRange takes the first documentation range that shadows nothing of
// the host's (see takenPrefixes).
func pickStubRange(t *testing.T) netip.Prefix {
	t.Helper()
	if p, ok := firstFreeRange(stubRanges, takenPrefixes()); ok {
		return p
	}
	t.Skip("every documentation range overlaps this host's addresses, routes or mirror")
	return netip.Prefix{}
}

// takenPrefixes are what a test network must not shadow: the host's
// addresses and routes, and the package mirror (a mirror resolving into the
// test network's range would become unreachable while it is up).
func takenPrefixes() []netip.Prefix {
	var taken []netip.Prefix
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			taken = append(taken, p)
		}
	}
	if out, err := exec.Command("ip", "-4", "route", "show", "table", "all").Output(); err == nil {
		for _, l := range strings.Split(string(out), "\n") {
			f := strings.Fields(l)
			if len(f) == 0 {
				continue
			}
			dst := f[0]
			if dst == "local" || dst == "broadcast" || dst == "unicast" {
				if len(f) < 2 {
					continue
				}
				dst = f[1]
			}
			if dst == "default" {
				continue
			}
			if !strings.Contains(dst, "/") {
				dst += "/32"
			}
			if p, err := netip.ParsePrefix(dst); err == nil {
				taken = append(taken, p)
			}
		}
	}
	for _, h := range mirrorHosts() {
		ips, _ := net.LookupIP(h)
		for _, ip := range ips {
			if a, ok := netip.AddrFromSlice(ip); ok {
				taken = append(taken, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
			}
		}
	}
	return taken
}

// firstFreeRange is the first of candidates that overlaps none of taken
// (a default route, /0, shadows nothing).
func firstFreeRange(candidates []string, taken []netip.Prefix) (netip.Prefix, bool) {
	for _, r := range candidates {
		p := netip.MustParsePrefix(r)
		free := true
		for _, x := range taken {
			if x.Bits() > 0 && x.Overlaps(p) {
				free = false
			}
		}
		if free {
			return p, true
		}
	}
	return netip.Prefix{}, false
}

// mirrorHosts are the hosts of the package sources in /etc/apt.
func mirrorHosts() []string {
	var hosts []string
	files, _ := filepath.Glob("/etc/apt/sources.list.d/*")
	for _, f := range append([]string{"/etc/apt/sources.list"}, files...) {
		b, _ := os.ReadFile(f)
		for _, w := range strings.Fields(string(b)) {
			if u, err := url.Parse(w); err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Hostname() != "" {
				hosts = append(hosts, u.Hostname())
			}
		}
	}
	return hosts
}

// runStubSites is what the test binary does when re-executed inside the
// namespace: serve HTTP and HTTPS until killed.
func runStubSites() {
	mux := http.NewServeMux()
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) {
		mb, _ := strconv.Atoi(r.URL.Query().Get("mb"))
		w.Header().Set("Content-Length", strconv.Itoa(mb<<20))
		buf := make([]byte, 1<<20)
		for i := 0; i < mb; i++ {
			if _, err := w.Write(buf); err != nil {
				return
			}
		}
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "stub %s %s\n", r.Host, r.URL.Path)
	})
	cert := selfSigned()
	go func() {
		srv := &http.Server{Addr: fmt.Sprintf(":%d", stubHTTPS), Handler: mux, TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}}
		fmt.Fprintln(os.Stderr, srv.ListenAndServeTLS("", ""))
		os.Exit(1)
	}()
	fmt.Fprintln(os.Stderr, http.ListenAndServe(fmt.Sprintf(":%d", stubHTTP), mux))
	os.Exit(1)
}

func selfSigned() tls.Certificate {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "stub"},
		DNSNames: []string{"allowed.test", "denied.test", "later.test"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// removeDeadStubNets removes the stub networks of e2e runs killed before
// their cleanups ran: each holds a documentation range that this run's
// stub network would otherwise not find free. A live run's namespace
// always runs its sites' process; a dead one's runs nothing.
func removeDeadStubNets(t *testing.T) {
	out, _ := exec.Command("ip", "netns", "list").Output()
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		if len(f) == 0 || !strings.HasPrefix(f[0], "fleete2e") {
			continue
		}
		id, err := strconv.Atoi(strings.TrimPrefix(f[0], "fleete2e"))
		if err != nil {
			continue
		}
		if pids, _ := exec.Command("ip", "netns", "pids", f[0]).Output(); strings.TrimSpace(string(pids)) != "" {
			continue
		}
		t.Logf("removing the stub network %s of a run that is gone", f[0])
		exec.Command("ip", "netns", "del", f[0]).Run()
		exec.Command("ip", "link", "del", fmt.Sprintf("fe2e%dh", id)).Run()
	}
}

var (
	stubMu    sync.Mutex
	stubUsers int
	stubStop  []func()
)

// startStubNet makes the namespace and starts the sites in it, once for
// the tests that use it at the same time; everything is removed when the
// last of them ends.
func startStubNet(t *testing.T) {
	t.Helper()
	stubMu.Lock()
	defer stubMu.Unlock()
	if stubUsers == 0 {
		stubStop = nil
		makeStubNet(t, func(f func()) { stubStop = append(stubStop, f) })
	}
	stubUsers++
	t.Cleanup(func() {
		stubMu.Lock()
		defer stubMu.Unlock()
		if stubUsers--; stubUsers == 0 {
			for i := len(stubStop) - 1; i >= 0; i-- {
				stubStop[i]()
			}
		}
	})
}

func makeStubNet(t *testing.T, cleanup func(func())) {
	removeDeadStubNets(t)
	r := pickStubRange(t)
	base := r.Addr().As4()
	stubHostIP = netip.AddrFrom4([4]byte{base[0], base[1], base[2], 1}).String()
	stubSiteIP = netip.AddrFrom4([4]byte{base[0], base[1], base[2], 10}).String()
	id := os.Getpid() % 100000
	ns, hostIf, nsIf := fmt.Sprintf("fleete2e%d", id), fmt.Sprintf("fe2e%dh", id), fmt.Sprintf("fe2e%dn", id)
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	cleanup(func() {
		exec.Command("ip", "netns", "del", ns).Run()
		exec.Command("ip", "link", "del", hostIf).Run()
	})
	run("netns", "add", ns)
	run("link", "add", hostIf, "type", "veth", "peer", "name", nsIf)
	run("link", "set", nsIf, "netns", ns)
	run("addr", "add", stubHostIP+"/24", "dev", hostIf)
	run("link", "set", hostIf, "up")
	run("netns", "exec", ns, "ip", "addr", "add", stubSiteIP+"/24", "dev", nsIf)
	run("netns", "exec", ns, "ip", "link", "set", nsIf, "up")
	run("netns", "exec", ns, "ip", "link", "set", "lo", "up")

	self, _ := os.Executable()
	cmd := exec.Command("ip", "netns", "exec", ns, self, "-test.run=^$")
	cmd.Env = append(os.Environ(), "FLEET_E2E_STUB=1")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("%s:%d", stubSiteIP, stubHTTP), time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("stub sites did not come up: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// hostListener is a service on every host address, which no guest may
// reach: it records whether anything connected.
func hostListener(t *testing.T) (port int, touched func() bool) {
	ln, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	hit := make(chan struct{}, 100)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			hit <- struct{}{}
			c.Close()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port, func() bool { return len(hit) > 0 }
}

// hostIPv4 is a non-loopback address of this host other than the stub
// network's.
func hostIPv4(t *testing.T) string {
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil && !ipn.IP.IsLoopback() && ipn.IP.String() != stubHostIP {
			return ipn.IP.String()
		}
	}
	t.Skip("this host has no non-loopback IPv4 address")
	return ""
}

// upstreamStub stands in for the model API behind the credential proxy: it
// records the credential headers of every request and answers with a tiny
// streamed message.
type upstreamStub struct {
	srv  *http.Server
	url  string
	seen chan http.Header
	// bodies are the request bodies, as sent (at most 4 MiB each).
	bodies chan []byte
}

func startUpstream(t *testing.T) *upstreamStub { return startUpstreamAt(t, "127.0.0.1:0") }

// startUpstreamAt is startUpstream listening at addr (a Slurm node's
// proxy reaches the host at its bridge address).
func startUpstreamAt(t *testing.T, addr string) *upstreamStub {
	u := &upstreamStub{seen: make(chan http.Header, 100), bodies: make(chan []byte, 100)}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	u.url = "http://" + ln.Addr().String()
	u.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, 4<<20))
		select {
		case u.bodies <- body:
		default:
		}
		u.seen <- r.Header.Clone()
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"stub\",\"content\":[],\"stop_reason\":null,\"usage\":{\"input_tokens\":1,\"output_tokens\":1}}}\n\n"+
			"event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n"+
			"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"stub-upstream-says-hi\"}}\n\n"+
			"event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n"+
			"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":3}}\n\n"+
			"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n")
	})}
	go u.srv.Serve(ln)
	t.Cleanup(func() { u.srv.Shutdown(context.Background()) })
	return u
}
