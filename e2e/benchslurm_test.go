//go:build linux

package e2e

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"
)

// benchSlurm spawns 4 machines of 1 vCPU on a two-node Slurm cluster and
// 4 on this host, side by side, to SSH-ready: warm (each node restores
// its own template; here the host's) and cold. What the scheduler and the
// node process add (submission, squeue polling, srun, the relay, the
// identity given on the node) is the difference. Both run on this one
// host's 2 cores, so the guests cost the same.
func benchSlurm(t *testing.T, add func(what, value, target string)) {
	cl := startSlurmCluster(t, 2, 2, 6144)
	repo := t.TempDir()
	sh(t, repo, fmt.Sprintf(`git init -q -b main && echo x > a && cat > fleet.hcl <<'HCL'
provider = "slurm"
slurm {
  node_dir = "%s/%%n"
}
HCL
git add -A && git commit -qm first`, filepath.Join(cl.Dir, "nodes")))
	spawn := func(name string, env []string, args ...string) time.Duration {
		t.Helper()
		defer fleetWithEnv(t, 10*time.Minute, env, "destroy", "--all", "--force", "--name", name)
		t0 := time.Now()
		r := fleetWithEnv(t, 3*bootDeadline, env, append([]string{"spawn", "4", "--name", name, "--cpus", "1", "--memory", "1G", "--sync", "none"}, args...)...)
		if r.code != 0 {
			t.Fatalf("spawn %s: %s", name, r.stderr)
		}
		return time.Since(t0)
	}
	// The first Slurm spawn copies the image to each node and makes each
	// node's template; the first here makes this host's, if it has none.
	first := spawn("bsl0", cl.Env, "--project", repo)
	firstHere := spawn("bloc0", nil)
	slurm := spawn("bsl1", cl.Env, "--project", repo)
	local := spawn("bloc1", nil)
	add("spawn 4 on 2 Slurm nodes / spawn 4 here (warm, to SSH-ready)", fmt.Sprintf("%.2f (%s vs %s; first spawns, making the templates: %s and %s)",
		slurm.Seconds()/local.Seconds(), slurm.Round(100*time.Millisecond), local.Round(100*time.Millisecond), first.Round(time.Second), firstHere.Round(time.Second)), "report: what the scheduler adds")
	slurmCold := spawn("bsl2", cl.Env, "--project", repo, "--cold")
	localCold := spawn("bloc2", nil, "--cold")
	add("spawn 4 on 2 Slurm nodes / spawn 4 here (cold, to SSH-ready)", fmt.Sprintf("%.2f (%s vs %s)",
		slurmCold.Seconds()/localCold.Seconds(), slurmCold.Round(time.Second), localCold.Round(time.Second)), "report")
}
