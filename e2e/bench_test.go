//go:build linux

package e2e

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	fleetpkg "github.com/agentfleet/agentfleet/fleet"
	"github.com/agentfleet/agentfleet/internal/execx"
	"github.com/agentfleet/agentfleet/internal/vm/qemu"
)

func median(ds []time.Duration) time.Duration {
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return ds[len(ds)/2]
}

func timeIt(n int, f func()) time.Duration {
	var ds []time.Duration
	for i := 0; i < n; i++ {
		t0 := time.Now()
		f()
		ds = append(ds, time.Since(t0))
	}
	return median(ds)
}

// slowestUnits waits for boot to finish (blame refuses before that) and
// prints the kernel/userspace split and the five slowest units.
const slowestUnits = `systemctl is-system-running --wait >/dev/null 2>&1; ` +
	`systemd-analyze time --no-pager | head -1 | sed 's/^Startup finished in //'; ` +
	`systemd-analyze blame --no-pager | head -5 | awk '{print $NF"="$1}' | paste -sd' '`

// TestBench prints the fleet-core ratios, each measured side by side in
// this one run (make bench). It asserts nothing about speed: numbers on a
// loaded CI machine are for reading, not for failing builds.
func TestBench(t *testing.T) {
	requireE2E(t)
	if os.Getenv("FLEET_BENCH") != "1" {
		t.Skip("set FLEET_BENCH=1 (make bench)")
	}
	ctx := context.Background()
	r := execx.Local{}
	var rows [][3]string
	// Each row is printed as soon as it is measured, so a late failure
	// loses none of the earlier ones; the table is printed again at the end.
	add := func(what, value, target string) {
		row := [3]string{what, value, target}
		rows = append(rows, row)
		fmt.Printf("bench: %s | %s | %s\n", what, value, target)
	}
	// FLEET_BENCH_ONLY=egress runs just the proxy and egress rows (each still
	// measured side by side); =fork the fork, prebuild and density rows,
	// =density only the density rows, =fork-prebuild all but those.
	if os.Getenv("FLEET_BENCH_ONLY") == "warm" {
		benchWarm(t, add)
		printRows(rows)
		return
	}
	if os.Getenv("FLEET_BENCH_ONLY") == "slurm" {
		benchSlurm(t, add)
		printRows(rows)
		return
	}
	if b := os.Getenv("FLEET_BENCH_ONLY"); b == "fork" || b == "density" || b == "fork-prebuild" {
		benchFork(t, add)
		printRows(rows)
		return
	}
	if os.Getenv("FLEET_BENCH_ONLY") == "boot" {
		benchBoot(t, add)
		printRows(rows)
		return
	}
	if os.Getenv("FLEET_BENCH_ONLY") == "registry" {
		t.Run("registry", func(t *testing.T) { benchRegistry(t, add) })
		printRows(rows)
		return
	}
	if os.Getenv("FLEET_BENCH_ONLY") == "arm64" {
		t.Run("arm64", func(t *testing.T) { benchARM64(t, add) })
		printRows(rows)
		return
	}
	if os.Getenv("FLEET_BENCH_ONLY") == "cockpit" {
		t.Run("cockpit", func(t *testing.T) { benchCockpit(t, add) })
		printRows(rows)
		return
	}
	if os.Getenv("FLEET_BENCH_ONLY") == "credproxy" {
		t.Run("credproxy", func(t *testing.T) { benchCredProxy(t, add) })
		printRows(rows)
		return
	}
	if os.Getenv("FLEET_BENCH_ONLY") == "egress" {
		t.Run("proxy", func(t *testing.T) { benchProxy(t, add) })
		t.Run("egress", func(t *testing.T) { benchEgress(t, add) })
		printRows(rows)
		return
	}

	// 1. Linked clone of an 8 GiB base vs a 1 GiB base.
	dir := t.TempDir()
	clone := func(size string) time.Duration {
		base := filepath.Join(dir, "base-"+size+".qcow2")
		if _, err := r.Run(ctx, execx.Cmd{Name: "qemu-img", Args: []string{"create", "-q", "-f", "qcow2", base, size}}); err != nil {
			t.Fatal(err)
		}
		i := 0
		return timeIt(15, func() {
			i++
			ov := filepath.Join(dir, fmt.Sprintf("ov-%s-%d.qcow2", size, i))
			if _, err := r.Run(ctx, execx.Cmd{Name: "qemu-img", Args: qemu.OverlayArgs(base, ov)}); err != nil {
				t.Fatal(err)
			}
		})
	}
	c1, c8 := clone("1G"), clone("8G")
	add("clone 8 GiB base / 1 GiB base", fmt.Sprintf("%.2f (%s vs %s)", float64(c8)/float64(c1), c8.Round(time.Millisecond), c1.Round(time.Millisecond)), "<= 1.2, each < 100ms")

	// 2. Spawn 1 vs spawn 2, wall time to SSH-ready.
	spawn := func(name string, n int) time.Duration {
		t0 := time.Now()
		mustFleet(t, bootDeadline, "spawn", fmt.Sprint(n), "--name", name, "--memory", "1G", "--cpus", "1", "--sync", "none", "--cold")
		return time.Since(t0)
	}
	s1 := spawn("bench1", 1)
	boot := mustFleet(t, time.Minute, "exec", "bench1-1", "--name", "bench1", "--", "sh", "-c", slowestUnits)
	mustFleet(t, 5*time.Minute, "destroy", "--all", "--force", "--name", "bench1")
	s2 := spawn("bench2", 2)
	defer fleet(t, 5*time.Minute, "destroy", "--all", "--force", "--name", "bench2")
	add("spawn 2 / spawn 1 (1 vCPU each)", fmt.Sprintf("%.2f (%s vs %s)", s2.Seconds()/s1.Seconds(), s2.Round(time.Second), s1.Round(time.Second)), "<= 1.4 on 2 cores")

	// 3. exec round trip on the kept connection vs a fresh OpenSSH ssh.
	c := &fleetpkg.Controller{Layout: fleetpkg.Layout{Root: fleetHome}, Fleet: "bench2", Driver: qemu.New(r, "", nil), BootTimeout: time.Minute}
	defer c.Close()
	st, err := c.Store().Load()
	if err != nil {
		t.Fatal(err)
	}
	m := st.Machines[:1]
	if res := c.Sessions().Exec(ctx, m, []string{"true"}, nil, nil, nil, false); res[0].Err != nil {
		t.Fatal(res[0].Err)
	}
	kept := timeIt(20, func() {
		if res := c.Sessions().Exec(ctx, m, []string{"true"}, nil, nil, nil, false); res[0].Err != nil || res[0].ExitCode != 0 {
			t.Fatal(res[0])
		}
	})
	cfg := filepath.Join(dir, "ssh_config")
	os.WriteFile(cfg, []byte(mustFleet(t, time.Minute, "ssh-config", "--name", "bench2")), 0o600)
	fresh := timeIt(7, func() {
		if out, err := exec.Command("ssh", "-F", cfg, "-o", "BatchMode=yes", m[0].Name, "true").CombinedOutput(); err != nil {
			t.Fatalf("ssh: %v %s", err, out)
		}
	})
	add("exec on kept conn / fresh ssh", fmt.Sprintf("%.3f (%s vs %s)", float64(kept)/float64(fresh), kept.Round(100*time.Microsecond), fresh.Round(time.Millisecond)), "<= 0.2")
	add("cold boot to SSH, baked debian-12 (spawn 1)", fmt.Sprintf("%.1fs", s1.Seconds()), "TCG here")

	// 4. Workspace in and out, on bench2-1: fleet vs the same transfer
	// by hand with plain git or rsync over OpenSSH.
	benchWorkspace(t, c, m[0], cfg, add)
	fleet(t, 5*time.Minute, "destroy", "--all", "--force", "--name", "bench2")
	small := t.TempDir()
	sh(t, small, "git init -q -b main && echo 0 > counter && git add -A && git commit -q -m start")
	mustFleet(t, bootDeadline, "spawn", "1", "--name", "benchc", "--memory", "1G", "--project", small, "--cold")
	mustFleet(t, 5*time.Minute, "exec", "benchc-1", "--name", "benchc", "--", "sh", "-c",
		"cd /workspace && for i in $(seq 1 100); do echo $i > counter && echo $i > file$i && git add -A && git commit -q -m c$i; done")
	t0 := time.Now()
	mustFleet(t, 5*time.Minute, "collect", "--all", "--name", "benchc")
	add("collect 100 commits", time.Since(t0).Round(10*time.Millisecond).String(), "")
	fleet(t, 5*time.Minute, "destroy", "--all", "--force", "--name", "benchc")
	benchAgents(t, add)
	benchWarm(t, add)
	benchFork(t, add)
	benchSlurm(t, add)
	benchBoot(t, add)
	t.Run("proxy", func(t *testing.T) { benchProxy(t, add) }) // its stub network goes when it ends
	t.Run("egress", func(t *testing.T) { benchEgress(t, add) })
	t.Run("cockpit", func(t *testing.T) { benchCockpit(t, add) })
	t.Run("registry", func(t *testing.T) { benchRegistry(t, add) })
	t.Run("arm64", func(t *testing.T) { benchARM64(t, add) })
	// The bake gets the cores to itself.

	// 5. The bake: a fresh one into an empty cache, the --if-changed no-op
	// right after it, and the image's size.
	home := t.TempDir()
	env := []string{"FLEET_HOME=" + home, "FLEET_CACHE=" + filepath.Join(home, "cache")}
	t0 = time.Now()
	if r := fleetWithEnv(t, 60*time.Minute, env, "image", "build", "debian-12"); r.code != 0 {
		t.Fatalf("bake: %s", r.stderr)
	}
	bake := time.Since(t0)
	t0 = time.Now()
	if r := fleetWithEnv(t, 10*time.Minute, env, "image", "build", "debian-12", "--if-changed"); r.code != 3 {
		t.Fatalf("--if-changed: exit %d %s", r.code, r.stderr)
	}
	noop := time.Since(t0)
	imgs := imageLs(t, env...)
	add("bake debian-12 (fresh, verified)", bake.Round(time.Second).String(), "")
	add("--if-changed no-op / bake", fmt.Sprintf("%.4f (%s)", noop.Seconds()/bake.Seconds(), noop.Round(time.Millisecond)), "")
	add("image size (qcow2, uncompressed)", fmt.Sprintf("%d MiB", imgs[0].DiskBytes>>20), "")
	lines := strings.SplitN(strings.TrimSpace(boot)+"\n", "\n", 2)
	add("boot split", strings.TrimSpace(lines[0]), "")
	add("slowest boot units", strings.TrimSpace(lines[1]), "")

	printRows(rows)
}

