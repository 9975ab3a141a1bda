//go:build linux

package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// A slurmCluster is a throwaway Slurm cluster on this host: slurmctld on
// the host and one slurmd per node, each in a network namespace of its own
// behind a bridge, so a job's processes see the node's address. It is made
// from Debian's slurm-wlm and munge, and everything it started or created
// is gone when the test ends.
type slurmCluster struct {
	Dir      string   // the cluster's folder (conf, state, spool, logs)
	Conf     string   // slurm.conf path
	Env      []string // environment entries a command needs: "SLURM_CONF=..."
	Nodes    []slurmNode
	StateDir string // slurmctld's StateSaveLocation
	BridgeIP string // the host's address on the cluster network

	logDir string
	bridge string
	ctld   *daemon
	slurmd []*daemon
}

type slurmNode struct{ Name, Addr, Netns, Spool string }

// A daemon is a Slurm daemon run in the foreground as the test's child, so
// it can be stopped and waited for without trusting a pid file.
type daemon struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
}

// slurmRanges are the /24s the cluster network may use, first free first.
var slurmRanges = []string{
	"10.213.37.0/24", "10.147.91.0/24", "10.58.203.0/24",
	"172.29.143.0/24", "172.23.61.0/24",
	"192.168.213.0/24", "192.168.147.0/24",
}

var (
	slurmSeq   int
	slurmNetMu sync.Mutex // one range pick and bridge at a time in this process
)

// startSlurmCluster starts munge (if needed), slurmctld and n slurmd nodes
// of cpus CPUs and memMiB memory each; it fails the test on error, skips if
// slurmctld is not installed and CI is not set (in CI it fails instead).
func startSlurmCluster(t *testing.T, n, cpus, memMiB int) *slurmCluster {
	t.Helper()
	return startSlurmClusterHiding(t, n, cpus, memMiB, nil)
}

// startSlurmClusterHiding is startSlurmCluster with folders of this host
// that some nodes do not have: node i's slurmd (and so its jobs) runs in
// a mount namespace of its own with an empty tmpfs over each of hidden[i],
// as a node without the controller's shared storage.
func startSlurmClusterHiding(t *testing.T, n, cpus, memMiB int, hidden map[int][]string) *slurmCluster {
	t.Helper()
	start := time.Now()
	requireSlurmTools(t)
	if n < 1 || n > 200 || cpus < 1 || memMiB < 1 {
		t.Fatalf("startSlurmCluster: bad shape: %d nodes of %d CPUs and %d MiB", n, cpus, memMiB)
	}
	startMunge(t)

	// A short path: it ends up in slurm.conf and in socket paths.
	dir, err := os.MkdirTemp("", "fs")
	if err != nil {
		t.Fatal(err)
	}
	c := &slurmCluster{Dir: dir, Conf: filepath.Join(dir, "slurm.conf"), StateDir: filepath.Join(dir, "state"), logDir: filepath.Join(dir, "log")}
	c.Env = []string{"SLURM_CONF=" + c.Conf}
	t.Cleanup(func() { os.RemoveAll(dir) })
	t.Cleanup(func() {
		if t.Failed() {
			c.logTails(t)
		}
	})
	for _, d := range []string{c.StateDir, c.logDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}

	slurmNetMu.Lock()
	slurmSeq++
	id := fmt.Sprintf("%d%c", os.Getpid()%100000, 'a'+(slurmSeq-1)%26)
	c.makeNetwork(t, id, n)
	slurmNetMu.Unlock()

	ctldPort, slurmdPort := freePorts(t)
	c.writeConf(t, ctldPort, slurmdPort, cpus, memMiB)

	c.ctld = c.startDaemon(t, "slurmctld", "slurmctld", "-D", "-f", c.Conf)
	t.Cleanup(func() { c.ctld.stop(t) })
	c.waitFor(t, 30*time.Second, "slurmctld to answer", func() bool {
		return c.try("scontrol", "ping") == nil
	})
	for i, nd := range c.Nodes {
		args := []string{"--net=/var/run/netns/" + nd.Netns, "slurmd", "-D", "-f", c.Conf, "-N", nd.Name}
		if dirs := hidden[i]; len(dirs) > 0 {
			// unshare, sh and slurmd each exec the next: the daemon's
			// process is slurmd's.
			args = append([]string{"--net=/var/run/netns/" + nd.Netns, "unshare", "--mount", "--propagation", "private", "sh", "-euc",
				`conf=$1 name=$2; shift 2; for d; do mount -t tmpfs -o size=1m,mode=0755 fleet-hidden "$d"; done; exec slurmd -D -f "$conf" -N "$name"`,
				"sh", c.Conf, nd.Name}, dirs...)
		}
		d := c.startDaemon(t, "slurmd-"+nd.Name, append([]string{"nsenter"}, args...)...)
		c.slurmd = append(c.slurmd, d)
		t.Cleanup(func() { d.stop(t) })
	}
	c.waitFor(t, 60*time.Second, "every node to be idle", func() bool {
		out, err := c.output("sinfo", "-h", "-N", "-o", "%N %T")
		if err != nil {
			return false
		}
		idle := 0
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			if f := strings.Fields(l); len(f) == 2 && f[1] == "idle" {
				idle++
			}
		}
		return idle == n
	})
	// Runs first: no job may outlive the cluster (killing slurmd leaves
	// its steps running).
	t.Cleanup(func() { c.cancelAll(t) })
	t.Logf("slurm cluster of %d nodes up in %s (%s, bridge %s)", n, time.Since(start).Round(time.Millisecond), dir, c.BridgeIP)
	return c
}

