//go:build linux

package e2e

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
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