func printRows(rows [][3]string) {
	var b strings.Builder
	fmt.Fprintf(&b, "\n%-36s | %-44s | %s\n%s\n", "measure", "value", "target", strings.Repeat("-", 100))
	for _, row := range rows {
		fmt.Fprintf(&b, "%-36s | %-44s | %s\n", row[0], row[1], row[2])
	}
	fmt.Print(b.String())
}

// benchWorkspace measures bringing a 200 MB, 20,000-file repository into
// a VM and collecting 100 commits.
func benchWorkspace(t *testing.T, c *fleetpkg.Controller, m *fleetpkg.Machine, sshCfg string, add func(what, value, target string)) {
	ctx := context.Background()
	repo := t.TempDir()
	buf := make([]byte, 10<<10)
	for i := 0; i < 20000; i++ {
		d := filepath.Join(repo, fmt.Sprintf("d%03d", i/100))
		os.MkdirAll(d, 0o755)
		rand.Read(buf[:5<<10])
		hex.Encode(buf, buf[:5<<10]) // source-like: compresses about 2:1
		os.WriteFile(filepath.Join(d, fmt.Sprintf("f%05d.txt", i)), buf, 0o644)
	}
	sh(t, repo, "git init -q -b main && git add -A && git commit -q -m 'bench repo'")
	ssh := func(script string) {
		if out, err := exec.Command("ssh", "-F", sshCfg, "-o", "BatchMode=yes", m.Name, script).CombinedOutput(); err != nil {
			t.Fatalf("ssh %s: %v %s", script, err, out)
		}
	}
	clear := func() { ssh("sudo rm -rf /workspace/* /workspace/.[!.]* /tmp/hand") }
	timeOnce := func(f func()) time.Duration { clear(); t0 := time.Now(); f(); return time.Since(t0) }

	fleetGit := timeOnce(func() {
		if err := c.Workspaces().BringIn(ctx, m, fleetpkg.WorkspaceRequest{Mode: fleetpkg.SyncGit, Dir: repo}); err != nil {
			t.Fatal(err)
		}
	})
	handGit := timeOnce(func() {
		ssh("git init -q /tmp/hand")
		push := exec.Command("git", "push", "-q", m.Name+":/tmp/hand", "HEAD:refs/heads/work")
		push.Dir, push.Env = repo, append(os.Environ(), "GIT_SSH_COMMAND=ssh -F "+sshCfg+" -o BatchMode=yes")
		if out, err := push.CombinedOutput(); err != nil {
			t.Fatalf("git push: %v %s", err, out)
		}
		ssh("cd /tmp/hand && git checkout -q work")
	})
	add("bring in 200MB/20k files: fleet git / git push", fmt.Sprintf("%.2f (%s vs %s)", fleetGit.Seconds()/handGit.Seconds(), fleetGit.Round(100*time.Millisecond), handGit.Round(100*time.Millisecond)), "<= 1.1")

	fleetRsync := timeOnce(func() {
		if err := c.Workspaces().BringIn(ctx, m, fleetpkg.WorkspaceRequest{Mode: fleetpkg.SyncRsync, Dir: repo}); err != nil {
			t.Fatal(err)
		}
	})
	handRsync := timeOnce(func() {
		cmd := exec.Command("rsync", "-a", "-e", "ssh -F "+sshCfg+" -o BatchMode=yes", repo+"/", m.Name+":/tmp/hand/")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("rsync: %v %s", err, out)
		}
	})
	add("bring in 200MB/20k files: fleet rsync / rsync", fmt.Sprintf("%.2f (%s vs %s)", fleetRsync.Seconds()/handRsync.Seconds(), fleetRsync.Round(100*time.Millisecond), handRsync.Round(100*time.Millisecond)), "<= 1.1")
}

