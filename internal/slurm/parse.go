package slurm

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"
)

// JobInfo is what squeue, scontrol or sacct says of one job.
type JobInfo struct {
	ID    string // decimal
	State State
	// Reason is why a job waits (or Slurm's last word on it), cleaned to
	// be shown: no control characters, at most 256 bytes; "" for None.
	Reason string
	// Node is the job's node; "" while it has none.
	Node string
	// ExitCode is "status:signal" as Slurm prints it; "" when the command
	// does not say (squeue).
	ExitCode string
}

// SqueueFormat is squeue's --format for ParseSqueue: id, state, reason,
// node, split by '|'.
const SqueueFormat = "%i|%T|%r|%N"

// SqueueArgs lists the given jobs in every state, one line each, in
// SqueueFormat. ids are ParseSbatch's; one that is not a job id is sent
// as 0, which squeue refuses, and so is an empty list (an empty --jobs
// would list everyone's jobs). squeue knows a job until MinJobAge after
// it ended; asked for one id it no longer knows, it fails with "Invalid
// job id specified" (UnknownJob), asked for several it leaves it out:
// ask sacct then.
func SqueueArgs(ids []string) []string {
	return []string{"--noheader", "--states=all", "--jobs=" + jobList(ids), "--format=" + SqueueFormat}
}

// SqueueUserArgs lists every job of the user with this uid, in every
// state squeue still knows, in SqueueFormat: one call for a whole fleet.
func SqueueUserArgs(uid int) []string {
	return []string{"--noheader", "--states=all", "--user=" + strconv.Itoa(uid), "--format=" + SqueueFormat}
}

// SacctFormat is sacct's --format for ParseSacct.
const SacctFormat = "JobID,State,NodeList,ExitCode,Reason"

// SacctArgs asks the accounting database for the given jobs' allocations
// (no steps), '|'-separated without a header. ids as for SqueueArgs.
func SacctArgs(ids []string) []string {
	return []string{"--noheader", "--parsable2", "--allocations", "--jobs=" + jobList(ids), "--format=" + SacctFormat}
}

// ScontrolJobArgs shows one job on one line, for ParseScontrolJob. An id
// that is not a job id is sent as 0, which scontrol does not know.
func ScontrolJobArgs(id string) []string {
	if ValidateJobID(id) != nil {
		id = noJob
	}
	return []string{"--oneliner", "show", "job", id}
}

// ScontrolNodeArgs shows one node on one line, for ParseNodeAddr.
func ScontrolNodeArgs(node string) ([]string, error) {
	if !nodeName.MatchString(node) {
		return nil, fmt.Errorf("node name %s is not a single node name", quote(node))
	}
	return []string{"--oneliner", "show", "node", node}, nil
}

// ScancelArgs cancels one job. An id that is not a job id is sent as 0,
// which scancel refuses (a bare scancel with filters from the
// environment could reach other jobs; the driver runs it without them, OptionVar).
func ScancelArgs(id string) []string {
	if ValidateJobID(id) != nil {
		id = noJob
	}
	return []string{id}
}

// UnknownJob reports whether a Slurm command's output (stderr) says it
// does not know a job id: it ended longer ago than MinJobAge, or never was.
func UnknownJob(output string) bool {
	return strings.Contains(output, "Invalid job id specified")
}

// AccountingDisabled reports whether sacct's output says the cluster
// keeps no accounting: a job squeue no longer knows cannot be looked up.
func AccountingDisabled(output string) bool {
	return strings.Contains(output, "accounting storage is disabled")
}

// ParseSqueue reads squeue's output for SqueueArgs. A reason may hold
// '|' (the id and state come first, the node list last and never holds
// one), so a line needs at least four fields.
func ParseSqueue(out string) ([]JobInfo, error) {
	return parseLines("squeue", out, func(line string) (JobInfo, error) {
		f := strings.Split(line, "|")
		if len(f) < 4 {
			return JobInfo{}, fmt.Errorf("%d fields, want 4 (%s)", len(f), SqueueFormat)
		}
		return jobInfo(f[0], f[1], strings.Join(f[2:len(f)-1], "|"), f[len(f)-1], "")
	})
}

// ParseSacct reads sacct's output for SacctArgs. The reason comes last
// and may hold '|'.
func ParseSacct(out string) ([]JobInfo, error) {
	return parseLines("sacct", out, func(line string) (JobInfo, error) {
		f := strings.SplitN(line, "|", 5)
		if len(f) < 5 {
			return JobInfo{}, fmt.Errorf("%d fields, want 5 (%s)", len(f), SacctFormat)
		}
		return jobInfo(f[0], f[1], f[4], f[2], f[3])
	})
}

