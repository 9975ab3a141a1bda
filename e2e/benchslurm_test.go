//go:build linux

package e2e

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"
)

// benchSlurm spawns 4 machines on a two-node Slurm cluster and 4 on this
// host, side by side, each a cold boot of 1 vCPU to SSH-ready: what the
// scheduler and the node process add (submission, squeue polling, the
// node's image copy on its first job, srun, the relay) is the difference.
// Both run on this one host's 2 cores, so the boots cost the same.
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
	// The first Slurm spawn copies the image to each node: measured too.
	first := spawn("bsl0", cl.Env, "--project", repo)
	slurm := spawn("bsl1", cl.Env, "--project", repo)
	local := spawn("bloc", nil, "--cold")
	add("spawn 4 on 2 Slurm nodes / spawn 4 here (cold, to SSH-ready)", fmt.Sprintf("%.2f (%s vs %s; %s with the nodes' first image copy)",
		slurm.Seconds()/local.Seconds(), slurm.Round(time.Second), local.Round(time.Second), first.Round(time.Second)), "report: what the scheduler adds")
}