// benchAgents measures fleet spawn 4 --task: when each agent starts,
// from the spawn's start (each machine starts its agent once it is ready).
func benchAgents(t *testing.T, add func(what, value, target string)) {
	proj := t.TempDir()
	os.WriteFile(filepath.Join(proj, "fleet.hcl"), []byte("agent = \"sleeper\"\nprofile \"sleeper\" {\n  command = [\"sleep\", \"600\"]\n}\n"), 0o644)
	defer fleet(t, 5*time.Minute, "destroy", "--all", "--force", "--name", "bencha")
	cmd := exec.Command(fleetBin, "spawn", "4", "--name", "bencha", "--memory", "1G", "--cpus", "1", "--sync", "none", "--project", proj, "--task", "work", "--cold")
	cmd.Env = fleetEnv()
	stderr, _ := cmd.StderrPipe()
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var started []time.Duration
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		if strings.HasSuffix(sc.Text(), ": sleeper started") {
			started = append(started, time.Since(t0))
		}
	}
	if err := cmd.Wait(); err != nil || len(started) != 4 {
		t.Fatalf("spawn 4 --task: %v, %d agents started", err, len(started))
	}
	add("spawn 4 --task: 4th agent / 1st agent", fmt.Sprintf("%.2f (%s vs %s)", started[3].Seconds()/started[0].Seconds(),
		started[3].Round(time.Second), started[0].Round(time.Second)), "<= 1.5 on 2 cores")
}

