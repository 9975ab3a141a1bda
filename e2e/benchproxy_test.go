//go:build linux

package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/agentfleet/agentfleet/internal/egress"
)

// benchProxy measures the proxy path QEMU drives (a program started per
// guest connection, the connection as its stdin and stdout), without a VM
// in the way: the per-machine server behind a shim, side by side with the
// design it replaced, a process serving each connection itself
// (FLEET_PROXY_PER_CONNECTION=1). Connections per second, and host memory
// with 200 TLS tunnels open to the stub site.
func benchProxy(t *testing.T, add func(what, value, target string)) {
	startStubNet(t)
	type design struct {
		name string
		env  []string
	}
	designs := []design{{"server", nil}, {"per-connection", []string{"FLEET_PROXY_PER_CONNECTION=1"}}}
	rate := map[string]float64{}
	mem := map[string]int{}
	procs := map[string]int{}
	for _, d := range designs {
		dir := t.TempDir()
		pol, err := egress.Build(egress.ModeAllowlist, nil, nil, []string{fmt.Sprintf("allowed.test:%d", stubHTTPS)})
		if err != nil {
			t.Fatal(err)
		}
		pol.Hosts = map[string]string{"allowed.test": stubSiteIP}
		if err := egress.SavePolicy(dir, pol); err != nil {
			t.Fatal(err)
		}
		// This row measures each design's own speed, so the server's
		// per-machine rate limit is lifted.
		if err := os.WriteFile(filepath.Join(dir, "proxy-limits.json"), []byte(`{"connections_per_second":1000000,"connection_burst":1000000}`), 0o600); err != nil {
			t.Fatal(err)
		}
		open := func() (net.Conn, *exec.Cmd) {
			fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			child := os.NewFile(uintptr(fds[0]), "child")
			cmd := exec.Command(fleetBin, "__proxy", "egress", dir)
			cmd.Env = append(os.Environ(), d.env...)
			cmd.Stdin, cmd.Stdout, cmd.Stderr = child, child, child
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			child.Close()
			f := os.NewFile(uintptr(fds[1]), "guest")
			c, err := net.FileConn(f)
			f.Close()
			if err != nil {
				t.Fatal(err)
			}
			c.SetDeadline(time.Now().Add(time.Minute))
			return c, cmd
		}
		connect := func(c net.Conn, target string) int {
			fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
			resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: http.MethodConnect})
			if err != nil {
				t.Fatalf("%s: CONNECT %s: %v", d.name, target, err)
			}
			return resp.StatusCode
		}
		// Connections per second: each a refused CONNECT, one after another.
		const n = 200
		t0 := time.Now()
		for i := 0; i < n; i++ {
			c, cmd := open()
			if code := connect(c, "denied.test:443"); code != 403 {
				t.Fatalf("%s: denied.test got %d", d.name, code)
			}
			c.Close()
			cmd.Wait()
		}
		rate[d.name] = n / time.Since(t0).Seconds()

		// 200 open TLS tunnels.
		var conns []net.Conn
		var cmds []*exec.Cmd
		for i := 0; i < 200; i++ {
			c, cmd := open()
			if code := connect(c, fmt.Sprintf("allowed.test:%d", stubHTTPS)); code != 200 {
				t.Fatalf("%s: tunnel %d got %d", d.name, i, code)
			}
			tc := tls.Client(c, &tls.Config{ServerName: "allowed.test", InsecureSkipVerify: true})
			if err := tc.Handshake(); err != nil {
				t.Fatalf("%s: tunnel %d: %v", d.name, i, err)
			}
			conns, cmds = append(conns, tc), append(cmds, cmd)
		}
		time.Sleep(time.Second)
		alive := 0
		for _, cmd := range cmds {
			if rss := rssKiB(cmd.Process.Pid); rss > 0 {
				mem[d.name] += rss
				alive++
			}
		}
		if pid, ok := egress.ServerPID(dir); ok {
			mem[d.name] += rssKiB(pid)
			alive++
		}
		procs[d.name] = alive
		for _, c := range conns {
			c.Close()
		}
		for _, cmd := range cmds {
			cmd.Wait()
		}
		egress.StopServer(dir)
	}
	add("proxy connections/s: server / per-connection", fmt.Sprintf("%.2f (%.0f vs %.0f/s)", rate["server"]/rate["per-connection"], rate["server"], rate["per-connection"]), "")
	add("host memory, 200 open tunnels: server / per-conn", fmt.Sprintf("%.3f (%.1f MiB in %d process vs %.0f MiB in %d)",
		float64(mem["server"])/float64(mem["per-connection"]), float64(mem["server"])/1024, procs["server"], float64(mem["per-connection"])/1024, procs["per-connection"]), "server <= 64 MiB")
	benchCredProxy(t, add)
}

// credBench is a credential proxy in this process in front of a stub model
// API on loopback, with a budget and the metering on (or off), each guest
// connection handed to ServeConn as the proxy server hands it over.
type credBench struct {
	p    *egress.CredProxy
	stub string // the stub's URL, for calls that bypass the proxy
}

