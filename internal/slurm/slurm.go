// Package slurm is Slurm's command line as data: the arguments of sbatch,
// squeue, sacct, scontrol and scancel, and parsers for what they print.
// It runs no process; the slurm driver runs these through its own Runner.
//
// It targets Slurm 22.05 (Debian 12's slurm-wlm) and parses defensively:
// every parser bounds its input, names the line it refuses, accepts only
// decimal job ids and single node names, and cleans what it passes on to
// be shown to a person.
package slurm

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Settings are fleet.hcl's slurm { } block.
type Settings struct {
	Partition, Account, QOS, Constraint string
	// TimeLimit is in one of Slurm's --time forms: "M", "M:S", "H:M:S",
	// "D-H", "D-H:M", "D-H:M:S", "UNLIMITED", "INFINITE" (empty: the
	// partition's default).
	TimeLimit string
	// ExtraArgs are more sbatch options, each "--opt" or "--opt=value".
	ExtraArgs []string
	// MemoryOverheadMiB is added to a machine's memory for the hypervisor
	// (0: DefaultMemoryOverheadMiB).
	MemoryOverheadMiB int
}

const (
	// DefaultMemoryOverheadMiB is what QEMU and the node-side proxies need
	// beside the guest's memory.
	DefaultMemoryOverheadMiB = 512
	// MaxMemoryOverheadMiB bounds Settings.MemoryOverheadMiB.
	MaxMemoryOverheadMiB = 65536

	// MaxOutput is the most a parser reads (squeue, sacct, scontrol); a
	// driver's bounded buffer for these commands needs no more.
	MaxOutput = 1 << 20
	// MaxSbatchOutput is the most ParseSbatch reads.
	MaxSbatchOutput = 4 << 10

	maxNameLen    = 256 // partition, account, qos, constraint
	maxCommentLen = 256
	maxReasonLen  = 256
	maxExtraArgs  = 64
	maxExtraArg   = 4096
	maxJobCPUs    = 4096
	minJobMiB     = 64
	maxJobMiB     = 16 << 20 // 16 TiB
	maxTimeSecs   = 1<<31 - 1
)

// timeForms is what an error about a time limit lists.
const timeForms = `M, M:S, H:M:S, D-H, D-H:M, D-H:M:S, UNLIMITED or INFINITE`

// Validate checks s before any of it reaches sbatch.
func (s Settings) Validate() error {
	for _, f := range []struct{ key, v string }{
		{"partition", s.Partition}, {"account", s.Account},
		{"qos", s.QOS}, {"constraint", s.Constraint},
	} {
		if err := checkSlurmName(f.v); err != nil {
			return fmt.Errorf("slurm %s %s: %w", f.key, quote(f.v), err)
		}
	}
	if s.TimeLimit != "" {
		if err := checkTimeLimit(s.TimeLimit); err != nil {
			return fmt.Errorf("slurm time_limit %s: %w", quote(s.TimeLimit), err)
		}
	}
	if len(s.ExtraArgs) > maxExtraArgs {
		return fmt.Errorf("slurm extra_args: %d options, at most %d", len(s.ExtraArgs), maxExtraArgs)
	}
	for _, a := range s.ExtraArgs {
		if err := checkExtraArg(a); err != nil {
			return fmt.Errorf("slurm extra_args %s: %w", quote(a), err)
		}
	}
	if s.MemoryOverheadMiB < 0 || s.MemoryOverheadMiB > MaxMemoryOverheadMiB {
		return fmt.Errorf("slurm memory overhead %d MiB: want 0 to %d", s.MemoryOverheadMiB, MaxMemoryOverheadMiB)
	}
	return nil
}

func (s Settings) overheadMiB() int {
	if s.MemoryOverheadMiB == 0 {
		return DefaultMemoryOverheadMiB
	}
	return s.MemoryOverheadMiB
}

// checkSlurmName checks a partition, account, QOS or constraint: printable
// ASCII without spaces (Slurm's names are ASCII; a look-alike letter would
// only name nothing), so a constraint keeps its operators & | [ ] * ( ) , :
// and nothing can be read as another option.
func checkSlurmName(v string) error {
	if len(v) > maxNameLen {
		return fmt.Errorf("longer than %d bytes", maxNameLen)
	}
	if strings.HasPrefix(v, "-") {
		return errors.New("starts with '-'")
	}
	for i := 0; i < len(v); i++ {
		switch b := v[i]; {
		case b == 0:
			return errors.New("holds a NUL byte")
		case b == ' ' || b == '\t' || b == '\n' || b == '\r' || b == '\v' || b == '\f':
			return errors.New("holds whitespace")
		case b < 0x20 || b == 0x7f:
			return errors.New("holds a control character")
		case b >= 0x80:
			return errors.New("holds a non-ASCII byte (Slurm names are ASCII)")
		}
	}
	return nil
}

