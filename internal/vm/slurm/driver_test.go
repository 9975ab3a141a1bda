package slurm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentfleet/agentfleet/internal/execx"
	"github.com/agentfleet/agentfleet/internal/layout"
	slurmcli "github.com/agentfleet/agentfleet/internal/slurm"
	"github.com/agentfleet/agentfleet/internal/vm"
)

// fakeSlurm answers the Slurm commands the driver runs, as 22.05 prints
// them, and records each command with its standard input.
type fakeSlurm struct {
	mu      sync.Mutex
	state   string // the job's squeue state
	reason  string
	node    string
	calls   []execx.Cmd
	stdins  []string
	replies []reply // srun's answers, in order
	// pendingFor makes squeue say PENDING this many times first.
	pendingFor int
}

func (f *fakeSlurm) Run(ctx context.Context, c execx.Cmd) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	in := ""
	if c.Stdin != nil {
		b, _ := io.ReadAll(c.Stdin)
		in = string(b)
	}
	f.calls, f.stdins = append(f.calls, c), append(f.stdins, in)
	switch c.Name {
	case "sinfo":
		return []byte("fleet\n"), nil
	case "sbatch":
		f.state = "PENDING"
		return []byte("42\n"), nil
	case "squeue":
		if f.state == "" {
			return []byte(""), nil
		}
		st, node := f.state, f.node
		if f.pendingFor > 0 {
			f.pendingFor--
			st, node = "PENDING", ""
		} else if st == "PENDING" {
			st = "RUNNING"
			f.state = st
		}
		reason := f.reason
		if st == "RUNNING" {
			reason, node = "None", f.node
		}
		return []byte(fmt.Sprintf("42|%s|%s|%s\n", st, reason, node)), nil
	case "sacct":
		return []byte("Slurm accounting storage is disabled\n"), &execx.RunError{Cmd: c, ExitCode: 1, Err: errors.New("exit status 1")}
	case "scontrol":
		return []byte("NodeName=" + f.node + " Arch=x86_64 CoresPerSocket=1 NodeAddr=10.9.0.11 NodeHostName=" + f.node + " State=IDLE\n"), nil
	case "srun":
		if len(f.replies) == 0 {
			return nil, errors.New("no reply scripted")
		}
		r := f.replies[0]
		f.replies = f.replies[1:]
		b, _ := json.Marshal(r)
		if c.Stdout != nil {
			c.Stdout.Write(b)
		}
		return b, nil
	case "scancel":
		f.state = "CANCELLED"
		return nil, nil
	}
	return nil, fmt.Errorf("unexpected command %s", c.Name)
}

func (f *fakeSlurm) named(name string) []int {
	var out []int
	for i, c := range f.calls {
		if c.Name == name {
			out = append(out, i)
		}
	}
	return out
}

