//go:build linux

package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// procCPU is a process's user plus system time, from /proc.
func procCPU(t *testing.T, pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b)[strings.LastIndexByte(string(b), ')')+2:])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ
}

// benchCockpit: fleet top watching 8 machines for a minute, against the
// way it replaces (fleet ls once a second), and its refresh latency.
func benchCockpit(t *testing.T, add func(what, value, target string)) {
	startStubNet(t)
	project := t.TempDir()
	os.WriteFile(filepath.Join(project, "fleet.hcl"), []byte(fmt.Sprintf("egress {\n  hosts = { \"refused.test\" = %q }\n}\n", stubSiteIP)), 0o644)
	const n = 8
	defer fleet(t, 10*time.Minute, "destroy", "--all", "--force", "--name", "bt")
	mustFleet(t, 2*bootDeadline, "spawn", fmt.Sprint(n), "--name", "bt", "--project", project, "--sync", "none")
	for i := 1; i <= n; i++ {
		// A long-running agent that prints a line a second.
		mustFleet(t, time.Minute, "exec", fmt.Sprintf("bt-%d", i), "--name", "bt", "--", "sh", "-c",
			`mkdir -p ~/.fleet/session && cd ~/.fleet/session && echo t > task && date +%s > started && printf 'while :; do date; sleep 1; done\n' > run.sh && { nohup sh ./run.sh >> log 2>&1 </dev/null & echo $! > pid; }`)
	}
	ui := startTop(t, project, 120, 40, "--name", "bt", "--quiet")
	ui.waitFor("8 working agents", 3*time.Minute, has("8 machines", "8 working"))
	pid := topPID(t)
	qemus := qemuPIDs(t, "bt")
	guests := func() (d time.Duration) {
		for _, p := range qemus {
			d += procCPU(t, p)
		}
		return d
	}
	cpu0, g0, t0 := procCPU(t, pid), guests(), time.Now()
	time.Sleep(time.Minute)
	topCPU, topGuests, wall := procCPU(t, pid)-cpu0, guests()-g0, time.Since(t0)
	hwm := procKiB(pid, "status", "VmHWM:")
	rss := procKiB(pid, "status", "VmRSS:")

	// The same minute of fleet ls once a second: what watching cost before.
	var lsCPU time.Duration
	g0, t0 = guests(), time.Now()
	for time.Since(t0) < time.Minute {
		start := time.Now()
		cmd := exec.Command(fleetBin, "ls", "--name", "bt")
		cmd.Env = fleetEnv()
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("ls: %v %s", err, out)
		}
		lsCPU += cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
		time.Sleep(max(0, time.Second-time.Since(start)))
	}
	lsGuests := guests() - g0
	add("fleet top, 8 machines, 1 min: CPU / fleet ls every second", fmt.Sprintf("%.2f (%s vs %s, %.1f%% of a core)", topCPU.Seconds()/lsCPU.Seconds(), topCPU.Round(10*time.Millisecond), lsCPU.Round(10*time.Millisecond), 100*topCPU.Seconds()/wall.Seconds()), "top's own process: a few % of a core")
	add("fleet top + its 8 guests, 1 min: CPU / fleet ls every second + guests", fmt.Sprintf("%.2f (%s vs %s; the guests' own loop is in both)", (topCPU+topGuests).Seconds()/(lsCPU+lsGuests).Seconds(), (topCPU+topGuests).Round(100*time.Millisecond), (lsCPU+lsGuests).Round(100*time.Millisecond)), "< 1")
	add("fleet top, 8 machines: memory", fmt.Sprintf("RSS %d MiB, peak %d MiB", rss>>10, hwm>>10), "")

	// Refresh latency: a refusal, from the proxy's log entry to the first
	// screen that shows it (both host clocks), five times.
	var lat []time.Duration
	for i := 0; i < 5; i++ {
		host := fmt.Sprintf("refused.test:%d", 9000+i)
		shown := make(chan time.Time, 1)
		go func() {
			deadline := time.Now().Add(20 * time.Second)
			for time.Now().Before(deadline) {
				if strings.Contains(ui.screen(), host) {
					shown <- time.Now()
					return
				}
				time.Sleep(20 * time.Millisecond)
			}
			close(shown)
		}()
		fleet(t, time.Minute, "exec", "bt-3", "--name", "bt", "--", "sh", "-c", fmt.Sprintf("curl -s -m 10 http://%s/ >/dev/null; true", host))
		at, ok := <-shown
		if !ok {
			t.Fatalf("refusal %s never shown:\n%s", host, ui.screen())
		}
		var logged time.Time
		for _, l := range strings.Split(mustFleet(t, time.Minute, "net", "log", "--json", "bt-3", "--name", "bt"), "\n") {
			var e struct {
				Time time.Time `json:"time"`
				Port int       `json:"port"`
			}
			if json.Unmarshal([]byte(l), &e) == nil && e.Port == 9000+i {
				logged = e.Time
			}
		}
		lat = append(lat, at.Sub(logged))
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	add("fleet top refresh: refusal logged to on screen (median, max of 5)", fmt.Sprintf("%s, %s", lat[2].Round(time.Millisecond), lat[4].Round(time.Millisecond)), "< 1s")

	// An agent's change: the exec that makes it returns, then the screen
	// shows it; an upper bound on the watch's delay (the exec's own return
	// trip is in it).
	var agentLat []time.Duration
	for i := 0; i < 5; i++ {
		msg := fmt.Sprintf("bench question %d", i)
		mustFleet(t, time.Minute, "exec", "bt-5", "--name", "bt", "--", "sh", "-c",
			fmt.Sprintf(`printf 'event=notification\nat=%%s\nmessage=%%s\n' "$(date +%%s)" "$(printf '%%s' '%s' | od -An -tx1 | tr -d ' \n')" > ~/.fleet/session/agent`, msg))
		t0 := time.Now()
		ui.waitFor(msg, 20*time.Second, func(s string) bool {
			return strings.Contains(s, "8 machines") && strings.Contains(s, "bench question") && strings.Contains(s, fmt.Sprint(i)) && strings.Contains(rowOf(s, "bt-5"), "waiting")
		})
		agentLat = append(agentLat, time.Since(t0))
	}
	sort.Slice(agentLat, func(i, j int) bool { return agentLat[i] < agentLat[j] })
	add("fleet top refresh: agent state, exec returned to on screen (median, max of 5)", fmt.Sprintf("%s, %s", agentLat[2].Round(time.Millisecond), agentLat[4].Round(time.Millisecond)), "< 1s")
}

// qemuPIDs are the hypervisor processes of a fleet's machines.
func qemuPIDs(t *testing.T, fleetName string) []int {
	files, _ := filepath.Glob(filepath.Join(fleetHome, "fleets", fleetName, "machines", "*", "qemu.pid"))
	var out []int
	for _, f := range files {
		b, _ := os.ReadFile(f)
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			out = append(out, pid)
		}
	}
	if len(out) == 0 {
		t.Fatal("no qemu processes")
	}
	return out
}

// topPID is the fleet top process the tmux server runs.
func topPID(t *testing.T) int {
	out, _ := exec.Command("pgrep", "-f", fleetBin+" top").Output()
	f := strings.Fields(string(out))
	if len(f) == 0 {
		t.Fatal("no fleet top process")
	}
	pid, _ := strconv.Atoi(f[0])
	return pid
}