func newCredBench(t *testing.T, metered bool) *credBench {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if r.Method == http.MethodGet {
			io.WriteString(w, `{"data":[]}`)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-sonnet-4-5\",\"usage\":{\"input_tokens\":1000,\"output_tokens\":1}}}\n\n"+
			"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\n"+
			"event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":20}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n")
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	dir := t.TempDir()
	up, _ := url.Parse("http://" + ln.Addr().String())
	p := &egress.CredProxy{Token: "tok", Credential: egress.Credential{Kind: egress.APIKey, Value: "sk-ant-bench"}, Upstream: up,
		Transport: &http.Transport{MaxIdleConnsPerHost: 16}, Audit: egress.NewAudit(dir), Machine: "bench",
		Policy: func() (egress.Policy, error) {
			return egress.Policy{Mode: egress.ModeAllowlist, Allow: []string{}}, nil
		}}
	if metered {
		p.Meter = &egress.Meter{Dir: dir}
		p.Spend = func() (egress.SpendConfig, error) {
			return egress.SpendConfig{Budget: egress.Budget{USD: 1e6}, Prices: egress.DefaultPrices}, nil
		}
	}
	t.Cleanup(func() { p.Close() })
	return &credBench{p: p, stub: up.String()}
}

// conn is one guest connection to the proxy: a socket pair, as the shim
// hands the proxy server a socket (a net.Pipe's deadline timers would
// keep each pipe alive for minutes and read as a leak).
func (b *credBench) conn() (net.Conn, chan struct{}) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		panic(err)
	}
	end := func(fd int) net.Conn {
		f := os.NewFile(uintptr(fd), "guest")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			panic(err)
		}
		return c
	}
	c, s := end(fds[0]), end(fds[1])
	done := make(chan struct{})
	go func() { b.p.ServeConn(context.Background(), s); close(done) }()
	c.SetDeadline(time.Now().Add(time.Minute))
	return c, done
}

