package slurm

import (
	"reflect"
	"strings"
	"testing"
)

// Realistic outputs of Slurm 22.05, as run on a two-node test cluster.
const (
	squeueOut = "3|PENDING|Resources|\n" +
		"1|RUNNING|None|n1\n" +
		"2|RUNNING|None|n2\n" +
		"4|PENDING|Priority|\n" +
		"5|PENDING|ReqNodeNotAvail, UnavailableNodes:n1|\n" +
		"6|COMPLETING|None|n2\n" +
		"7|CANCELLED|None|n1\n" +
		"8|TIMEOUT|TimeLimit|n2\n" +
		"9|PENDING|(JobHeldUser)|\n" +
		"10|SUSPENDED|None|n1\n"

	sacctOut = "1|CANCELLED by 0|n1|0:15|None\n" +
		"2|COMPLETED|n2|0:0|None\n" +
		"3|PENDING|None assigned|0:0|Resources\n" +
		"8|TIMEOUT|n2|0:0|None\n" +
		"11|FAILED|n1|3:0|None\n" +
		"12|NODE_FAIL|n2|0:0|None\n" +
		"13|PREEMPTED|n1|0:0|None\n" +
		"14|OUT_OF_MEMORY|n1|0:125|None\n" +
		"15|FAILED|n1|0:9|None\n"

	scontrolJob = "JobId=1 JobName=fleet-myproj-1 UserId=root(0) GroupId=root(0) MCS_label=N/A " +
		"Priority=4294901759 Nice=0 Account=(null) QOS=(null) JobState=CANCELLED Reason=None " +
		"Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:15 RunTime=00:00:05 " +
		"TimeLimit=UNLIMITED TimeMin=N/A SubmitTime=2024-05-01T10:00:00 EligibleTime=2024-05-01T10:00:00 " +
		"AccrueTime=2024-05-01T10:00:00 StartTime=2024-05-01T10:00:00 EndTime=2024-05-01T10:00:05 " +
		"Deadline=N/A SuspendTime=None SecsPreSuspend=0 LastSchedEval=2024-05-01T10:00:00 Scheduler=Main " +
		"Partition=p AllocNode:Sid=host:1234 ReqNodeList=(null) ExcNodeList=(null) NodeList=n1 BatchHost=n1 " +
		"NumNodes=1 NumCPUs=2 NumTasks=1 CPUs/Task=2 ReqB:S:C:T=0:0:*:* TRES=cpu=2,mem=2560M,node=1,billing=2 " +
		"Socks/Node=* NtasksPerN:B:S:C=0:0:*:* CoreSpec=* MinCPUsNode=2 MinMemoryNode=2560M MinTmpDiskNode=0 " +
		"Features=(null) DelayBoot=00:00:00 OverSubscribe=OK Contiguous=0 Licenses=(null) Network=(null) " +
		"Command=(null) WorkDir=/ Comment=fleet machine myproj-1 JobState=RUNNING NodeList=evil " +
		"StdErr=/dev/null StdIn=/dev/null StdOut=/dev/null Power=\n"

	scontrolPending = "JobId=3 JobName=fleet-myproj-3 UserId=u(1000) GroupId=u(1000) MCS_label=N/A " +
		"Priority=1 Nice=0 Account=lab QOS=normal JobState=PENDING Reason=ReqNodeNotAvail,_UnavailableNodes:n1 " +
		"Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:0 NodeList=(null) " +
		"SchedNodeList=n2 NumNodes=1\n"

	scontrolNode = "NodeName=n1 Arch=x86_64 CoresPerSocket=1 CPUAlloc=0 CPUEfctv=2 CPUTot=2 CPULoad=0.00 " +
		"AvailableFeatures=(null) ActiveFeatures=(null) Gres=(null) NodeAddr=10.77.0.2 NodeHostName=n1 " +
		"Version=22.05.8 OS=Linux 6.1.0-18-amd64 #1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1 (2024-02-01)  " +
		"RealMemory=4000 AllocMem=0 FreeMem=3000 Sockets=2 Boards=1 State=IDLE ThreadsPerCore=1 TmpDisk=0 " +
		"Weight=1 Owner=N/A MCS_label=N/A Partitions=p BootTime=2024-05-01T09:00:00 " +
		"SlurmdStartTime=2024-05-01T09:50:00 LastBusyTime=2024-05-01T10:00:05 CfgTRES=cpu=2,mem=4000M,billing=2 " +
		"AllocTRES= CapWatts=n/a CurrentWatts=0 AveWatts=0 ExtSensorsJoules=n/s ExtSensorsWatts=0 " +
		"ExtSensorsTemp=n/s Reason=Not responding NodeAddr=6.6.6.6 [slurm@2024-05-01T10:01:00]\n"
)