// checkTimeLimit accepts the forms sbatch --time documents, with every
// number at most 9 digits and the whole within what Slurm holds (seconds
// in an int32).
func checkTimeLimit(v string) error {
	switch strings.ToUpper(v) {
	case "UNLIMITED", "INFINITE":
		return nil
	}
	bad := fmt.Errorf("not a Slurm time limit (accepted: %s)", timeForms)
	days, clock, hasDays := strings.Cut(v, "-")
	if !hasDays {
		clock = days
	}
	parts := strings.Split(clock, ":")
	if len(parts) > 3 {
		return bad
	}
	var nums []uint64
	if hasDays {
		parts = append([]string{days}, parts...)
	}
	for _, p := range parts {
		if p == "" || len(p) > 9 || strings.Trim(p, "0123456789") != "" {
			return bad
		}
		n, err := strconv.ParseUint(p, 10, 32)
		if err != nil {
			return bad
		}
		nums = append(nums, n)
	}
	// Unit of each part in seconds, by form.
	var units []uint64
	switch {
	case hasDays:
		units = []uint64{86400, 3600, 60, 1}[:len(nums)]
	case len(nums) == 1:
		units = []uint64{60}
	case len(nums) == 2:
		units = []uint64{60, 1}
	default:
		units = []uint64{3600, 60, 1}
	}
	var secs uint64
	for i, n := range nums {
		secs += n * units[i]
	}
	if secs > maxTimeSecs {
		return fmt.Errorf("longer than Slurm can hold (%d seconds; accepted: %s)", uint64(maxTimeSecs), timeForms)
	}
	return nil
}

// refusedOption is an sbatch option extra_args may not carry.
type refusedOption struct{ name, why string }

// refusedOptions: what fleet sets itself, what the slurm block sets, and
// what would change what fleet relies on (a job id on stdout, one task on
// one node sized from the machine, no user environment in the job, no
// files written by Slurm, the default cluster for squeue and scancel).
var refusedOptions = []refusedOption{
	{"parsable", "fleet sets it itself"},
	{"job-name", "fleet sets it itself"},
	{"nodes", "fleet sets it itself"},
	{"ntasks", "fleet sets it itself"},
	{"cpus-per-task", "fleet sets it itself from the machine"},
	{"mem", "fleet sets it itself from the machine"},
	{"export", "fleet sets it itself (no environment goes into Slurm's records)"},
	{"output", "fleet sets it itself"},
	{"error", "fleet sets it itself"},
	{"chdir", "fleet sets it itself"},
	{"comment", "fleet sets it itself"},
	{"partition", "set it with the slurm block's partition"},
	{"account", "set it with the slurm block's account"},
	{"qos", "set it with the slurm block's qos"},
	{"time", "set it with the slurm block's time_limit"},
	{"constraint", "set it with the slurm block's constraint"},
	{"export-file", "it puts an environment into Slurm's records"},
	{"get-user-env", "it puts an environment into the job"},
	{"input", "fleet sends the job script on stdin"},
	{"wrap", "fleet sends the job script on stdin"},
	{"mem-per-cpu", "fleet sizes memory per node from the machine"},
	{"mem-per-gpu", "fleet sizes memory per node from the machine"},
	{"ntasks-per-node", "a machine is one task"},
	{"ntasks-per-gpu", "a machine is one task"},
	{"array", "a machine is one job"},
	{"wait", "fleet never waits on sbatch"},
	{"hold", "a held job never starts"},
	{"requeue", "a requeued machine comes back empty: fleet submits with --no-requeue"},
	{"no-requeue", "fleet sets it itself"},
	{"test-only", "fleet needs a job id"},
	{"quiet", "it hides the job id fleet reads"},
	{"clusters", "fleet's squeue and scancel ask the default cluster"},
	{"cluster-constraint", "fleet's squeue and scancel ask the default cluster"},
	{"uid", "the job runs as the user who runs fleet"},
	{"gid", "the job runs as the user who runs fleet"},
	{"help", "it submits no job"},
	{"usage", "it submits no job"},
	{"version", "it submits no job"},
}