// requireSlurmTools skips when Slurm or munge is missing here, or this is
// not root; in CI, where the test script installs them, it fails instead.
func requireSlurmTools(t *testing.T) {
	t.Helper()
	var missing []string
	for _, tool := range []string{"slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol", "scancel", "srun", "munged", "munge", "unmunge", "nsenter", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	why := ""
	switch {
	case len(missing) > 0:
		why = "not installed: " + strings.Join(missing, ", ") + " (apt-get install slurm-wlm munge)"
	case os.Geteuid() != 0:
		why = "a Slurm test cluster needs root (network namespaces, slurmd)"
	}
	if why == "" {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatal(why)
	}
	t.Skip(why)
}

var (
	mungeMu    sync.Mutex
	mungeUsers int
	mungeStop  func()
)

// startMunge reuses a munged that answers, or starts one that the last
// cluster's cleanup stops.
func startMunge(t *testing.T) {
	t.Helper()
	mungeMu.Lock()
	defer mungeMu.Unlock()
	if mungeUsers == 0 {
		mungeStop = nil
		if !mungeAnswers() {
			startMunged(t)
			mungeStop = stopMunged
		}
	}
	mungeUsers++
	t.Cleanup(func() {
		mungeMu.Lock()
		defer mungeMu.Unlock()
		if mungeUsers--; mungeUsers == 0 && mungeStop != nil {
			mungeStop()
		}
	})
}

func mungeAnswers() bool {
	cred, err := exec.Command("munge", "-n").Output()
	if err != nil {
		return false
	}
	un := exec.Command("unmunge")
	un.Stdin = bytes.NewReader(cred)
	return un.Run() == nil
}

const mungePidFile = "/run/munge/munged.pid"

func startMunged(t *testing.T) {
	t.Helper()
	if _, err := os.Stat("/etc/munge/munge.key"); err != nil {
		t.Fatalf("munge has no key (the munge package makes /etc/munge/munge.key): %v", err)
	}
	u, err := user.Lookup("munge")
	if err != nil {
		t.Fatalf("munge user: %v", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	for _, d := range []string{"/run/munge", "/var/log/munge", "/var/lib/munge"} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(d, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command("su", "-s", "/bin/sh", "munge", "-c", "munged").CombinedOutput(); err != nil {
		t.Fatalf("munged: %v\n%s", err, out)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !mungeAnswers() {
		if time.Now().After(deadline) {
			stopMunged()
			t.Fatal("munged started but does not answer munge -n | unmunge")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func stopMunged() {
	b, _ := os.ReadFile(mungePidFile)
	if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 {
		killAndWait(pid)
	}
}

// makeNetwork makes the bridge with the host's address .1 and, per node, a
// network namespace whose eth0 (a veth on the bridge) has .(10+i), lo up
// and a default route through the host. Names carry id, unique per run.
func (c *slurmCluster) makeNetwork(t *testing.T, id string, n int) {
	t.Helper()
	r, ok := firstFreeRange(slurmRanges, takenPrefixes())
	if !ok {
		t.Skip("every candidate range for the Slurm network overlaps this host's addresses, routes or mirror")
	}
	base := r.Addr().As4()
	addr := func(last int) string { return netip.AddrFrom4([4]byte{base[0], base[1], base[2], byte(last)}).String() }
	c.BridgeIP = addr(1)
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	bridge := "flsb" + id
	c.bridge = bridge
	t.Cleanup(func() { exec.Command("ip", "link", "del", bridge).Run() })
	ip("link", "add", bridge, "type", "bridge")
	ip("addr", "add", c.BridgeIP+"/24", "dev", bridge)
	ip("link", "set", bridge, "up")
	for i := 1; i <= n; i++ {
		nd := slurmNode{Name: fmt.Sprintf("n%d", i), Addr: addr(10 + i), Netns: fmt.Sprintf("fls%s-n%d", id, i)}
		nd.Spool = filepath.Join(c.Dir, "spool", nd.Name)
		if err := os.MkdirAll(nd.Spool, 0o700); err != nil {
			t.Fatal(err)
		}
		veth := fmt.Sprintf("flsv%s%d", id, i)
		t.Cleanup(func() {
			killNetnsProcs(t, nd.Netns)
			exec.Command("ip", "netns", "del", nd.Netns).Run()
			exec.Command("ip", "link", "del", veth).Run()
		})
		ip("netns", "add", nd.Netns)
		ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", nd.Netns)
		ip("link", "set", veth, "master", bridge, "up")
		ip("-n", nd.Netns, "addr", "add", nd.Addr+"/24", "dev", "eth0")
		ip("-n", nd.Netns, "link", "set", "eth0", "up")
		ip("-n", nd.Netns, "link", "set", "lo", "up")
		ip("-n", nd.Netns, "route", "add", "default", "via", c.BridgeIP)
		c.Nodes = append(c.Nodes, nd)
	}
}

// killNetnsProcs kills whatever still runs in a node's namespace: job
// steps outlive a killed slurmd.
func killNetnsProcs(t *testing.T, ns string) {
	out, _ := exec.Command("ip", "netns", "pids", ns).Output()
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 1 {
			t.Logf("slurm cluster: killing leftover process %d in %s", pid, ns)
			syscall.Kill(pid, syscall.SIGKILL)
			waitGone(pid, 5*time.Second)
		}
	}
}

// freePorts are two TCP ports free on the host now, for slurmctld and slurmd.
func freePorts(t *testing.T) (int, int) {
	t.Helper()
	a, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	return a.Addr().(*net.TCPAddr).Port, b.Addr().(*net.TCPAddr).Port
}

func (c *slurmCluster) writeConf(t *testing.T, ctldPort, slurmdPort, cpus, memMiB int) {
	t.Helper()
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	// slurmctld refuses to run unless SlurmctldHost is its short hostname.
	host, _, _ = strings.Cut(host, ".")
	R := c.Dir
	var b strings.Builder
	fmt.Fprintf(&b, `ClusterName=fleettest
SlurmctldHost=%s(%s)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=%d
SlurmdPort=%d
AuthType=auth/munge
StateSaveLocation=%s
SlurmdSpoolDir=%s/spool/%%n
SlurmctldPidFile=%s/slurmctld.pid
SlurmdPidFile=%s/slurmd-%%n.pid
SlurmctldLogFile=%s/slurmctld.log
SlurmdLogFile=%s/slurmd-%%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
# Every node runs on this one host: take the conf's shape, not the host's.
SlurmdParameters=config_overrides
# Ended jobs stay in squeue and scontrol for the whole test: there is no
# accounting database, so sacct has nothing.
MinJobAge=3600
SlurmdTimeout=30
SlurmctldTimeout=30
MessageTimeout=10
TCPTimeout=2
KillWait=15
InactiveLimit=0
Waittime=0
# A test's batch jobs start at once, not up to 3 s after submission.
SchedulerParameters=batch_sched_delay=0
`, host, c.BridgeIP, ctldPort, slurmdPort, c.StateDir, R, R, R, c.logDir, c.logDir)
	var names []string
	for _, nd := range c.Nodes {
		fmt.Fprintf(&b, "NodeName=%s NodeAddr=%s CPUs=%d RealMemory=%d State=UNKNOWN\n", nd.Name, nd.Addr, cpus, memMiB)
		names = append(names, nd.Name)
	}
	fmt.Fprintf(&b, "PartitionName=fleet Nodes=%s Default=YES MaxTime=INFINITE State=UP\n", strings.Join(names, ","))
	if err := os.WriteFile(c.Conf, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

func (c *slurmCluster) startDaemon(t *testing.T, name string, argv ...string) *daemon {
	t.Helper()
	out, err := os.Create(filepath.Join(c.logDir, name+".out"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), c.Env...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		out.Close()
		t.Fatalf("%s: %v", name, err)
	}
	d := &daemon{name: name, cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); out.Close(); close(d.done) }()
	return d
}

// stop ends the daemon, politely first, and waits for it.
func (d *daemon) stop(t *testing.T) {
	select {
	case <-d.done:
		return
	default:
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(10 * time.Second):
		t.Logf("slurm cluster: %s ignored SIGTERM for 10 s, killing it", d.name)
		d.cmd.Process.Kill()
		<-d.done
	}
}

func (d *daemon) exited() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

// waitFor polls cond until it holds; a daemon's exit or the timeout fails
// the test with the logs' tails.
func (c *slurmCluster) waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		for _, d := range append([]*daemon{c.ctld}, c.slurmd...) {
			if d != nil && d.exited() {
				t.Fatalf("slurm cluster: %s exited (%v) while waiting for %s", d.name, d.cmd.ProcessState, what)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("slurm cluster: no %s after %s", what, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// cancelAll cancels every job and waits (bounded) until none runs.
func (c *slurmCluster) cancelAll(t *testing.T) {
	out, err := c.output("squeue", "-h", "-o", "%A")
	if err != nil {
		t.Logf("slurm cluster: squeue at cleanup: %v", err)
		return
	}
	ids := strings.Fields(out)
	if len(ids) == 0 {
		return
	}
	if err := c.try("scancel", ids...); err != nil {
		t.Logf("slurm cluster: scancel at cleanup: %v", err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		for _, d := range c.slurmd {
			if d.exited() {
				return // its jobs end only at SlurmdTimeout; the namespace's cleanup kills them
			}
		}
		if out, err := c.output("squeue", "-h", "-t", "PD,R,CG,S,CF", "-o", "%A"); err == nil && strings.TrimSpace(out) == "" {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("slurm cluster: jobs still ending after 15 s; their processes are killed with the namespaces")
}

// logTails logs the end of every Slurm log, for a failed test.
func (c *slurmCluster) logTails(t *testing.T) {
	logs, _ := filepath.Glob(filepath.Join(c.logDir, "*"))
	for _, l := range logs {
		b, _ := os.ReadFile(l)
		lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
		if len(lines) > 30 {
			lines = lines[len(lines)-30:]
		}
		t.Logf("=== %s ===\n%s", l, strings.Join(lines, "\n"))
	}
}

// command is a Slurm command with the cluster's environment, for callers
// that need stdin or more environment.
func (c *slurmCluster) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), c.Env...)
	return cmd
}

func (c *slurmCluster) output(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := c.command(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

func (c *slurmCluster) try(name string, args ...string) error {
	_, err := c.output(name, args...)
	return err
}

// run runs a Slurm command with the cluster's environment and returns its
// combined output, failing the test on error.
func (c *slurmCluster) run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := c.output(name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// grepAll reports every file under the cluster's folder (its state, spool
// and log folders, and the conf) and any extra roots given whose content
// contains needle: for tests that a secret reached no Slurm record.
func (c *slurmCluster) grepAll(needle string, extraRoots ...string) []string {
	var hits []string
	for _, root := range append([]string{c.Dir}, extraRoots...) {
		filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return nil
			}
			if b, err := os.ReadFile(p); err == nil && bytes.Contains(b, []byte(needle)) {
				hits = append(hits, p)
			}
			return nil
		})
	}
	sort.Strings(hits)
	return hits
}

func killAndWait(pid int) {
	syscall.Kill(pid, syscall.SIGTERM)
	if !waitGone(pid, 5*time.Second) {
		syscall.Kill(pid, syscall.SIGKILL)
		waitGone(pid, 5*time.Second)
	}
}

// waitGone waits until pid no longer runs (a zombie counts as gone).
func waitGone(pid int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return true
		}
		if i := bytes.LastIndexByte(b, ')'); i > 0 && i+2 < len(b) && b[i+2] == 'Z' {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestSlurmClusterHarness: the harness's cluster places and queues jobs on
// its two nodes, runs them in the nodes' namespaces and lets srun into a
// running job; grepAll finds a variable sbatch exported in slurmctld's
// state, and one it did not export nowhere. Nothing is left when it ends.
func TestSlurmClusterHarness(t *testing.T) {
	requireE2EHost(t)
	requireSlurmTools(t)
	start := time.Now()
	var dir, bridge string
	var netns []string
	var pids []int
	var checked time.Time
	t.Run("cluster", func(t *testing.T) {
		c := startSlurmCluster(t, 2, 1, 1024)
		up := time.Since(start)
		dir = c.Dir
		for _, nd := range c.Nodes {
			netns = append(netns, nd.Netns)
		}
		pids = append(pids, c.ctld.cmd.Process.Pid)
		// slurmctld's own children (slurmscriptd) must end with it.
		if b, err := exec.Command("pgrep", "-P", strconv.Itoa(c.ctld.cmd.Process.Pid)).Output(); err == nil {
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil {
					pids = append(pids, pid)
				}
			}
		}
		for _, d := range c.slurmd {
			pids = append(pids, d.cmd.Process.Pid)
		}
		bridge = c.bridge
		lap := time.Now()
		phase := func(what string) {
			t.Logf("%s: %s", what, time.Since(lap).Round(time.Millisecond))
			lap = time.Now()
		}

		j1 := sbatchScript(t, c, nil, "--export=NONE", "sleep 300")
		j2 := sbatchScript(t, c, nil, "--export=NONE", "sleep 300")
		c.waitFor(t, 30*time.Second, "jobs 1 and 2 running", func() bool {
			q := squeueAll(t, c)
			return q[j1].State == "RUNNING" && q[j2].State == "RUNNING"
		})
		q := squeueAll(t, c)
		if q[j1].Node == q[j2].Node {
			t.Fatalf("jobs %s and %s both on %q", j1, j2, q[j1].Node)
		}
		phase("two jobs running, one per node")
		j3 := sbatchScript(t, c, nil, "--export=NONE", "sleep 300")
		c.waitFor(t, 30*time.Second, "job 3 pending for Resources", func() bool {
			r := squeueAll(t, c)[j3]
			return r.State == "PENDING" && r.Reason == "Resources"
		})

		phase("third job pending for Resources")
		// A step in job 1 runs in its node's namespace, with stdin.
		var addr string
		for _, nd := range c.Nodes {
			if nd.Name == q[j1].Node {
				addr = nd.Addr
			}
		}
		stepStart := time.Now()
		out := c.run(t, "srun", "--jobid="+j1, "--overlap", "-N1", "-n1", "ip", "-br", "addr")
		t.Logf("srun into job %s on %s (%s):\n%s", j1, q[j1].Node, time.Since(stepStart).Round(time.Millisecond), out)
		if !strings.Contains(out, addr+"/24") || strings.Contains(out, c.BridgeIP+"/") {
			t.Fatalf("the step did not run in %s's namespace (want %s):\n%s", q[j1].Node, addr, out)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cat := c.command(ctx, "srun", "--jobid="+j1, "--overlap", "-N1", "-n1", "cat")
		cat.Stdin = strings.NewReader("through the step\n")
		if b, err := cat.CombinedOutput(); err != nil || string(b) != "through the step\n" {
			t.Fatalf("srun cat: %v: %q", err, b)
		}
		for _, nd := range c.Nodes {
			b, _ := exec.Command("ip", "netns", "pids", nd.Netns).Output()
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil {
					pids = append(pids, pid)
				}
			}
		}

		phase("two steps")
		c.run(t, "scancel", j1)
		c.waitFor(t, 30*time.Second, "job 3 running once job 1 is cancelled", func() bool {
			q := squeueAll(t, c)
			return q[j1].State == "CANCELLED" && q[j3].State == "RUNNING" && q[j3].Node == q[j1].Node
		})

		phase("scancel, third job running")
		// sbatch's environment reaches slurmctld's state only when exported.
		hidden, shown := "SECRETX-none-"+randHex(t), "SECRETX-all-"+randHex(t)
		jn := sbatchScript(t, c, []string{"SECRETX=" + hidden}, "--export=NONE", "true")
		ja := sbatchScript(t, c, []string{"SECRETX=" + shown}, "--export=ALL", "true")
		if hits := c.grepAll(hidden); len(hits) > 0 {
			t.Errorf("a variable sbatch did not export is in %v", hits)
		}
		if out := c.run(t, "scontrol", "show", "job", "-dd", jn); strings.Contains(out, hidden) {
			t.Errorf("scontrol show job %s has the unexported variable", jn)
		}
		hits := c.grepAll(shown)
		env := regexp.MustCompile(`/state/hash\.\d/job\.` + ja + `/environment$`)
		found := false
		for _, h := range hits {
			found = found || env.MatchString(h)
		}
		if !found {
			t.Errorf("grepAll did not find the exported variable in the job's environment file: %v", hits)
		}
		t.Logf("exported variable found in %v", hits)
		phase("two more jobs and grepAll")
		checked = time.Now()
		t.Logf("cluster up in %s, the checks took %s", up.Round(time.Millisecond), (time.Since(start) - up).Round(time.Millisecond))
	})
	if dir == "" {
		return // skipped or failed before the cluster was up
	}
	if checked.IsZero() {
		checked = start
	}
	if out, err := exec.Command("pgrep", "-af", dir).Output(); err == nil {
		t.Errorf("processes of the cluster outlive it:\n%s", out)
	}
	for _, pid := range pids {
		if !waitGone(pid, 0) {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			t.Errorf("process %d (%s) outlives the cluster", pid, bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
		}
	}
	ls, _ := exec.Command("ip", "netns", "list").Output()
	for _, ns := range netns {
		if strings.Contains(string(ls), ns) {
			t.Errorf("netns %s outlives the cluster", ns)
		}
	}
	if exec.Command("ip", "link", "show", bridge).Run() == nil {
		t.Errorf("bridge %s outlives the cluster", bridge)
	}
	if _, err := os.Stat(dir); err == nil {
		t.Errorf("%s outlives the cluster", dir)
	}
	t.Logf("cleanup took %s; %d processes checked gone; whole test %s", time.Since(checked).Round(time.Millisecond), len(pids), time.Since(start).Round(time.Millisecond))
}

// sbatchScript submits a one-CPU job whose script (on stdin) runs body,
// with extra entries in sbatch's environment; it returns the job id.
func sbatchScript(t *testing.T, c *slurmCluster, env []string, export, body string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := c.command(ctx, "sbatch", "--parsable", export, "--output=/dev/null", "--chdir=/", "-n1", "-c1")
	cmd.Env = append(cmd.Env, env...)
	cmd.Stdin = strings.NewReader("#!/bin/sh\n" + body + "\n")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("sbatch: %v: %s", err, out)
	}
	id, _, _ := strings.Cut(strings.TrimSpace(string(out)), ";")
	if _, err := strconv.Atoi(id); err != nil {
		t.Fatalf("sbatch printed no job id: %q", out)
	}
	return id
}

type squeueRow struct{ State, Node, Reason string }

// squeueAll is every job squeue knows, ended ones included, by id.
func squeueAll(t *testing.T, c *slurmCluster) map[string]squeueRow {
	t.Helper()
	rows := map[string]squeueRow{}
	for _, l := range strings.Split(strings.TrimSpace(c.run(t, "squeue", "-h", "-t", "all", "-o", "%i|%T|%N|%r")), "\n") {
		f := strings.Split(l, "|")
		if len(f) == 4 {
			rows[f[0]] = squeueRow{f[1], f[2], f[3]}
		}
	}
	return rows
}

func randHex(t *testing.T) string {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}