func TestParseSqueue(t *testing.T) {
	got, err := ParseSqueue(squeueOut)
	if err != nil {
		t.Fatal(err)
	}
	want := []JobInfo{
		{ID: "3", State: Pending, Reason: "Resources"},
		{ID: "1", State: Running, Node: "n1"},
		{ID: "2", State: Running, Node: "n2"},
		{ID: "4", State: Pending, Reason: "Priority"},
		{ID: "5", State: Pending, Reason: "ReqNodeNotAvail, UnavailableNodes:n1"},
		{ID: "6", State: Completing, Node: "n2"},
		{ID: "7", State: Cancelled, Node: "n1"},
		{ID: "8", State: Timeout, Reason: "TimeLimit", Node: "n2"},
		{ID: "9", State: Pending, Reason: "JobHeldUser"},
		{ID: "10", State: Suspended, Node: "n1"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("ParseSqueue:\n got %+v\nwant %+v", got, want)
	}
	phrases := []string{
		"queued (Resources)", "running on n1", "running on n2", "queued (Priority)",
		"queued (ReqNodeNotAvail, UnavailableNodes:n1)", "ending on n2", "ended: cancelled",
		"ended: time limit reached", "queued (JobHeldUser)", "suspended on n1",
	}
	for i, j := range got {
		if p := j.Phrase(); p != phrases[i] {
			t.Errorf("job %s: Phrase() = %q, want %q", j.ID, p, phrases[i])
		}
	}
	if jobs, err := ParseSqueue(""); err != nil || len(jobs) != 0 {
		t.Errorf("empty output: %v, %v", jobs, err)
	}
	if jobs, err := ParseSqueue("1|RUNNING|None|n1\r\n\n\n"); err != nil || len(jobs) != 1 {
		t.Errorf("CRLF and blank lines: %v, %v", jobs, err)
	}
	// A reason holding '|': the node is the last field.
	jobs, err := ParseSqueue("4|PENDING|a|b|n9|\n")
	if err != nil || jobs[0].Reason != "a|b|n9" || jobs[0].Node != "" {
		t.Errorf("reason with '|': %+v, %v", jobs, err)
	}
	// Every state, long and short.
	for _, s := range States() {
		for _, name := range []string{string(s), s.Short()} {
			jobs, err := ParseSqueue("1|" + name + "|None|n1\n")
			if err != nil || jobs[0].State != s {
				t.Errorf("squeue state %s: %+v, %v", name, jobs, err)
			}
		}
	}
}

func TestParseSacct(t *testing.T) {
	got, err := ParseSacct(sacctOut)
	if err != nil {
		t.Fatal(err)
	}
	want := []JobInfo{
		{ID: "1", State: Cancelled, Node: "n1", ExitCode: "0:15"},
		{ID: "2", State: Completed, Node: "n2", ExitCode: "0:0"},
		{ID: "3", State: Pending, ExitCode: "0:0", Reason: "Resources"},
		{ID: "8", State: Timeout, Node: "n2", ExitCode: "0:0"},
		{ID: "11", State: Failed, Node: "n1", ExitCode: "3:0"},
		{ID: "12", State: NodeFail, Node: "n2", ExitCode: "0:0"},
		{ID: "13", State: Preempted, Node: "n1", ExitCode: "0:0"},
		{ID: "14", State: OutOfMemory, Node: "n1", ExitCode: "0:125"},
		{ID: "15", State: Failed, Node: "n1", ExitCode: "0:9"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("ParseSacct:\n got %+v\nwant %+v", got, want)
	}
	phrases := []string{
		"ended: cancelled", "ended: completed", "queued (Resources)", "ended: time limit reached",
		"ended: failed (exit code 3)", "ended: node failure", "ended: preempted", "ended: out of memory",
		"ended: failed (signal 9)",
	}
	for i, j := range got {
		if p := j.Phrase(); p != phrases[i] {
			t.Errorf("job %s: Phrase() = %q, want %q", j.ID, p, phrases[i])
		}
	}
	for _, s := range States() {
		jobs, err := ParseSacct("1|" + string(s) + "|n1|0:0|None\n")
		if err != nil || jobs[0].State != s {
			t.Errorf("sacct state %s: %+v, %v", s, jobs, err)
		}
	}
	// Reason is last and may hold '|'.
	jobs, err := ParseSacct("1|FAILED|n1|1:0|a|b\n")
	if err != nil || jobs[0].Reason != "a|b" {
		t.Errorf("reason with '|': %+v, %v", jobs, err)
	}
}

func TestParsersRefuseMalformedOutput(t *testing.T) {
	squeue := map[string]string{
		"1|RUNNING|None\n":                      "line 1: 3 fields",
		"1|RUNNING|None|n1\n2\n":                "line 2: 1 fields",
		"1|RUNNING|None|n1\n\n3|RUNNING|None\n": "line 3",
		"x|RUNNING|None|n1\n":                   "line 1: job id \"x\"",
		"12_3|RUNNING|None|n1\n":                "not a decimal job id",
		"12.batch|RUNNING|None|n1\n":            "not a decimal job id",
		"12+0|RUNNING|None|n1\n":                "not a decimal job id",
		"-1|RUNNING|None|n1\n":                  "not a decimal job id",
		"01|RUNNING|None|n1\n":                  "not a decimal job id",
		"0|RUNNING|None|n1\n":                   "not a decimal job id",
		"4294967294|RUNNING|None|n1\n":          "out of range",
		"99999999999|RUNNING|None|n1\n":         "not a decimal job id",
		"1|WEIRD|None|n1\n":                     `unknown job state "WEIRD"`,
		"1||None|n1\n":                          "empty job state",
		"1|RUNNING|None|n[1-2]\n":               "not a single node name",
		"1|RUNNING|None|n1,n2\n":                "not a single node name",
		"1|RUNNING|None|-oProxyCommand=x\n":     "not a single node name",
		"1|RUNNING|None|n 1\n":                  "not a single node name",
		"1|RUNNING|None|n1\x1b[2J\n":            "not a single node name",
		"1|RUNNING|None|n1\n1|PENDING|None|\n":  "line 2: job 1 again (first on line 1)",
		"Submitted batch job 1\n":               "line 1: 1 fields",
		strings.Repeat("x", MaxOutput+1):        "more than 1048576 bytes",
	}
	for in, want := range squeue {
		checkRefused(t, "ParseSqueue", in, want, func(s string) (any, error) { return ParseSqueue(s) })
	}
	sacct := map[string]string{
		"1|RUNNING|n1|0:0\n":                               "line 1: 4 fields, want 5",
		"1.batch|RUNNING|n1|0:0|x\n":                       "not a decimal job id",
		"1_2|RUNNING|n1|0:0|x\n":                           "not a decimal job id",
		"1|RUNNING|n1|x|None\n":                            `exit code "x"`,
		"1|RUNNING|n1|0|None\n":                            "not status:signal",
		"1|RUNNING|n1|256:0|None\n":                        "not status:signal",
		"1|RUNNING|n1|0:-1|None\n":                         "not status:signal",
		"1|RUNNING|n1|0:0:0|None\n":                        "not status:signal",
		"1|CANCELLED by x|n1|0:0|\n":                       "unknown job state",
		"1|RUNNING|n[1-3]|0:0|None\n":                      "not a single node name",
		"2|RUNNING|n1|0:0|None\n2|COMPLETED|n1|0:0|None\n": "job 2 again",
	}
	for in, want := range sacct {
		checkRefused(t, "ParseSacct", in, want, func(s string) (any, error) { return ParseSacct(s) })
	}
}

func checkRefused(t *testing.T, name, in, want string, parse func(string) (any, error)) {
	t.Helper()
	got, err := parse(in)
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("%s(%q) = %+v, %v; want an error with %q", name, short(in), got, err, want)
		return
	}
	if msg := err.Error(); strings.ContainsAny(msg, "\n\r\x00\x1b") || len(msg) > 400 {
		t.Errorf("%s(%q): error is not one short clean line: %q", name, short(in), msg)
	}
}

func short(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

func TestReasonIsCleaned(t *testing.T) {
	cases := map[string]string{
		"None":                     "",
		"(None)":                   "",
		"(Resources)":              "Resources",
		"Bad\x00Reason\x1b[2J":     "BadReason[2J",
		"\u202egnp.exe":            "gnp.exe",
		"a\u0085b\u009bc":          "abc",
		"bad \xff utf8":            "bad  utf8",
		"  spaced  ":               "spaced",
		"ünïcödé ✓":                "ünïcödé ✓",
		strings.Repeat("é", 200):   strings.Repeat("é", 128),
		strings.Repeat("x", 1<<16): strings.Repeat("x", 256),
	}
	for in, want := range cases {
		jobs, err := ParseSqueue("1|PENDING|" + in + "|\n")
		if err != nil {
			t.Errorf("reason %q: %v", short(in), err)
			continue
		}
		if jobs[0].Reason != want {
			t.Errorf("reason %q = %q, want %q", short(in), short(jobs[0].Reason), short(want))
		}
	}
}

func TestParseScontrolJob(t *testing.T) {
	got, err := ParseScontrolJob(scontrolJob)
	if err != nil {
		t.Fatal(err)
	}
	// The comment's JobState= and NodeList= come after the real ones.
	want := JobInfo{ID: "1", State: Cancelled, Node: "n1", ExitCode: "0:15"}
	if got != want {
		t.Errorf("ParseScontrolJob = %+v, want %+v", got, want)
	}
	got, err = ParseScontrolJob(scontrolPending)
	want = JobInfo{ID: "3", State: Pending, Reason: "ReqNodeNotAvail,_UnavailableNodes:n1", ExitCode: "0:0"}
	if err != nil || got != want {
		t.Errorf("pending: %+v, %v; want %+v", got, err, want)
	}
	// The multi-line form without --oneliner reads the same.
	multi := strings.NewReplacer(" UserId", "\n   UserId", " JobState", "\n   JobState", " NodeList", "\n   NodeList").Replace(scontrolJob)
	if got, err := ParseScontrolJob(multi); err != nil || got.State != Cancelled || got.Node != "n1" {
		t.Errorf("multi-line: %+v, %v", got, err)
	}
	bad := map[string]string{
		"":     "printed nothing",
		"\n\n": "printed nothing",
		"slurm_load_jobs error: Invalid job id specified\n":    "does not start with JobId=",
		"JobName=x JobId=1 JobState=RUNNING":                   "does not start with JobId=",
		"JobId=1 JobName=x":                                    "no JobState",
		"JobId=1 JobState=RUNNING\nJobId=2 JobState=PENDING\n": "more than one record",
		"JobId=1_2 JobState=RUNNING":                           "not a decimal job id",
		"JobId= JobState=RUNNING":                              "empty job id",
		"JobId=1 JobState=BOGUS":                               `unknown job state "BOGUS"`,
		"JobId=1 JobState=RUNNING NodeList=n[1-2]":             "not a single node name",
		"JobId=1 JobState=RUNNING ExitCode=nope":               "exit code",
		strings.Repeat("x", MaxOutput+1):                       "more than",
	}
	for in, want := range bad {
		checkRefused(t, "ParseScontrolJob", in, want, func(s string) (any, error) { return ParseScontrolJob(s) })
	}
}

func TestParseNodeAddr(t *testing.T) {
	addr, err := ParseNodeAddr(scontrolNode)
	if err != nil || addr != "10.77.0.2" {
		t.Fatalf("ParseNodeAddr = %q, %v; want 10.77.0.2", addr, err)
	}
	good := map[string]string{
		"NodeName=n1 NodeAddr=n1 NodeHostName=n1":                             "n1",
		"NodeName=n1 NodeAddr=node1.cluster.example.org NodeHostName=n1":      "node1.cluster.example.org",
		"NodeName=n1 NodeAddr=fd00::2 NodeHostName=n1":                        "fd00::2",
		"NodeName=n1 NodeAddr=compute_1 NodeHostName=n1":                      "compute_1",
		"NodeName=n1\n   NodeAddr=192.0.2.7 NodeHostName=n1\n   State=IDLE\n": "192.0.2.7",
	}
	for in, want := range good {
		if got, err := ParseNodeAddr(in); err != nil || got != want {
			t.Errorf("ParseNodeAddr(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	bad := map[string]string{
		"":                                                 "printed nothing",
		"Node n9 not found\n":                              "does not start with NodeName=",
		"NodeName=n1 State=IDLE":                           "no NodeAddr",
		"NodeName=n1 NodeAddr=":                            "not 1 to 253 bytes",
		"NodeName=n1 NodeAddr=-oProxyCommand=sh":           "neither an IP address nor a host name",
		"NodeName=n1 NodeAddr=a..b":                        "neither",
		"NodeName=n1 NodeAddr=n1;reboot":                   "neither",
		"NodeName=n1 NodeAddr=fe80::1%eth0":                "IPv6 zone",
		"NodeName=n1 NodeAddr=" + strings.Repeat("a", 254): "not 1 to 253 bytes",
		"NodeName=n1 NodeAddr=" + strings.Repeat("a", 64):  "neither",
		"NodeName=n1 NodeAddr=1.2.3.4\nNodeName=n2 NodeAddr=1.2.3.5\n": "more than one record",
		"NodeName=n1 NodeAddr=n\x1b[2J1":                               "neither",
	}
	for in, want := range bad {
		checkRefused(t, "ParseNodeAddr", in, want, func(s string) (any, error) { return ParseNodeAddr(s) })
	}
}

func TestPhrase(t *testing.T) {
	cases := []struct {
		j    JobInfo
		want string
	}{
		{JobInfo{State: Pending}, "queued"},
		{JobInfo{State: Pending, Reason: "Resources"}, "queued (Resources)"},
		{JobInfo{State: Configuring, Node: "n1"}, "queued: nodes are booting"},
		{JobInfo{State: RequeueHold, Reason: "JobHeldAdmin"}, "queued: requeued and held (JobHeldAdmin)"},
		{JobInfo{State: Running, Node: "n1"}, "running on n1"},
		{JobInfo{State: Running}, "running"},
		{JobInfo{State: Resizing, Node: "n1"}, "running on n1 (resizing)"},
		{JobInfo{State: Signaling, Node: "n1"}, "running on n1 (being signalled)"},
		{JobInfo{State: Stopped, Node: "n2"}, "stopped on n2"},
		{JobInfo{State: Suspended, Node: "n2", Reason: "Preempted"}, "suspended on n2 (Preempted)"},
		{JobInfo{State: Completing, Node: "n1"}, "ending on n1"},
		{JobInfo{State: StageOut, Node: "n1"}, "ending on n1 (staging out)"},
		{JobInfo{State: Timeout, Node: "n1", Reason: "TimeLimit"}, "ended: time limit reached"},
		{JobInfo{State: Preempted}, "ended: preempted"},
		{JobInfo{State: NodeFail}, "ended: node failure"},
		{JobInfo{State: Cancelled, ExitCode: "0:15"}, "ended: cancelled"},
		{JobInfo{State: Failed, ExitCode: "1:0"}, "ended: failed (exit code 1)"},
		{JobInfo{State: Failed}, "ended: failed"},
		{JobInfo{State: Completed, ExitCode: "0:0"}, "ended: completed"},
		{JobInfo{State: "BOGUS"}, "unknown job state"},
	}
	for _, c := range cases {
		if got := c.j.Phrase(); got != c.want {
			t.Errorf("%+v.Phrase() = %q, want %q", c.j, got, c.want)
		}
	}
}

func TestOutputHelpers(t *testing.T) {
	if !UnknownJob("slurm_load_jobs error: Invalid job id specified\n") ||
		!UnknownJob("scancel: error: Kill job error on job id 9: Invalid job id specified") ||
		UnknownJob("slurm_load_jobs error: Unable to contact slurm controller (connect failure)") {
		t.Error("UnknownJob")
	}
	if !AccountingDisabled("Slurm accounting storage is disabled\n") || AccountingDisabled("") {
		t.Error("AccountingDisabled")
	}
}