// benchCredProxy measures the credential proxy's memory and goroutines
// after 1,000 and 20,000 connections (each one call, then closed: they
// must stay flat), and what the metering adds to a call: metered, unmetered
// and straight to the stub, side by side, with a Claude Code sized body.
func benchCredProxy(t *testing.T, add func(what, value, target string)) {
	b := newCredBench(t, true)
	one := func() {
		c, done := b.conn()
		fmt.Fprintf(c, "GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Api-Key: tok\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("credential proxy: %v %v", resp, err)
		}
		io.Copy(io.Discard, resp.Body)
		c.Close()
		<-done
	}
	type sample struct {
		goroutines int
		heap, rss  float64 // MiB
	}
	measure := func() sample {
		time.Sleep(200 * time.Millisecond)
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return sample{runtime.NumGoroutine(), float64(ms.HeapInuse) / (1 << 20), float64(rssKiB(os.Getpid())) / 1024}
	}
	for i := 0; i < 1000; i++ {
		one()
	}
	at1k := measure()
	for i := 1000; i < 20000; i++ {
		one()
	}
	at20k := measure()
	add("credential proxy goroutines: 20,000 / 1,000 connections", fmt.Sprintf("%.2f (%d vs %d)", float64(at20k.goroutines)/float64(at1k.goroutines), at20k.goroutines, at1k.goroutines), "1.0 (flat)")
	add("credential proxy heap: 20,000 / 1,000 connections", fmt.Sprintf("%.2f (%.1f vs %.1f MiB; test process RSS %.0f vs %.0f MiB)", at20k.heap/at1k.heap, at20k.heap, at1k.heap, at20k.rss, at1k.rss), "<= 1.1 (flat)")

	// The metering's cost per call: a 200 KiB body (a Claude Code turn
	// well into a session) read, checked and reserved, the answer counted
	// and settled, against the same proxy unmetered and the stub direct.
	var sb strings.Builder
	sb.WriteString(`{"model":"claude-sonnet-4-5","max_tokens":32000,"stream":true,"tools":[{"name":"Bash","input_schema":{"type":"object"}},{"type":"web_search_20250305","name":"web_search"}],"messages":[`)
	for i := 0; sb.Len() < 200<<10; i++ {
		if i > 0 {
			sb.WriteString(",")
		}
		fmt.Fprintf(&sb, `{"role":"user","content":[{"type":"text","text":%q}]}`, strings.Repeat("func main() { fmt.Println(\"x\") }\n", 40))
	}
	sb.WriteString(`]}`)
	body := sb.String()
	call := func(c net.Conn, br *bufio.Reader) {
		fmt.Fprintf(c, "POST /v1/messages HTTP/1.1\r\nHost: x\r\nX-Api-Key: tok\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("call: %v %v", resp, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	const n = 300
	perCall := func(c net.Conn) time.Duration {
		br := bufio.NewReader(c)
		call(c, br) // warm: connections to the stub made
		t0 := time.Now()
		for i := 0; i < n; i++ {
			call(c, br)
		}
		return time.Since(t0) / n
	}
	mc, mdone := b.conn()
	metered := perCall(mc)
	mc.Close()
	<-mdone
	ub := newCredBench(t, false)
	uc, udone := ub.conn()
	unmetered := perCall(uc)
	uc.Close()
	<-udone
	dc, err := net.Dial("tcp", strings.TrimPrefix(b.stub, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	direct := perCall(dc)
	dc.Close()
	add("model call, 200 KiB body: metered / unmetered proxy / direct", fmt.Sprintf("%s / %s / %s (metering adds %s)",
		metered.Round(time.Microsecond), unmetered.Round(time.Microsecond), direct.Round(time.Microsecond), (metered-unmetered).Round(time.Microsecond)), "metering adds <= 5ms")
}

// benchWarm measures warm clones against cold boots, side by side: spawn 1
// to SSH-ready, spawn 4 against spawn 1 (both warm), the template's size,
// host RAM of 4 warm clones against 4 cold ones, and suspend and resume of
// a 1 GiB guest running an agent.
func benchWarm(t *testing.T, add func(what, value, target string)) {
	spawn := func(name string, n int, warm bool) time.Duration {
		args := []string{"spawn", fmt.Sprint(n), "--name", name, "--cpus", "1", "--memory", "1G", "--sync", "none"}
		if !warm {
			args = append(args, "--cold")
		}
		t0 := time.Now()
		mustFleet(t, 2*bootDeadline, args...)
		return time.Since(t0)
	}
	destroy := func(name string) { fleet(t, 5*time.Minute, "destroy", "--all", "--force", "--name", name) }
	// RSS counts a page of the template's RAM once per clone that maps it;
	// PSS shares it out among them: what the host actually holds.
	ram := func(name string) (rss, pss int) {
		for _, r := range ls(t, name) {
			rss, pss = rss+rssKiB(r.PID), pss+pssKiB(r.PID)
		}
		return rss, pss
	}
	r := mustFleet(t, bootDeadline, "image", "warm", "debian-12", "--cpus", "1", "--memory", "1G")
	tplDir := strings.TrimSpace(r)
	var tplBytes, stateBytes int64
	for _, f := range []string{"disk.qcow2", "memory", "state"} {
		if fi, err := os.Stat(tplDir + "/" + f); err == nil {
			used := fi.Sys().(*syscall.Stat_t).Blocks * 512 // the RAM file is sparse
			tplBytes += used
			if f == "state" {
				stateBytes = used
			}
		}
	}
	add("warm template size on disk", fmt.Sprintf("%d MiB (device state %d KiB)", tplBytes>>20, stateBytes>>10), "")

	cold1 := spawn("bwc", 1, false)
	destroy("bwc")
	warm1 := spawn("bww", 1, true)
	destroy("bww")
	add("warm spawn 1 / cold spawn 1 (SSH-ready)", fmt.Sprintf("%.3f (%s vs %s)", warm1.Seconds()/cold1.Seconds(), warm1.Round(100*time.Millisecond), cold1.Round(time.Second)), "<= 0.1 under TCG")
	warm4 := spawn("bww", 4, true)
	time.Sleep(10 * time.Second) // both sides measured settled, after their spawn
	warmRSS, warmPSS := ram("bww")
	destroy("bww")
	add("warm spawn 4 / warm spawn 1", fmt.Sprintf("%.2f (%s vs %s)", warm4.Seconds()/warm1.Seconds(), warm4.Round(100*time.Millisecond), warm1.Round(100*time.Millisecond)), "<= 1.5")
	spawn("bwc", 4, false)
	time.Sleep(10 * time.Second)
	coldRSS, coldPSS := ram("bwc")
	destroy("bwc")
	add("host RAM (PSS): 4 warm clones / 4 cold", fmt.Sprintf("%.2f (%d vs %d MiB; RSS %d vs %d)", float64(warmPSS)/float64(coldPSS), warmPSS>>10, coldPSS>>10, warmRSS>>10, coldRSS>>10), "")

	// Suspend and resume with an agent running.
	project := t.TempDir()
	os.WriteFile(project+"/fleet.hcl", []byte("agent = \"ticker\"\nprofile \"ticker\" {\n  command = [\"sh\", \"-c\", \"while true; do echo tick; sleep 1; done\"]\n}\n"), 0o644)
	defer destroy("bws")
	mustFleet(t, bootDeadline, "spawn", "1", "--name", "bws", "--cpus", "1", "--memory", "1G", "--sync", "none", "--project", project, "--task", "x")
	time.Sleep(5 * time.Second)
	var sus, res []time.Duration
	for i := 0; i < 3; i++ {
		t0 := time.Now()
		mustFleet(t, 5*time.Minute, "suspend", "bws-1", "--name", "bws")
		sus = append(sus, time.Since(t0))
		t0 = time.Now()
		mustFleet(t, 5*time.Minute, "resume", "bws-1", "--name", "bws")
		res = append(res, time.Since(t0))
	}
	add("suspend, 1 GiB guest running an agent", median(sus).Round(10*time.Millisecond).String(), "<= 5s")
	add("resume, 1 GiB guest running an agent", median(res).Round(10*time.Millisecond).String(), "<= 5s")
}