func parseLines(cmd, out string, parse func(string) (JobInfo, error)) ([]JobInfo, error) {
	if len(out) > MaxOutput {
		return nil, fmt.Errorf("%s output: more than %d bytes", cmd, MaxOutput)
	}
	var jobs []JobInfo
	seen := map[string]int{}
	for n, line := range strings.Split(out, "\n") {
		line = strings.TrimSuffix(line, "\r")
		if strings.TrimSpace(line) == "" {
			continue
		}
		j, err := parse(line)
		if err != nil {
			return nil, fmt.Errorf("%s output line %d: %w", cmd, n+1, err)
		}
		if first, ok := seen[j.ID]; ok {
			return nil, fmt.Errorf("%s output line %d: job %s again (first on line %d)", cmd, n+1, j.ID, first)
		}
		seen[j.ID] = n + 1
		jobs = append(jobs, j)
	}
	return jobs, nil
}

func jobInfo(id, state, reason, node, exit string) (JobInfo, error) {
	id = strings.TrimSpace(id)
	if err := ValidateJobID(id); err != nil {
		return JobInfo{}, err
	}
	st, err := ParseState(state)
	if err != nil {
		return JobInfo{}, fmt.Errorf("job %s: %w", id, err)
	}
	n, err := parseNode(node)
	if err != nil {
		return JobInfo{}, fmt.Errorf("job %s: %w", id, err)
	}
	e, err := parseExitCode(exit)
	if err != nil {
		return JobInfo{}, fmt.Errorf("job %s: %w", id, err)
	}
	return JobInfo{ID: id, State: st, Reason: cleanReason(reason), Node: n, ExitCode: e}, nil
}

