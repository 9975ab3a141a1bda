//go:build linux

package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/agentfleet/agentfleet/internal/registrytest"
)

// slurmRow is fleet ls --json's view of a Slurm machine.
type slurmRow struct {
	Name      string `json:"name"`
	State     string `json:"state"`
	Address   string `json:"address"`
	Placement *struct {
		Job    string `json:"job"`
		Node   string `json:"node"`
		State  string `json:"job_state"`
		Reason string `json:"reason"`
		Phrase string `json:"phrase"`
	} `json:"placement"`
}

// TestSlurm runs a fleet on a real Slurm cluster: slurmctld on this host
// and two slurmd nodes in network namespaces of their own, each fitting
// one machine. Machines are jobs, booted by the fleet binary on their
// node; the controller reaches them at the node's address with their
// pinned keys, and Slurm alone decides where and when they run.
func TestSlurm(t *testing.T) {
	requireE2E(t)
	// Not parallel: its two cold boots on the nodes would take the other
	// tests' cores and break their timing checks; alone it takes ~4 min.
	t.Cleanup(func() { dumpConsoles(t) })
	// n2 has no shared storage: the controller's image folder is not
	// there, so n2 pulls the image from the fleet's registry by digest.
	images := filepath.Join(fleetHome, "images")
	cl := startSlurmClusterHiding(t, 2, 1, 3072, map[int][]string{1: {images}})
	nodeRoot := filepath.Join(cl.Dir, "nodes")
	reg := registrytest.StartAt(t, cl.BridgeIP, "", "")
	ref := reg.Addr + "/agentfleet/debian-12"
	if r := fleet(t, 10*time.Minute, "image", "push", "debian-12", ref, "--plain-http"); r.code != 0 {
		t.Fatalf("image push to the cluster's registry: %s", r.stderr)
	}
	up := startUpstreamAt(t, cl.BridgeIP+":0")
	const secret = "sk-ant-slurm-e2e-a9f3c1d7e5b2"

	repo := t.TempDir()
	sh(t, repo, fmt.Sprintf(`git init -q -b main && cat > agent.sh <<'SH'
code=$(sed -n 's/^exit=\([0-9]*\).*/\1/p' | head -n 1)
echo "$(hostname)" >> work.txt && git add -A && git commit -qm "agent work on $(hostname)"
exit ${code:-0}
SH
cat > fleet.hcl <<'HCL'
provider = "slurm"
agent = "standin"
setup = ["hostname >> $HOME/setup-ran"]
profile "standin" {
  command = ["sh", "agent.sh"]
}
slurm {
  node_dir   = "%s/%%n"
  time_limit = "60"
  image_registry = "%s"
  image_registry_plain_http = true
}
HCL
git add -A && git commit -qm first`, nodeRoot, ref))
	env := append([]string{"ANTHROPIC_API_KEY=" + secret}, cl.Env...)
	run := func(timeout time.Duration, args ...string) result {
		t.Helper()
		return fleetIn(t, "sl", timeout, env, args...)
	}
	rows := func() map[string]slurmRow {
		t.Helper()
		r := run(time.Minute, "ls", "--json")
		var list []slurmRow
		if err := json.Unmarshal([]byte(r.stdout), &list); err != nil {
			t.Fatalf("ls --json: %v\n%s", err, r.stdout)
		}
		out := map[string]slurmRow{}
		for _, x := range list {
			out[x.Name] = x
		}
		return out
	}
	waitFor := func(what string, limit time.Duration, ok func(map[string]slurmRow) bool) map[string]slurmRow {
		t.Helper()
		deadline := time.Now().Add(limit)
		for {
			rs := rows()
			if ok(rs) {
				return rs
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within %s: %+v", what, limit, rs)
			}
			time.Sleep(2 * time.Second)
		}
	}
	defer run(5*time.Minute, "destroy", "--all", "--force")

	r := run(bootDeadline+5*time.Minute, "spawn", "2", "--project", repo, "--cpus", "1", "--memory", "1024",
		"--credential-upstream", up.url)
	if r.code != 0 {
		t.Fatalf("spawn 2 --provider slurm: %s", r.stderr)
	}
	// The project has a setup: spawn first made its prebuild, with a job
	// of its own, on the node Slurm gave it (which made its warm template
	// for it). The machine that landed there restored the prebuild and
	// skips the setup; the other node made its own template, and its
	// machine runs the setup.
	pm := regexp.MustCompile(`prebuild of \S+ ready in \S+, on (n\d): saved as this node's prebuild of the project \(\d+ MiB\)`).FindStringSubmatch(r.stderr)
	if pm == nil {
		t.Fatalf("spawn does not say where it made the prebuild:\n%s", r.stderr)
	}
	preNode := pm[1]
	if !regexp.MustCompile(`prebuild of \S+: on ` + preNode + `: from this node's warm template \(made now in `).MatchString(r.stderr) {
		t.Errorf("the prebuild's job did not make %s's warm template:\n%s", preNode, r.stderr)
	}
	prebuilt := map[string]bool{} // machine -> restored from the prebuild
	for _, n := range []string{"sl-1", "sl-2"} {
		onPre := regexp.MustCompile(n + `: on ` + preNode + `: from this node's prebuild of the project \(setup skipped\), restored and given its identity in`).MatchString(r.stderr)
		made := regexp.MustCompile(n + `: on n\d: from this node's warm template \(made now in .*\), restored and given its identity in \S+; no prebuild of this project on this node, so the machine runs the setup`).MatchString(r.stderr)
		if onPre == made {
			t.Errorf("spawn does not say %s restored either the prebuild or its node's new template:\n%s", n, r.stderr)
		}
		prebuilt[n] = onPre
	}
	if prebuilt["sl-1"] == prebuilt["sl-2"] {
		t.Fatalf("want one machine from the prebuild, got %v", prebuilt)
	}
	// What setup wrote: the prebuild's run only, where it was restored.
	setupRan := func(n string) string {
		t.Helper()
		out := run(2*time.Minute, "exec", n, "--", "sh", "-c", "cat ~/setup-ran 2>/dev/null; true")
		if out.code != 0 {
			t.Fatalf("exec %s: %s", n, out.stderr)
		}
		return out.stdout
	}
	// n1 copied the image from the shared path; n2, which has none, pulled
	// each file from the registry.
	if !regexp.MustCompile(`: on n1: .*image files disk\.qcow2 \([1-9]\d* MiB\) copied from the shared path`).MatchString(r.stderr) {
		t.Errorf("spawn does not say n1 copied the image from the shared path:\n%s", r.stderr)
	}
	if !regexp.MustCompile(`: on n2: .*image files disk\.qcow2 \([1-9]\d* MiB\) pulled from ` + regexp.QuoteMeta(ref) + ` in .*, vmlinuz \(\d+ MiB\) pulled from `).MatchString(r.stderr) {
		t.Errorf("spawn does not say n2 pulled the image from the registry:\n%s", r.stderr)
	}

	var jobs map[string]string // machine -> job
	t.Run("each machine is a job of its own on a node of its own", func(t *testing.T) {
		rs := rows()
		jobs = map[string]string{}
		nodes := map[string]bool{}
		for _, n := range []string{"sl-1", "sl-2"} {
			m := rs[n]
			if m.State != "running" || m.Placement == nil || m.Placement.State != "RUNNING" {
				t.Fatalf("%s: %+v", n, m)
			}
			jobs[n] = m.Placement.Job
			nodes[m.Placement.Node] = true
			// squeue says the same.
			sq := strings.TrimSpace(cl.run(t, "squeue", "--noheader", "--jobs="+m.Placement.Job, "--format=%N %T %j"))
			if sq != m.Placement.Node+" RUNNING fleet-"+n {
				t.Errorf("squeue for %s: %q, fleet ls: %+v", n, sq, m.Placement)
			}
			var addr string
			for _, node := range cl.Nodes {
				if node.Name == m.Placement.Node {
					addr = node.Addr
				}
			}
			if !strings.HasPrefix(m.Address, addr+":") {
				t.Errorf("%s answers at %s, not at its node %s's address %s", n, m.Address, m.Placement.Node, addr)
			}
		}
		if len(nodes) != 2 {
			t.Fatalf("both machines on one node: %v", nodes)
		}
		if out := run(time.Minute, "ls"); !strings.Contains(out.stdout, "JOB") || !strings.Contains(out.stdout, jobs["sl-1"]+" running") {
			t.Errorf("ls does not show the jobs:\n%s", out.stdout)
		}
	})

	t.Run("exec reaches the guest with its pinned key, and the project is in it", func(t *testing.T) {
		for _, n := range []string{"sl-1", "sl-2"} {
			want := map[bool]string{true: "fleet-template\n", false: ""}[prebuilt[n]]
			if got := setupRan(n); got != want {
				t.Errorf("%s (from the prebuild: %v) holds setup runs %q, want %q", n, prebuilt[n], got, want)
			}
			out := run(2*time.Minute, "exec", n, "--", "sh", "-c", "hostname && git -C /workspace branch --show-current")
			if out.code != 0 || !strings.Contains(out.stdout, n+"\nfleet/"+n) {
				t.Fatalf("exec %s: %d %q %s", n, out.code, out.stdout, out.stderr)
			}
		}
		known, err := os.ReadFile(filepath.Join(fleetHome, "fleets", "sl", "known_hosts"))
		if err != nil || strings.Count(string(known), "ssh-ed25519") != 2 {
			t.Fatalf("pinned keys: %v %s", err, known)
		}
	})

	t.Run("the credential proxy on the node holds the key the guest never sees", func(t *testing.T) {
		out := run(2*time.Minute, "exec", "sl-1", "--", "sh", "-c",
			`. /etc/environment; env | grep -c sk-ant- ; curl -s -o /dev/null -w '%{http_code}' -H "x-api-key: $ANTHROPIC_AUTH_TOKEN" -H 'content-type: application/json' -d '{"model":"stub","max_tokens":1,"messages":[]}' "$ANTHROPIC_BASE_URL/v1/messages"`)
		if !strings.HasPrefix(out.stdout, "0\n") || !strings.HasSuffix(strings.TrimSpace(out.stdout), "200") {
			t.Fatalf("guest call through the proxy: %q %s", out.stdout, out.stderr)
		}
		select {
		case h := <-up.seen:
			if h.Get("x-api-key") != secret {
				t.Fatalf("upstream got key %q", h.Get("x-api-key"))
			}
		case <-time.After(30 * time.Second):
			t.Fatal("the upstream saw no call")
		}
		// The node's proxy logged the call; net log brings it here.
		nl := run(time.Minute, "net", "log", "sl-1", "--json")
		if nl.code != 0 || !strings.Contains(nl.stdout, `"proxy":"credentials"`) || !strings.Contains(nl.stdout, `"path":"/v1/messages"`) {
			t.Fatalf("net log of a node's machine: %d %q %s", nl.code, nl.stdout, nl.stderr)
		}
		// The node's proxy counted it; net budget brings the count here.
		nb := run(time.Minute, "net", "budget", "sl-1", "--json")
		if nb.code != 0 || !regexp.MustCompile(`"calls": 1\b`).MatchString(nb.stdout) {
			t.Fatalf("net budget of a node's machine: %d %q %s", nb.code, nb.stdout, nb.stderr)
		}
	})

	t.Run("a policy change reaches the node's proxy", func(t *testing.T) {
		if r := run(time.Minute, "net", "allow", "slurm-e2e.example", "sl-2"); r.code != 0 {
			t.Fatalf("net allow: %s", r.stderr)
		}
		rs := rows()
		pol, err := os.ReadFile(filepath.Join(nodeRoot, fmt.Sprintf("%s-u%d", rs["sl-2"].Placement.Node, os.Getuid()), "job-"+jobs["sl-2"], "egress.json"))
		if err != nil || !strings.Contains(string(pol), "slurm-e2e.example") {
			t.Fatalf("the node's policy: %v %s", err, pol)
		}
	})

	t.Run("a stand-in agent's exit code reaches wait, and its commit comes back as fleet/<vm>", func(t *testing.T) {
		if r := run(2*time.Minute, "run", "sl-1", "--task", "exit=3", "--project", repo); r.code != 0 {
			t.Fatalf("run: %s", r.stderr)
		}
		w := run(5*time.Minute, "wait", "sl-1", "--timeout", "4m")
		if w.code != 1 || !strings.Contains(w.stdout, "failed (exit 3)") {
			t.Fatalf("wait: %d %s %s", w.code, w.stdout, w.stderr)
		}
		if r := run(5*time.Minute, "collect", "sl-1", "sl-2"); r.code != 0 {
			t.Fatalf("collect: %s", r.stderr)
		}
		if got := strings.TrimSpace(sh(t, repo, "git log -1 --format=%s fleet/sl-1")); got != "agent work on sl-1" {
			t.Fatalf("fleet/sl-1 is at %q", got)
		}
		// The agent ran after the setup, unless its machine came from the
		// prebuild, where the setup had run already.
		want := map[bool]string{true: "fleet-template\n", false: "sl-1\n"}[prebuilt["sl-1"]]
		if got := setupRan("sl-1"); got != want {
			t.Errorf("sl-1 (from the prebuild: %v) after its agent holds setup runs %q, want %q", prebuilt["sl-1"], got, want)
		}
	})

	t.Run("a third machine waits in Slurm's queue, and starts when a node frees", func(t *testing.T) {
		// Its task waits with it: the agent starts once the machine runs.
		r := run(5*time.Minute, "spawn", "1", "--project", repo, "--cpus", "1", "--memory", "1024", "--wait-queued=false",
			"--credential-upstream", up.url, "--task", "exit=0 queued")
		if r.code != 0 || !strings.Contains(r.stderr, "1 still queued") {
			t.Fatalf("spawn into a full cluster: %d %s", r.code, r.stderr)
		}
		m := rows()["sl-3"]
		if m.State != "queued (Resources)" || m.Placement == nil || m.Placement.State != "PENDING" {
			t.Fatalf("sl-3: %+v", m)
		}
		if r := run(5*time.Minute, "destroy", "sl-2"); r.code != 0 {
			t.Fatalf("destroy sl-2 (collected): %s", r.stderr)
		}
		waitFor("sl-3 running", bootDeadline+3*time.Minute, func(rs map[string]slurmRow) bool { return rs["sl-3"].State == "running" })
		// The background start says ready once the project is in and the
		// agent started.
		queueLog := filepath.Join(fleetHome, "fleets", "sl", "queue.log")
		for deadline := time.Now().Add(3 * time.Minute); ; time.Sleep(time.Second) {
			if b, _ := os.ReadFile(queueLog); strings.Contains(string(b), "sl-3: ready") {
				break
			}
			if time.Now().After(deadline) {
				b, _ := os.ReadFile(queueLog)
				t.Fatalf("sl-3 runs, but its background start never said ready:\n%s", b)
			}
		}
		if w := run(3*time.Minute, "wait", "sl-3", "--timeout", "2m"); w.code != 0 {
			t.Fatalf("wait for sl-3's queued task: %d %s %s", w.code, w.stdout, w.stderr)
		}
		out := run(2*time.Minute, "exec", "sl-3", "--", "sh", "-c", "hostname && git -C /workspace log -2 --format=%s")
		if out.code != 0 || out.stdout != "sl-3\nagent work on sl-3\nfirst\n" {
			t.Fatalf("exec sl-3 (its agent's commit on the project): %d %q %s", out.code, out.stdout, out.stderr)
		}
		// Its node had a template already: restored, no boot; from the
		// prebuild if it landed where that is (sl-2's node was freed).
		log, _ := os.ReadFile(queueLog)
		want := `sl-3: on n\d: from this node's warm template, restored and given its identity in \S+; no prebuild of this project on this node, so the machine runs the setup`
		if prebuilt["sl-2"] {
			want = `sl-3: on ` + preNode + `: from this node's prebuild of the project \(setup skipped\), restored and given its identity in`
		}
		if !regexp.MustCompile(want).Match(log) {
			t.Errorf("sl-3 was not restored as its node allows (%s):\n%s", want, log)
		}
		wantRan := map[bool]string{true: "fleet-template\n", false: "sl-3\n"}[prebuilt["sl-2"]]
		if got := setupRan("sl-3"); got != wantRan {
			t.Errorf("sl-3 holds setup runs %q, want %q", got, wantRan)
		}
	})

	t.Run("a job scancel ends from outside makes its machine lost, and wait fails", func(t *testing.T) {
		cl.run(t, "scancel", jobs["sl-1"])
		rs := waitFor("sl-1 lost", 2*time.Minute, func(rs map[string]slurmRow) bool { return strings.HasPrefix(rs["sl-1"].State, "lost") })
		if !strings.Contains(rs["sl-1"].State, "cancelled outside fleet") {
			t.Errorf("sl-1: %q", rs["sl-1"].State)
		}
		if w := run(2*time.Minute, "wait", "sl-1", "--timeout", "1m"); w.code == 0 {
			t.Fatalf("wait on a lost machine exited 0: %s", w.stdout)
		}
	})

	t.Run("the key is in no Slurm record, state file or node file", func(t *testing.T) {
		for _, id := range jobs {
			if out := cl.run(t, "scontrol", "show", "job", "-dd", id); strings.Contains(out, secret) {
				t.Errorf("scontrol show job %s has the key", id)
			}
		}
		if hits := cl.grepAll(secret, nodeRoot, filepath.Join(fleetHome, "fleets", "sl")); len(hits) > 0 {
			t.Errorf("the key is in %v", hits)
		}
	})

	t.Run("destroy leaves no job, no QEMU and no machine files on either node", func(t *testing.T) {
		if r := run(5*time.Minute, "destroy", "--all", "--force"); r.code != 0 {
			t.Fatalf("destroy: %s", r.stderr)
		}
		if out := strings.TrimSpace(cl.run(t, "squeue", "--noheader", "--states=PENDING,RUNNING,CONFIGURING,COMPLETING")); out != "" {
			t.Errorf("jobs left: %s", out)
		}
		left, _ := filepath.Glob(filepath.Join(nodeRoot, "*-u*", "job-*"))
		if len(left) > 0 {
			t.Errorf("machine folders left on the nodes: %v", left)
		}
		if out, _ := exec.Command("pgrep", "-af", nodeRoot).Output(); strings.TrimSpace(string(out)) != "" {
			t.Errorf("processes left on the nodes:\n%s", out)
		}
		// What the nodes keep for the next job: the image and the warm
		// templates, in the user's owner-only folder.
		tpls, _ := filepath.Glob(filepath.Join(nodeRoot, "*-u*", "templates", "*", "warm", "*", "memory"))
		if len(tpls) != 2 {
			t.Errorf("want one warm template on each node, found %v", tpls)
		}
		pres, _ := filepath.Glob(filepath.Join(nodeRoot, "*-u*", "templates", "*", "prebuilds", "*", "memory"))
		if len(pres) != 1 || !strings.HasPrefix(pres[0], filepath.Join(nodeRoot, preNode+"-u")) {
			t.Errorf("want the prebuild on %s alone, found %v", preNode, pres)
		}
	})
}