func newTestDriver(t *testing.T, f *fakeSlurm) (*Driver, vm.Spec) {
	t.Helper()
	dir := t.TempDir()
	img := filepath.Join(t.TempDir(), "disk.qcow2")
	os.WriteFile(img, []byte("disk"), 0o644)
	d := &Driver{Runner: f, Self: "/opt/fleet/bin/fleet", NodeRoot: "/scratch/fleet/%n", Poll: time.Millisecond,
		Node: vm.Capabilities{ForwardIP: "10.0.2.100", ImageFormat: "qcow2", BootTimeout: time.Minute}}
	s := vm.Spec{Name: "p-1", Dir: dir, BaseImage: img, BaseImageSHA256: strings.Repeat("ab", 32), CPUs: 2, MemoryMiB: 2048,
		Seed:    vm.Seed{HostKeyPrivate: "-----BEGIN OPENSSH PRIVATE KEY-----secret-host-key"},
		Network: vm.Network{Env: []string{"FLEET_UPSTREAM_CREDENTIAL=api_key:sk-ant-test-secret"}}}
	if err := d.Create(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	return d, s
}

func TestStartSubmitsAJobWhoseScriptAndArgumentsHoldNoSecret(t *testing.T) {
	f := &fakeSlurm{node: "n1", replies: []reply{{SSHAddr: "10.9.0.11:40022", Accel: "kvm"}}}
	d, s := newTestDriver(t, f)
	os.WriteFile(filepath.Join(s.Dir, layout.CredentialsFile), []byte(`{"token":"fleet-tok"}`), 0o600)
	t.Setenv("ANTHROPIC_API_KEY", "sk-ant-in-the-users-shell")
	rt, err := d.Start(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	if rt.SSHAddr != "10.9.0.11:40022" {
		t.Fatalf("runtime %+v", rt)
	}
	sb := f.calls[f.named("sbatch")[0]]
	want := []string{"--parsable", "--job-name=fleet-p-1", "--nodes=1", "--ntasks=1", "--cpus-per-task=2", "--mem=2560M", "--export=NONE", "--no-requeue",
		"--output=/dev/null", "--error=/dev/null", "--chdir=/", "--comment=agentfleet machine p-1"}
	if strings.Join(sb.Args, " ") != strings.Join(want, " ") {
		t.Errorf("sbatch %q\nwant   %q", sb.Args, want)
	}
	script := f.stdins[f.named("sbatch")[0]]
	if !strings.Contains(script, "exec /opt/fleet/bin/fleet __slurm-node run --root /scratch/fleet/%n\n") {
		t.Errorf("script:\n%s", script)
	}
	// Every Slurm command: no secret in its arguments or its script, and
	// the user's key kept out of its environment.
	for i, c := range f.calls {
		all := c.String() + f.stdins[i]
		if c.Name != "srun" && (strings.Contains(all, "secret") || strings.Contains(all, "sk-ant")) {
			t.Errorf("%s carries a secret: %s", c.Name, all)
		}
		if env := strings.Join(environOf(c), "\n"); strings.Contains(env, "sk-ant-in-the-users-shell") || c.Unset == nil || !c.Unset("CLAUDE_CODE_OAUTH_TOKEN") {
			t.Errorf("%s runs with the user's key in its environment", c.Name)
		}
		// Nor the user's Slurm option variables, which would change what
		// fleet asks for; the cluster's configuration path stays.
		if c.Unset == nil || !c.Unset("SBATCH_PARTITION") || !c.Unset("SQUEUE_FORMAT") || !c.Unset("SLURM_JOB_ID") || c.Unset("SLURM_CONF") || c.Unset("PATH") {
			t.Errorf("%s inherits Slurm's option variables", c.Name)
		}
	}
	// The start request, on srun's stdin only, carries what the node needs.
	i := f.named("srun")[0]
	call := f.calls[i]
	if got := strings.Join(call.Args, " "); got != "--jobid=42 --overlap --nodes=1 --ntasks=1 --export=NONE --quiet /opt/fleet/bin/fleet __slurm-node call --root /scratch/fleet/%n --job 42" {
		t.Errorf("srun %s", got)
	}
	var req request
	if err := json.Unmarshal([]byte(f.stdins[i]), &req); err != nil {
		t.Fatal(err)
	}
	if req.Op != "start" || req.ForwardHost != "10.9.0.11" || !contains(req.Spec.Network.Env, "FLEET_UPSTREAM_CREDENTIAL=api_key:sk-ant-test-secret") ||
		len(req.Images) != 1 || req.Images[0].SHA256 != s.BaseImageSHA256 || len(req.Files) != 1 || req.Files[0].Name != layout.CredentialsFile {
		t.Errorf("start request: %+v", req)
	}
	if req.Spec.Seed.HostKeyPrivate != s.Seed.HostKeyPrivate {
		t.Errorf("the seed did not reach the node: %+v", req.Spec.Seed)
	}
	// The record lets later commands reach the job the same way.
	j, ok, err := loadJob(s)
	if err != nil || !ok || j.ID != "42" || j.Node != "n1" || j.SSHAddr != rt.SSHAddr || j.Root != "/scratch/fleet/%n" {
		t.Fatalf("job record %+v %v %v", j, ok, err)
	}
	if st, err := d.Status(context.Background(), s); err != nil || st.Power != vm.PowerOn || st.Runtime.SSHAddr != rt.SSHAddr {
		t.Errorf("status %+v %v", st, err)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestStartOfAQueuedJobReturnsErrQueuedWithSlurmsReason(t *testing.T) {
	f := &fakeSlurm{node: "n2", reason: "Resources", pendingFor: 1 << 30}
	d, s := newTestDriver(t, f)
	s.QueueWait = 20 * time.Millisecond
	reg := &ImageRegistry{Ref: "10.9.0.1:5000/fleet/debian-12", PlainHTTP: true}
	d.Registry = reg
	_, err := d.Start(context.Background(), s)
	if !errors.Is(err, vm.ErrQueued) || !strings.Contains(err.Error(), "Resources") {
		t.Fatalf("err %v", err)
	}
	p, err := d.Placement(context.Background(), s)
	if err != nil || !p.Queued || p.Job != "42" || p.Reason != "Resources" || p.State != "PENDING" {
		t.Fatalf("placement %+v %v", p, err)
	}
	if st, _ := d.Status(context.Background(), s); st.Power != vm.PowerOff {
		t.Errorf("a queued machine is %s", st.Power)
	}
	// A second start does not submit again: it waits for the same job.
	// It may run elsewhere (the background start, in another folder,
	// reads no fleet.hcl): the node pulls from the registry of the submit.
	d.Registry = nil
	f.pendingFor = 0
	f.replies = []reply{{SSHAddr: "10.9.0.11:2222"}}
	later := s
	later.Seed = vm.Seed{} // a later fleet start knows no seed
	if _, err := d.Start(context.Background(), later); err != nil {
		t.Fatal(err)
	}
	var req request
	json.Unmarshal([]byte(f.stdins[f.named("srun")[0]]), &req)
	if req.Registry == nil || *req.Registry != *reg {
		t.Errorf("a queued machine's start lost its registry: %+v", req.Registry)
	}
	if req.Spec.Seed.HostKeyPrivate != s.Seed.HostKeyPrivate {
		t.Errorf("a queued machine's start lost its seed: %+v", req.Spec.Seed)
	}
	if n := len(f.named("sbatch")); n != 1 {
		t.Errorf("%d submissions", n)
	}
}

func TestAJobEndedOutsideFleetIsLostWithWhy(t *testing.T) {
	f := &fakeSlurm{node: "n1", replies: []reply{{SSHAddr: "10.9.0.11:2222"}}}
	d, s := newTestDriver(t, f)
	if _, err := d.Start(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ state, phrase string }{
		{"CANCELLED", "cancelled outside fleet (scancel)"},
		{"TIMEOUT", "time limit"},
		{"PREEMPTED", "preempted"},
		{"NODE_FAIL", "node"},
	} {
		f.state = tc.state
		time.Sleep(2 * d.Poll) // one squeue answer serves a poll interval
		p, err := d.Placement(context.Background(), s)
		if err != nil || !p.Ended || !strings.Contains(p.Phrase, tc.phrase) {
			t.Errorf("%s: %+v %v", tc.state, p, err)
		}
		if st, _ := d.Status(context.Background(), s); st.Power != vm.PowerOff {
			t.Errorf("%s: power %s", tc.state, st.Power)
		}
	}
}

func TestDeleteAsksTheNodeThenCancelsAndForgetsTheJob(t *testing.T) {
	f := &fakeSlurm{node: "n1", replies: []reply{{SSHAddr: "10.9.0.11:2222"}, {}}}
	d, s := newTestDriver(t, f)
	if _, err := d.Start(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	if err := d.Delete(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	var stop request
	json.Unmarshal([]byte(f.stdins[f.named("srun")[1]]), &stop)
	if stop.Op != "stop" || len(f.named("scancel")) != 1 {
		t.Errorf("delete ran %v", f.calls)
	}
	if _, err := os.Stat(s.Dir); !os.IsNotExist(err) {
		t.Error("the machine folder outlived delete")
	}
	// A machine that never had a job deletes as nothing.
	if err := d.Delete(context.Background(), vm.Spec{Dir: t.TempDir()}); err != nil {
		t.Error(err)
	}
}

func TestStopRefusesAndSaysWhy(t *testing.T) {
	d := &Driver{}
	if err := d.Stop(context.Background(), vm.Spec{}, time.Second); err == nil || !strings.Contains(err.Error(), "destroy") {
		t.Fatalf("stop: %v", err)
	}
}

func TestCreateRefusesWhatAJobCannotRun(t *testing.T) {
	d := &Driver{}
	base := vm.Spec{Dir: t.TempDir(), BaseImage: "/x", BaseImageSHA256: strings.Repeat("0", 64)}
	for name, s := range map[string]vm.Spec{
		"shared folder": func() vm.Spec { x := base; x.Share = &vm.Share{HostDir: "/p"}; return x }(),
		"warm template": func() vm.Spec { x := base; x.Template = &vm.Template{}; return x }(),
		"no digest":     func() vm.Spec { x := base; x.BaseImageSHA256 = ""; return x }(),
	} {
		if err := d.Create(context.Background(), s); err == nil {
			t.Errorf("%s: created", name)
		}
	}
}

func TestPullWritesOnlyTheFilesAsked(t *testing.T) {
	f := &fakeSlurm{node: "n1", replies: []reply{{SSHAddr: "10.9.0.11:2222"},
		{Files: []nodeFile{{Name: layout.UsageFile, Data: []byte("{}")}, {Name: "credentials.json", Data: []byte("planted")}}}}}
	d, s := newTestDriver(t, f)
	if _, err := d.Start(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	if err := d.PullFiles(context.Background(), s, []string{layout.UsageFile}); err == nil {
		t.Fatal("a node's unasked-for file was taken")
	}
	if _, err := os.Stat(filepath.Join(s.Dir, "credentials.json")); err == nil {
		t.Error("the planted file was written")
	}
}

func TestSlurmPackageNamesEveryStateTheDriverSees(t *testing.T) {
	// Every state squeue can print maps to exactly one of queued, running,
	// held, ending or ended: the driver's branches cover them all.
	for _, st := range slurmcli.States() {
		n := 0
		for _, b := range []bool{st.Queued(), st.Running(), st.Held(), st.Ending(), st.Ended()} {
			if b {
				n++
			}
		}
		if n != 1 {
			t.Errorf("%s is in %d classes", st, n)
		}
	}
}

// Many questions within a poll interval cost one squeue for all the
// user's jobs (fleet ls of 500 machines is not 500 calls to slurmctld);
// a job that answer lacks is asked about alone.
func TestOneSqueueAnswersForAllMachinesWithinAPoll(t *testing.T) {
	f := &fakeSlurm{node: "n1", replies: []reply{{SSHAddr: "10.9.0.11:2222"}}}
	d, s := newTestDriver(t, f)
	if _, err := d.Start(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	d.Poll = time.Hour      // capped at a second
	d.jobs.at = time.Time{} // Start's last answer is old
	before := len(f.named("squeue"))
	for i := 0; i < 20; i++ {
		if st, err := d.Status(context.Background(), s); err != nil || st.Power != vm.PowerOn {
			t.Fatalf("status %+v %v", st, err)
		}
		if _, err := d.Placement(context.Background(), s); err != nil {
			t.Fatal(err)
		}
	}
	calls := f.named("squeue")[before:]
	if len(calls) != 1 || !strings.Contains(f.calls[calls[0]].String(), fmt.Sprintf("--user=%d", os.Getuid())) {
		t.Fatalf("%d squeue calls for 40 questions", len(calls))
	}
	// A machine whose job the user's list lacks (another job id) is asked
	// about by its id.
	other := s
	other.Dir = t.TempDir()
	saveJob(other, job{ID: "77", Root: "/r", Self: "/f"})
	n := len(f.calls)
	d.Placement(context.Background(), other)
	alone := false
	for _, c := range f.calls[n:] {
		alone = alone || (c.Name == "squeue" && contains(c.Args, "--jobs=77"))
	}
	if !alone {
		t.Errorf("job 77 was not asked about alone: %v", f.calls[n:])
	}
	if d.poll() != time.Second {
		t.Errorf("poll %s", d.poll())
	}
}

// squeueRunner answers the user-wide squeue with out, slowly, counting.
type squeueRunner struct {
	mu    sync.Mutex
	calls int
	out   string
	delay time.Duration
}

func (r *squeueRunner) Run(ctx context.Context, c execx.Cmd) ([]byte, error) {
	r.mu.Lock()
	r.calls++
	r.mu.Unlock()
	time.Sleep(r.delay)
	if c.Name == "squeue" && contains(c.Args, fmt.Sprintf("--user=%d", os.Getuid())) {
		return []byte(r.out), nil
	}
	return nil, errors.New("not scripted")
}

// The user's other jobs (an array task, a heterogeneous component, a
// multi-node job) do not spoil the shared answer, and questions asked
// while one squeue runs wait for it instead of each asking again.
func TestTheSharedSqueueAnswerSurvivesOtherJobsAndConcurrentQuestions(t *testing.T) {
	r := &squeueRunner{delay: 50 * time.Millisecond, out: "123_4|RUNNING|None|n3\n900+0|PENDING|Priority|\n77|RUNNING|None|n[1-4]\n42|RUNNING|None|n1\n43|PENDING|Resources|\n"}
	d := &Driver{Runner: r, Poll: time.Second}
	var wg sync.WaitGroup
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if j, ok := d.cachedJob(context.Background(), "42"); !ok || j.Node != "n1" || !j.State.Running() {
				t.Errorf("42: %+v %v", j, ok)
			}
		}()
	}
	wg.Wait()
	if j, ok := d.cachedJob(context.Background(), "43"); !ok || j.Reason != "Resources" {
		t.Errorf("43: %+v %v", j, ok)
	}
	if _, ok := d.cachedJob(context.Background(), "5"); ok {
		t.Error("a job the list lacks was answered from it")
	}
	if r.calls != 1 {
		t.Errorf("%d squeue calls for 18 questions within a second", r.calls)
	}
	// A question whose context ends while it waits gives up at once.
	d.jobs.at = time.Time{}
	r.delay = 300 * time.Millisecond
	go d.cachedJob(context.Background(), "42")
	time.Sleep(20 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	if _, ok := d.cachedJob(ctx, "42"); ok || time.Since(t0) > 200*time.Millisecond {
		t.Errorf("a cancelled question waited %s (ok %v)", time.Since(t0), ok)
	}
}

// nodeRunner answers srun with a real node process's pull, on a folder
// standing in for the job's on the node.
type nodeRunner struct {
	fakeSlurm
	n     *node
	pulls int
}

func (r *nodeRunner) Run(ctx context.Context, c execx.Cmd) ([]byte, error) {
	if c.Name != "srun" || !contains(c.Args, "call") {
		return r.fakeSlurm.Run(ctx, c)
	}
	var req request
	if err := json.NewDecoder(c.Stdin).Decode(&req); err != nil {
		return nil, err
	}
	if req.Op != "pull" {
		return r.fakeSlurm.Run(ctx, execx.Cmd{Name: "srun", Stdout: c.Stdout})
	}
	r.pulls++
	files, err := r.n.readFiles(req.Names, req.From)
	rep := reply{Files: files}
	if err != nil {
		rep = reply{Error: err.Error()}
	}
	b, _ := json.Marshal(rep)
	c.Stdout.Write(b)
	return b, nil
}

// The audit log comes over whole, however long, a new part at a time as
// it grows, and from its start again once the node rotated it.
func TestPullBringsTheWholeAuditLogAPartAtATime(t *testing.T) {
	nodeDir := t.TempDir()
	r := &nodeRunner{fakeSlurm: fakeSlurm{node: "n1", replies: []reply{{SSHAddr: "10.9.0.11:2222"}}}, n: &node{dir: nodeDir}}
	d, s := newTestDriver(t, &r.fakeSlurm)
	d.Runner = r
	if _, err := d.Start(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	nodeLog, local := filepath.Join(nodeDir, layout.AuditFile), filepath.Join(s.Dir, layout.AuditFile)
	grow := func(n int, c byte) {
		f, _ := os.OpenFile(nodeLog, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		f.Write(bytes.Repeat([]byte{c}, n))
		f.Close()
	}
	same := func(what string) {
		t.Helper()
		if err := d.PullFiles(context.Background(), s, []string{layout.AuditFile}); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		want, _ := os.ReadFile(nodeLog)
		got, _ := os.ReadFile(local)
		if !bytes.Equal(got, want) {
			t.Fatalf("%s: the copy is %d bytes, the node's log %d", what, len(got), len(want))
		}
	}
	if err := d.PullFiles(context.Background(), s, []string{layout.AuditFile}); err != nil {
		t.Fatalf("no log on the node yet: %v", err)
	}
	grow(100, 'a')
	same("a short log")
	before := r.pulls
	grow(5*maxFile+17, 'b') // more than one pull carries
	same("a log past the pull size")
	if rounds := r.pulls - before; rounds != 6 {
		t.Errorf("%d srun calls for a 5 MiB+ log, want 6 rounds of at most %d bytes", rounds, maxFile)
	}
	grow(10, 'c')
	before = r.pulls
	same("ten bytes more")
	if r.pulls-before != 1 {
		t.Errorf("the ten new bytes took %d calls", r.pulls-before)
	}
	os.Rename(nodeLog, nodeLog+".1") // the node's proxy rotated its log
	grow(42, 'd')
	same("after the node rotated its log")
}

// environOf is the environment execx.Local gives c: this process's, less
// what c.Unset drops, plus c.Env.
func environOf(c execx.Cmd) []string {
	var env []string
	for _, kv := range os.Environ() {
		if name, _, _ := strings.Cut(kv, "="); c.Unset == nil || !c.Unset(name) {
			env = append(env, kv)
		}
	}
	return append(env, c.Env...)
}

// A machine's start passes the prebuild key and returns whether its node
// restored it from that prebuild; save-prebuild goes to the job's node
// process with the key, and says where it was saved.
func TestPrebuildsAreAskedForAndSavedThroughTheJob(t *testing.T) {
	f := &fakeSlurm{node: "n1", replies: []reply{{SSHAddr: "10.9.0.11:2222", Prebuilt: true, Note: "from this node's prebuild of the project (setup skipped)"},
		{Note: "saved as this node's prebuild of the project (3 MiB) in 1s"}}}
	d, s := newTestDriver(t, f)
	if _, _, err := d.SaveHostPrebuild(context.Background(), s, "k", vm.PrebuildInfo{}); err == nil {
		t.Fatal("saved a machine that never started")
	}
	s.HostWarm, s.HostPrebuild = vm.HostWarmMake, "key of the prebuild"
	rt, err := d.Start(context.Background(), s)
	if err != nil || !rt.Prebuilt || rt.Note != "on n1: from this node's prebuild of the project (setup skipped)" {
		t.Fatalf("start: %v %+v", err, rt)
	}
	var start request
	json.Unmarshal([]byte(f.stdins[f.named("srun")[0]]), &start)
	if start.Spec.HostPrebuild != "key of the prebuild" || start.Spec.HostWarm != vm.HostWarmMake {
		t.Fatalf("the start request asked for %q (%d)", start.Spec.HostPrebuild, start.Spec.HostWarm)
	}
	host, note, err := vm.SaveHostPrebuild(context.Background(), d, s, "k2", vm.PrebuildInfo{Project: "p", Setup: []string{"npm ci"}})
	if err != nil || host != "n1" || note != "saved as this node's prebuild of the project (3 MiB) in 1s" {
		t.Fatalf("save: %v %q %q", err, host, note)
	}
	// A later start of the running job says so too.
	if rt, err := d.Start(context.Background(), s); err != nil || !rt.Prebuilt {
		t.Fatalf("a running job's start forgot its prebuild: %v %+v", err, rt)
	}
	var save request
	json.Unmarshal([]byte(f.stdins[f.named("srun")[1]]), &save)
	if save.Op != "save-prebuild" || save.Prebuild == nil || save.Prebuild.Key != "k2" || save.Prebuild.Info.Project != "p" {
		t.Fatalf("save request %+v", save)
	}
	// A node that says prebuilt when none was asked for is not believed.
	f.replies = []reply{{SSHAddr: "10.9.0.11:2222", Prebuilt: true}}
	os.Remove(jobPath(s))
	s.HostPrebuild = ""
	f.state = ""
	if rt, err := d.Start(context.Background(), s); err != nil || rt.Prebuilt {
		t.Fatalf("unasked prebuilt: %v %+v", err, rt)
	}
}