// benchEgress measures the egress proxy against open networking, on two
// identical VMs fetching from the same stub site: a 100 MB download, and
// the time of a small request (each a new connection, so a new proxy
// process on the host).
func benchEgress(t *testing.T, add func(what, value, target string)) {
	startStubNet(t)
	defer fleet(t, 5*time.Minute, "destroy", "--all", "--force", "--name", "benchx")
	mustFleet(t, bootDeadline, "spawn", "2", "--name", "benchx", "--memory", "1G", "--cpus", "1", "--sync", "none", "--credentials", "none", "--cold")
	mustFleet(t, time.Minute, "net", "allow", fmt.Sprintf("%s:%d", stubSiteIP, stubHTTP), "benchx-1", "--name", "benchx")
	// benchx-1 goes through the proxy; benchx-2 is made open by hand: the
	// same machine shape, booted together.
	mustFleet(t, 5*time.Minute, "destroy", "benchx-2", "--force", "--name", "benchx")
	open := strings.TrimSpace(mustFleet(t, bootDeadline, "spawn", "1", "--name", "benchx", "--memory", "1G", "--cpus", "1", "--sync", "none", "--egress", "open", "--credentials", "none", "--cold"))
	curl := func(vm, url string, n int) time.Duration {
		out := mustFleet(t, 10*time.Minute, "exec", vm, "--name", "benchx", "--", "sh", "-c",
			fmt.Sprintf("for i in $(seq %d); do curl -sS -o /dev/null -w '%%{time_total}\\n' '%s' || exit 1; done", n, url))
		var ds []time.Duration
		for _, f := range strings.Fields(out) {
			var s float64
			fmt.Sscan(f, &s)
			ds = append(ds, time.Duration(s*float64(time.Second)))
		}
		return median(ds)
	}
	big := fmt.Sprintf("http://%s:%d/big?mb=100", stubSiteIP, stubHTTP)
	small := fmt.Sprintf("http://%s:%d/", stubSiteIP, stubHTTP)
	var viaProxy, direct []time.Duration
	for i := 0; i < 3; i++ { // alternate, so drift hits both alike
		viaProxy = append(viaProxy, curl("benchx-1", big, 1))
		direct = append(direct, curl(open, big, 1))
	}
	p, d := median(viaProxy), median(direct)
	add("100 MB download: proxy / direct throughput", fmt.Sprintf("%.2f (%.0f vs %.0f MB/s)", d.Seconds()/p.Seconds(), 100/p.Seconds(), 100/d.Seconds()), ">= 0.8")
	sp, sd := curl("benchx-1", small, 20), curl(open, small, 20)
	add("small request: added latency via proxy", fmt.Sprintf("%s (%s vs %s)", (sp-sd).Round(100*time.Microsecond), sp.Round(100*time.Microsecond), sd.Round(100*time.Microsecond)), "")
}