var optionName = regexp.MustCompile(`^[a-z0-9][a-z0-9-]*$`)

// checkExtraArg accepts "--opt" or "--opt=value" for an option sbatch
// may get from a user. getopt_long takes any unambiguous abbreviation
// ("--wr" is --wrap), so a name that begins a refused option is refused
// too, at any length: such a name either is that option or is ambiguous.
func checkExtraArg(a string) error {
	if len(a) > maxExtraArg {
		return fmt.Errorf("longer than %d bytes", maxExtraArg)
	}
	if err := checkText(a); err != nil {
		return err
	}
	if !strings.HasPrefix(a, "--") {
		return errors.New(`not a long option (want "--opt" or "--opt=value")`)
	}
	name, _, _ := strings.Cut(a[2:], "=")
	if !optionName.MatchString(name) {
		return errors.New("not an sbatch option name (lower-case letters, digits and '-')")
	}
	for _, r := range refusedOptions {
		if name == r.name {
			return fmt.Errorf("--%s is refused: %s", r.name, r.why)
		}
	}
	for _, r := range refusedOptions {
		if strings.HasPrefix(r.name, name) {
			return fmt.Errorf("--%s abbreviates --%s, which is refused: %s", name, r.name, r.why)
		}
	}
	return nil
}

// checkText refuses invalid UTF-8 and every control character (C0, DEL,
// C1), newlines and tabs included.
func checkText(s string) error {
	for i, r := range s {
		switch {
		case r == utf8.RuneError && !strings.HasPrefix(s[i:], "\uFFFD"):
			return errors.New("is not valid UTF-8")
		case r == 0:
			return errors.New("holds a NUL byte")
		case r == '\n' || r == '\r':
			return errors.New("holds a newline")
		case r < 0x20 || (r >= 0x7f && r <= 0x9f):
			return errors.New("holds a control character")
		}
	}
	return nil
}

// Job is one machine's job request.
//
// It has no node preference: Slurm 22.05 has no soft preference by node
// name (--nodelist is a hard requirement, --prefer takes node features,
// which only an administrator sets), and fleet never schedules by itself.
// A cluster whose administrator tags nodes can pass --prefer in extra_args.
type Job struct {
	Name      string // job name, e.g. "fleet-myproj-2"
	CPUs      int
	MemoryMiB int    // the guest's; the overhead is added
	Comment   string // shown in squeue and scontrol; no secrets
}

var jobName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// Validate checks j before any of it reaches sbatch.
func (j Job) Validate() error {
	if !jobName.MatchString(j.Name) {
		return fmt.Errorf("slurm job name %s: want 1 to 128 of A-Z a-z 0-9 . _ - starting with a letter or digit", quote(j.Name))
	}
	if j.CPUs < 1 || j.CPUs > maxJobCPUs {
		return fmt.Errorf("slurm job %s: %d CPUs, want 1 to %d", j.Name, j.CPUs, maxJobCPUs)
	}
	if j.MemoryMiB < minJobMiB || j.MemoryMiB > maxJobMiB {
		return fmt.Errorf("slurm job %s: %d MiB of memory, want %d to %d", j.Name, j.MemoryMiB, minJobMiB, maxJobMiB)
	}
	if len(j.Comment) > maxCommentLen {
		return fmt.Errorf("slurm job %s: comment longer than %d bytes", j.Name, maxCommentLen)
	}
	if err := checkText(j.Comment); err != nil {
		return fmt.Errorf("slurm job %s: comment %w", j.Name, err)
	}
	return nil
}

// SbatchArgs are sbatch's arguments for j under s, the script read from
// stdin. The job is one task on one node with the machine's CPUs and its
// memory plus the hypervisor's overhead. --export=NONE because slurmctld
// saves a batch job's environment in its state directory: nothing of the
// user's may go there (the driver runs sbatch without what OptionVar names, since sbatch still
// copies SLURM_* variables). Slurm writes no output file and the job
// starts in /.
func SbatchArgs(s Settings, j Job) ([]string, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	if err := j.Validate(); err != nil {
		return nil, err
	}
	args := []string{
		"--parsable",
		"--job-name=" + j.Name,
		"--nodes=1",
		"--ntasks=1",
		"--cpus-per-task=" + strconv.Itoa(j.CPUs),
		"--mem=" + strconv.Itoa(j.MemoryMiB+s.overheadMiB()) + "M",
		"--export=NONE",
		// A requeued job is a new machine on maybe another node, with none
		// of the first one's disk: fleet counts the job's end as the
		// machine's loss instead.
		"--no-requeue",
		"--output=/dev/null",
		"--error=/dev/null",
		"--chdir=/",
	}
	for _, o := range []struct{ opt, v string }{
		{"--partition=", s.Partition}, {"--account=", s.Account}, {"--qos=", s.QOS},
		{"--time=", s.TimeLimit}, {"--constraint=", s.Constraint}, {"--comment=", j.Comment},
	} {
		if o.v != "" {
			args = append(args, o.opt+o.v)
		}
	}
	return append(args, s.ExtraArgs...), nil
}

