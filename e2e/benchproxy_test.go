package e2e

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
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
}