// benchBoot measures a cold boot to SSH of the image as baked (the boot
// trimmed: the seed applied by fleet-seed, Docker on its socket) against
// the untrimmed recipe (cloud-init, Docker at boot), booted alternately,
// and prints each one's critical chain to sshd.
func benchBoot(t *testing.T, add func(what, value, target string)) {
	// The untrimmed image lives in a home of its own, so debian-12's latest
	// stays the suite's; the cache is shared.
	untrimmed := []string{"FLEET_HOME=" + t.TempDir()}
	if r := fleetWithEnv(t, 60*time.Minute, untrimmed, "image", "build", "debian-12", "--recipe", "untrimmed", "--no-warm"); r.code != 0 {
		t.Fatalf("bake the untrimmed recipe: %s", r.stderr)
	}
	boot := func(env []string, cpus, mem string) (time.Duration, string) {
		run := func(timeout time.Duration, args ...string) result { return fleetIn(t, "bboot", timeout, env, args...) }
		defer run(5*time.Minute, "destroy", "--all", "--force")
		t0 := time.Now()
		if r := run(bootDeadline, "spawn", "1", "--cpus", cpus, "--memory", mem, "--sync", "none", "--cold"); r.code != 0 {
			t.Fatalf("cold spawn: %s", r.stderr)
		}
		took := time.Since(t0)
		out := run(5*time.Minute, "exec", "bboot-1", "--", "sh", "-c",
			"systemctl is-system-running --wait >/dev/null 2>&1; systemd-analyze critical-chain --no-pager ssh.service | tail -n +3").stdout
		var chain []string
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			if l = strings.TrimLeft(l, "└─│ "); l != "" && !strings.HasSuffix(l, ".slice") && !strings.Contains(l, ".slice @") {
				chain = append(chain, l)
			}
		}
		return took, strings.Join(chain, " < ")
	}
	// The default shape, and the one vCPU the other boot rows use.
	for _, shape := range [][2]string{{"2", "2G"}, {"1", "1G"}} {
		var trimmed, full []time.Duration
		var trimmedChain, fullChain string
		for i := 0; i < 2; i++ { // alternate, so drift hits both alike
			d, c := boot(untrimmed, shape[0], shape[1])
			full, fullChain = append(full, d), c
			d, c = boot(nil, shape[0], shape[1])
			trimmed, trimmedChain = append(trimmed, d), c
		}
		mean := func(ds []time.Duration) time.Duration { return (ds[0] + ds[1]) / 2 }
		tr, un := mean(trimmed), mean(full)
		what := fmt.Sprintf("%s vCPU, %s", shape[0], shape[1])
		add("cold boot to SSH, trimmed / untrimmed, "+what, fmt.Sprintf("%.2f (%s vs %s)", tr.Seconds()/un.Seconds(), tr.Round(100*time.Millisecond), un.Round(100*time.Millisecond)), "<= 0.5")
		add("critical chain to sshd, untrimmed, "+what, fullChain, "")
		add("critical chain to sshd, trimmed, "+what, trimmedChain, "")
	}
}