// ParseSbatch reads the job id from sbatch --parsable's output: "123" or
// "123;cluster", then a newline.
func ParseSbatch(out string) (jobID string, err error) {
	if len(out) > MaxSbatchOutput {
		return "", fmt.Errorf("sbatch output: more than %d bytes", MaxSbatchOutput)
	}
	line := strings.TrimSpace(out)
	if line == "" {
		return "", errors.New("sbatch printed no job id")
	}
	if strings.ContainsAny(line, "\r\n") {
		return "", fmt.Errorf("sbatch printed more than one line: %s", quote(line))
	}
	id, cluster, hasCluster := strings.Cut(line, ";")
	if err := ValidateJobID(id); err != nil {
		return "", fmt.Errorf("sbatch output %s: %w", quote(line), err)
	}
	if hasCluster && !clusterName.MatchString(cluster) {
		return "", fmt.Errorf("sbatch output %s: not a cluster name after ';'", quote(line))
	}
	return id, nil
}

var clusterName = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)

// ValidateJobID accepts a plain job id as sbatch prints it: decimal, no
// leading zero, within Slurm's 32 bits (not an array element "1_2", a
// step "1.batch" or a het job component "1+0").
func ValidateJobID(id string) error {
	if id == "" {
		return errors.New("empty job id")
	}
	if len(id) > 10 || strings.Trim(id, "0123456789") != "" || id[0] == '0' {
		return fmt.Errorf("job id %s is not a decimal job id", quote(id))
	}
	n, err := strconv.ParseUint(id, 10, 32)
	if err != nil || n >= 0xfffffffe { // NO_VAL and INFINITE
		return fmt.Errorf("job id %s is out of range", quote(id))
	}
	return nil
}

// noJob stands in for an id that is not a job id in the argument lists
// that cannot fail: squeue and scancel refuse job id 0, so a bad id makes
// the command fail instead of reaching other jobs (an empty --jobs= or a
// bare scancel would).
const noJob = "0"

func jobList(ids []string) string {
	if len(ids) == 0 {
		return noJob
	}
	out := make([]string, len(ids))
	for i, id := range ids {
		if ValidateJobID(id) != nil {
			id = noJob
		}
		out[i] = id
	}
	return strings.Join(out, ",")
}

// slurmEnvPrefixes are the variables Slurm's commands read as options
// (SBATCH_PARTITION, SQUEUE_STATES, SLURM_CLUSTERS, SCANCEL_USER...):
// each would change what fleet asked for. sbatch also copies every
// SLURM_* variable into the job's environment, which slurmctld saves.
var slurmEnvPrefixes = []string{"SLURM_", "SBATCH_", "SALLOC_", "SRUN_", "SQUEUE_", "SACCT_", "SCANCEL_", "SCONTROL_", "SINFO_"}

// CommandEnv is environ (os.Environ's form) without the variables Slurm's
// commands read as options or pass into a job, keeping SLURM_CONF, which
// only says where the cluster's configuration is.
func CommandEnv(environ []string) []string {
	out := make([]string, 0, len(environ))
	for _, kv := range environ {
		if name, _, _ := strings.Cut(kv, "="); !OptionVar(name) {
			out = append(out, kv)
		}
	}
	return out
}

// OptionVar says whether the variable name is one CommandEnv leaves out:
// one Slurm's commands read as options or pass into a job (not SLURM_CONF).
func OptionVar(name string) bool {
	if name == "SLURM_CONF" {
		return false
	}
	for _, p := range slurmEnvPrefixes {
		if strings.HasPrefix(strings.ToUpper(name), p) {
			return true
		}
	}
	return false
}

// quote is %q of at most 64 bytes of s, for error messages.
func quote(s string) string {
	const max = 64
	if len(s) > max {
		cut := max
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		return strconv.Quote(s[:cut]) + "..."
	}
	return strconv.Quote(s)
}