// nodeName is one node, as a fleet job has one: not a host list
// ("n[1-2]", "n1,n2"), and nothing an ssh or scontrol command line could
// read as an option.
var nodeName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$`)

func parseNode(v string) (string, error) {
	v = strings.TrimSpace(v)
	switch v {
	case "", "(null)", "None assigned", "None":
		return "", nil
	}
	if !nodeName.MatchString(v) {
		return "", fmt.Errorf("node list %s is not a single node name", quote(v))
	}
	return v, nil
}

func parseExitCode(v string) (string, error) {
	v = strings.TrimSpace(v)
	if v == "" {
		return "", nil
	}
	status, sig, ok := strings.Cut(v, ":")
	if !ok || !smallNumber(status) || !smallNumber(sig) {
		return "", fmt.Errorf("exit code %s is not status:signal", quote(v))
	}
	return v, nil
}

// smallNumber is a decimal 0 to 255, as an exit status or signal is.
func smallNumber(s string) bool {
	if s == "" || len(s) > 3 || strings.Trim(s, "0123456789") != "" {
		return false
	}
	n, _ := strconv.Atoi(s)
	return n <= 255
}

// cleanReason makes a reason fit to show: without the parentheses
// squeue's %R adds, without control characters, bidirectional controls
// or invalid UTF-8, at most maxReasonLen bytes; "None" is "".
func cleanReason(v string) string {
	var b strings.Builder
	for i, r := range v {
		if b.Len() >= 4*maxReasonLen {
			break
		}
		switch {
		case r == utf8.RuneError && !strings.HasPrefix(v[i:], "\uFFFD"),
			r < 0x20, r >= 0x7f && r <= 0x9f,
			r >= 0x202a && r <= 0x202e, r >= 0x2066 && r <= 0x2069,
			r == 0x2028 || r == 0x2029 || r == 0xfeff || r == 0x200e || r == 0x200f:
			continue
		}
		b.WriteRune(r)
	}
	s := strings.TrimSpace(b.String())
	if strings.HasPrefix(s, "(") && strings.HasSuffix(s, ")") {
		s = strings.TrimSpace(s[1 : len(s)-1])
	}
	if s == "None" {
		return ""
	}
	if len(s) > maxReasonLen {
		cut := maxReasonLen
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut]
	}
	return s
}

// ParseScontrolJob reads `scontrol --oneliner show job ID` (or the
// multi-line form): JobId=, JobState=, Reason=, NodeList=, ExitCode=.
func ParseScontrolJob(out string) (JobInfo, error) {
	kv, err := keyValues("scontrol show job", out, "JobId")
	if err != nil {
		return JobInfo{}, err
	}
	state, ok := kv["JobState"]
	if !ok {
		return JobInfo{}, errors.New("scontrol show job: no JobState")
	}
	j, err := jobInfo(kv["JobId"], state, kv["Reason"], kv["NodeList"], kv["ExitCode"])
	if err != nil {
		return JobInfo{}, fmt.Errorf("scontrol show job: %w", err)
	}
	return j, nil
}

// ParseNodeAddr reads NodeAddr= from `scontrol --oneliner show node NAME`:
// the address to reach the node at, an IP address or a host name.
func ParseNodeAddr(out string) (string, error) {
	kv, err := keyValues("scontrol show node", out, "NodeName")
	if err != nil {
		return "", err
	}
	addr, ok := kv["NodeAddr"]
	if !ok {
		return "", errors.New("scontrol show node: no NodeAddr")
	}
	if err := checkAddr(addr); err != nil {
		return "", fmt.Errorf("scontrol show node %s: NodeAddr %s %w", quote(kv["NodeName"]), quote(addr), err)
	}
	return addr, nil
}

func checkAddr(a string) error {
	if len(a) == 0 || len(a) > 253 {
		return errors.New("is not 1 to 253 bytes")
	}
	if ip, err := netip.ParseAddr(a); err == nil {
		if ip.Zone() != "" {
			return errors.New("has an IPv6 zone")
		}
		return nil
	}
	for _, label := range strings.Split(strings.TrimSuffix(a, "."), ".") {
		if !hostLabel.MatchString(label) {
			return errors.New("is neither an IP address nor a host name")
		}
	}
	return nil
}

var hostLabel = regexp.MustCompile(`^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$`)

// keyValues reads one scontrol record: whitespace-separated Key=Value
// fields, where a token that does not start a field continues the value
// before it ("Comment=two words", a node's "Reason=Not responding [...]").
// The first of a repeated key counts: scontrol prints the fields read
// here before the free-text ones (Comment, a node's Reason), so text in
// those cannot stand in for them. A record starts a line with recordKey=;
// a second one is refused.
func keyValues(cmd, out, recordKey string) (map[string]string, error) {
	if len(out) > MaxOutput {
		return nil, fmt.Errorf("%s output: more than %d bytes", cmd, MaxOutput)
	}
	if strings.TrimSpace(out) == "" {
		return nil, fmt.Errorf("%s printed nothing", cmd)
	}
	kv := map[string]string{}
	var key string
	var val strings.Builder
	flush := func() {
		if _, dup := kv[key]; !dup && key != "" {
			kv[key] = val.String()
		}
	}
	records := 0
	for _, line := range strings.Split(out, "\n") {
		for i, t := range strings.Fields(line) {
			if i == 0 && strings.HasPrefix(t, recordKey+"=") {
				if records++; records > 1 {
					return nil, fmt.Errorf("%s printed more than one record", cmd)
				}
			}
			if records == 0 {
				return nil, fmt.Errorf("%s output does not start with %s=: %s", cmd, recordKey, quote(t))
			}
			if isKey(t) {
				flush()
				k, v, _ := strings.Cut(t, "=")
				key = k
				val.Reset()
				val.WriteString(v)
				continue
			}
			val.WriteByte(' ')
			val.WriteString(t)
		}
	}
	flush()
	return kv, nil
}

// isKey reports whether t starts a new Key=Value field: keys are words
// with ':' or '/' inside ("AllocNode:Sid", "CPUs/Task").
func isKey(t string) bool {
	k, _, ok := strings.Cut(t, "=")
	if !ok || k == "" || !(k[0] >= 'A' && k[0] <= 'Z' || k[0] >= 'a' && k[0] <= 'z') {
		return false
	}
	for i := 1; i < len(k); i++ {
		c := k[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == ':' || c == '/') {
			return false
		}
	}
	return true
}

// Phrase is the job's state for a person: "queued (Resources)", "running
// on n1", "suspended on n1", "ending on n1", "ended: time limit reached",
// "ended: failed (exit code 3)".
func (j JobInfo) Phrase() string {
	i, ok := states[j.State]
	if !ok {
		return j.State.Describe()
	}
	var b strings.Builder
	switch i.class {
	case ClassQueued:
		b.WriteString(j.State.Describe())
		if j.Reason != "" {
			fmt.Fprintf(&b, " (%s)", j.Reason)
		}
	case ClassRunning, ClassHeld, ClassEnding:
		if i.class == ClassHeld {
			b.WriteString(j.State.Describe())
		} else {
			b.WriteString(classWord[i.class])
		}
		if j.Node != "" {
			b.WriteString(" on " + j.Node)
		}
		if i.class != ClassHeld && i.detail != "" {
			fmt.Fprintf(&b, " (%s)", i.detail)
		} else if i.class == ClassHeld && j.Reason != "" {
			fmt.Fprintf(&b, " (%s)", j.Reason)
		}
	case ClassEnded:
		b.WriteString(j.State.Describe())
		status, sig, _ := strings.Cut(j.ExitCode, ":")
		switch {
		case j.State == Failed && status != "" && status != "0":
			fmt.Fprintf(&b, " (exit code %s)", status)
		case j.State == Failed && sig != "" && sig != "0":
			fmt.Fprintf(&b, " (signal %s)", sig)
		}
	}
	return b.String()
}
