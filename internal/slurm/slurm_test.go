package slurm

import (
	"reflect"
	"strings"
	"testing"
)

// fixed is what every job gets, before the optional settings.
func fixed(name string, cpus, memMiB string) []string {
	return []string{
		"--parsable", "--job-name=" + name, "--nodes=1", "--ntasks=1",
		"--cpus-per-task=" + cpus, "--mem=" + memMiB + "M",
		"--export=NONE", "--no-requeue", "--output=/dev/null", "--error=/dev/null", "--chdir=/",
	}
}

func TestSbatchArgs(t *testing.T) {
	cases := []struct {
		name string
		s    Settings
		j    Job
		want []string
	}{
		{"small machine, default overhead", Settings{},
			Job{Name: "fleet-myproj-1", CPUs: 1, MemoryMiB: 1024},
			fixed("fleet-myproj-1", "1", "1536")},
		{"large machine", Settings{},
			Job{Name: "fleet-big.0", CPUs: 64, MemoryMiB: 262144},
			fixed("fleet-big.0", "64", "262656")},
		{"smallest memory", Settings{},
			Job{Name: "a", CPUs: 1, MemoryMiB: 64},
			fixed("a", "1", "576")},
		{"largest machine", Settings{MemoryOverheadMiB: MaxMemoryOverheadMiB},
			Job{Name: "x", CPUs: 4096, MemoryMiB: 16 << 20},
			fixed("x", "4096", "16842752")},
		{"custom overhead", Settings{MemoryOverheadMiB: 1024},
			Job{Name: "fleet-p-2", CPUs: 4, MemoryMiB: 8192},
			fixed("fleet-p-2", "4", "9216")},
		{"partition", Settings{Partition: "batch"},
			Job{Name: "j", CPUs: 2, MemoryMiB: 2048},
			append(fixed("j", "2", "2560"), "--partition=batch")},
		{"partition list", Settings{Partition: "short,long"},
			Job{Name: "j", CPUs: 2, MemoryMiB: 2048},
			append(fixed("j", "2", "2560"), "--partition=short,long")},
		{"account", Settings{Account: "lab42"},
			Job{Name: "j", CPUs: 2, MemoryMiB: 2048},
			append(fixed("j", "2", "2560"), "--account=lab42")},
		{"qos", Settings{QOS: "high"},
			Job{Name: "j", CPUs: 2, MemoryMiB: 2048},
			append(fixed("j", "2", "2560"), "--qos=high")},
		{"time", Settings{TimeLimit: "1-12:00:00"},
			Job{Name: "j", CPUs: 2, MemoryMiB: 2048},
			append(fixed("j", "2", "2560"), "--time=1-12:00:00")},
		{"constraint", Settings{Constraint: "[rack1|rack2]&kvm"},
			Job{Name: "j", CPUs: 2, MemoryMiB: 2048},
			append(fixed("j", "2", "2560"), "--constraint=[rack1|rack2]&kvm")},
		{"comment", Settings{},
			Job{Name: "j", CPUs: 2, MemoryMiB: 2048, Comment: "fleet machine myproj-2 (ubuntu-24.04)"},
			append(fixed("j", "2", "2560"), "--comment=fleet machine myproj-2 (ubuntu-24.04)")},
		{"extra args", Settings{ExtraArgs: []string{"--gres=gpu:1", "--exclusive", "--dependency=afterok:12", "--prefer=tmpl"}},
			Job{Name: "j", CPUs: 2, MemoryMiB: 2048},
			append(fixed("j", "2", "2560"), "--gres=gpu:1", "--exclusive", "--dependency=afterok:12", "--prefer=tmpl")},
		{"everything, in order", Settings{
			Partition: "p", Account: "a", QOS: "q", Constraint: "c", TimeLimit: "90",
			ExtraArgs: []string{"--exclusive"}, MemoryOverheadMiB: 256,
		}, Job{Name: "fleet-all-9", CPUs: 8, MemoryMiB: 16384, Comment: "c1"},
			append(fixed("fleet-all-9", "8", "16640"),
				"--partition=p", "--account=a", "--qos=q", "--time=90", "--constraint=c", "--comment=c1", "--exclusive")},
	}
	for _, c := range cases {
		got, err := SbatchArgs(c.s, c.j)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s:\n got %q\nwant %q", c.name, got, c.want)
		}
	}
}

func TestSbatchArgsRefusesBadJobs(t *testing.T) {
	ok := Job{Name: "fleet-p-1", CPUs: 2, MemoryMiB: 2048}
	cases := []struct {
		name string
		s    Settings
		j    func(Job) Job
		want string
	}{
		{"empty name", Settings{}, func(j Job) Job { j.Name = ""; return j }, "job name"},
		{"name with space", Settings{}, func(j Job) Job { j.Name = "a b"; return j }, "job name"},
		{"name leading dash", Settings{}, func(j Job) Job { j.Name = "-x"; return j }, "job name"},
		{"name leading dot", Settings{}, func(j Job) Job { j.Name = ".x"; return j }, "job name"},
		{"name too long", Settings{}, func(j Job) Job { j.Name = strings.Repeat("a", 129); return j }, "job name"},
		{"name unicode", Settings{}, func(j Job) Job { j.Name = "flëet"; return j }, "job name"},
		{"name newline", Settings{}, func(j Job) Job { j.Name = "a\n"; return j }, "job name"},
		{"zero cpus", Settings{}, func(j Job) Job { j.CPUs = 0; return j }, "0 CPUs"},
		{"too many cpus", Settings{}, func(j Job) Job { j.CPUs = 4097; return j }, "4097 CPUs"},
		{"too little memory", Settings{}, func(j Job) Job { j.MemoryMiB = 63; return j }, "63 MiB"},
		{"too much memory", Settings{}, func(j Job) Job { j.MemoryMiB = 16<<20 + 1; return j }, "MiB of memory"},
		{"negative memory", Settings{}, func(j Job) Job { j.MemoryMiB = -1; return j }, "-1 MiB"},
		{"comment newline", Settings{}, func(j Job) Job { j.Comment = "a\nb"; return j }, "comment holds a newline"},
		{"comment NUL", Settings{}, func(j Job) Job { j.Comment = "a\x00"; return j }, "comment holds a NUL"},
		{"comment escape", Settings{}, func(j Job) Job { j.Comment = "\x1b[2J"; return j }, "comment holds a control"},
		{"comment C1", Settings{}, func(j Job) Job { j.Comment = "a\u009bb"; return j }, "comment holds a control"},
		{"comment bad utf8", Settings{}, func(j Job) Job { j.Comment = "a\xffb"; return j }, "not valid UTF-8"},
		{"comment too long", Settings{}, func(j Job) Job { j.Comment = strings.Repeat("c", 257); return j }, "longer than 256"},
		{"bad settings", Settings{Partition: "a b"}, func(j Job) Job { return j }, "slurm partition"},
		{"bad overhead", Settings{MemoryOverheadMiB: -1}, func(j Job) Job { return j }, "memory overhead"},
	}
	for _, c := range cases {
		args, err := SbatchArgs(c.s, c.j(ok))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %q, %v; want an error with %q", c.name, args, err, c.want)
		}
		if err != nil && strings.ContainsAny(err.Error(), "\n\x00\x1b") {
			t.Errorf("%s: error is not one clean line: %q", c.name, err)
		}
	}
	// Unicode that is not a control is fine in a comment.
	j := ok
	j.Comment = "machine ✓ 日本"
	if _, err := SbatchArgs(Settings{}, j); err != nil {
		t.Errorf("unicode comment: %v", err)
	}
}

func TestValidate(t *testing.T) {
	good := []Settings{
		{},
		{Partition: "debug", Account: "proj-1", QOS: "normal", Constraint: "kvm&(rack1|rack2)"},
		{Constraint: "[haswell*2&(knl&hemi)*4]"},
		{Constraint: "intel,amd:2"},
		{MemoryOverheadMiB: MaxMemoryOverheadMiB},
		{Partition: strings.Repeat("p", 256)},
		{ExtraArgs: []string{"--exclusive", "--gres=gpu:a100:1", "--mail-type=END,FAIL", "--dependency=afterany:1",
			"--time-min=10", "--nodelist=n1", "--exclude=n2", "--prefer=ssd", "--wait-all-nodes=1",
			"--mem-bind=local", "--ntasks-per-core=1", "--time-"}},
		{ExtraArgs: []string{"--begin=now+1hour", "--mail-user=ünï@example.org"}},
	}
	for _, s := range good {
		if err := s.Validate(); err != nil {
			t.Errorf("%+v: %v", s, err)
		}
	}
	bad := []struct {
		s    Settings
		want string
	}{
		{Settings{Partition: "a b"}, `partition "a b": holds whitespace`},
		{Settings{Partition: "a\tb"}, "holds whitespace"},
		{Settings{Partition: "a\n"}, "holds whitespace"},
		{Settings{Partition: "a\x00"}, "NUL"},
		{Settings{Partition: "a\x1b"}, "control character"},
		{Settings{Partition: "a\x7f"}, "control character"},
		{Settings{Partition: "-p"}, "starts with '-'"},
		{Settings{Partition: "débug"}, "non-ASCII"},
		{Settings{Partition: "\xff"}, "non-ASCII"},
		{Settings{Partition: strings.Repeat("p", 257)}, "longer than 256"},
		{Settings{Account: "a b"}, "slurm account"},
		{Settings{Account: "--x"}, "slurm account"},
		{Settings{QOS: "q\r"}, "slurm qos"},
		{Settings{QOS: "нормал"}, "slurm qos"},
		{Settings{Constraint: "a & b"}, "slurm constraint"},
		{Settings{Constraint: "-a"}, "slurm constraint"},
		{Settings{MemoryOverheadMiB: -1}, "memory overhead -1"},
		{Settings{MemoryOverheadMiB: MaxMemoryOverheadMiB + 1}, "memory overhead 65537"},
		{Settings{ExtraArgs: make([]string, 65)}, "at most 64"},
	}
	for _, c := range bad {
		err := c.s.Validate()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: got %v, want an error with %q", c.s, err, c.want)
		}
	}
}

func TestValidateTimeLimit(t *testing.T) {
	for _, v := range []string{
		"0", "30", "30:15", "1:30:00", "2-0", "2-12", "2-12:30", "2-12:30:15",
		"UNLIMITED", "INFINITE", "unlimited", "Infinite", "0:999999999",
		"24855-3:14:07", // 2^31-1 seconds
		"35791394",      // minutes, just under 2^31 seconds
	} {
		if err := (Settings{TimeLimit: v}).Validate(); err != nil {
			t.Errorf("%q: %v", v, err)
		}
	}
	for _, v := range []string{
		"1:2:3:4", "1-2:3:4:5", "-1", "1-", "-", ":", "1:", ":1", "1::2", "1-2-3",
		"1h", "one", " 10", "10 ", "1.5", "+5", "0x10", "１０", "1e3",
		"1234567890", "4294967296", "99999999999999999999",
		"24855-3:14:08", "35791395", "999999999-0",
		"UNLIMITED2", "NONE", "a\x00", "1\n",
	} {
		err := (Settings{TimeLimit: v}).Validate()
		if err == nil {
			t.Errorf("%q: accepted", v)
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, quote(v)) || !strings.Contains(msg, "M:S, H:M:S, D-H") || !strings.Contains(msg, "UNLIMITED or INFINITE") {
			t.Errorf("%q: error does not name the value and the forms: %v", v, err)
		}
	}
}

func TestValidateExtraArgs(t *testing.T) {
	cases := map[string]string{
		// What fleet sets, what the block sets, what it relies on.
		"--export=ALL":           "--export is refused",
		"--export":               "--export is refused",
		"--export-file=/tmp/env": "--export-file is refused",
		"--output=/tmp/o":        "--output is refused",
		"--error=/tmp/e":         "--error is refused",
		"--input=/tmp/i":         "--input is refused",
		"--chdir=/tmp":           "--chdir is refused",
		"--job-name=x":           "--job-name is refused",
		"--cpus-per-task=2":      "--cpus-per-task is refused",
		"--mem=4G":               "--mem is refused",
		"--mem-per-cpu=1G":       "--mem-per-cpu is refused",
		"--mem-per-gpu=1G":       "--mem-per-gpu is refused",
		"--nodes=2":              "--nodes is refused",
		"--ntasks=2":             "--ntasks is refused",
		"--ntasks-per-node=2":    "--ntasks-per-node is refused",
		"--parsable":             "--parsable is refused",
		"--wrap=id":              "--wrap is refused",
		"--array=1-3":            "--array is refused",
		"--get-user-env":         "--get-user-env is refused",
		"--wait":                 "--wait is refused",
		"--hold":                 "--hold is refused",
		"--requeue":              "--requeue is refused",
		"--quiet":                "hides the job id",
		"--test-only":            "--test-only is refused",
		"--clusters=other":       "default cluster",
		"--uid=0":                "--uid is refused",
		"--comment=x":            "--comment is refused",
		"--partition=p":          "slurm block's partition",
		"--time=10":              "slurm block's time_limit",
		"--constraint=kvm":       "slurm block's constraint",
		"--help":                 "submits no job",
		"--version":              "submits no job",
		"--partition":            "slurm block's partition",
		"--exp":                  "--exp abbreviates --export",
		"--outp=/tmp/x":          "--outp abbreviates --output",
		"--wr=id":                "--wr abbreviates --wrap",
		"--e=x":                  "abbreviates",
		"--mem-per-c=1G":         "abbreviates --mem-per-cpu",
		"--get-u":                "abbreviates --get-user-env",
		"--ho":                   "abbreviates --hold",
		"--parsab":               "abbreviates --parsable",
		"--cpus-per-t=2":         "abbreviates --cpus-per-task",
		"--ch=/":                 "abbreviates --chdir",
		"--tim=5":                "abbreviates --time",
		"--arr=1":                "abbreviates --array",
		"--clu=x":                "abbreviates --clusters",
		"--export-f=/x":          "abbreviates --export-file",
		"--qo=x":                 "abbreviates --qos",
		"--q":                    "abbreviates --qos",
		"--u":                    "abbreviates --uid",
		// Not a long option, or not an option name.
		"-D/tmp":          "not a long option",
		"-p":              "not a long option",
		"partition=p":     "not a long option",
		"":                "not a long option",
		"--":              "not an sbatch option name",
		"--=x":            "not an sbatch option name",
		"---export":       "not an sbatch option name",
		"--Export=ALL":    "not an sbatch option name",
		"--exclusive ":    "not an sbatch option name",
		"--gres =gpu":     "not an sbatch option name",
		"--gr\u00e9s=gpu": "not an sbatch option name",
		// Odd bytes anywhere.
		"--gres=gpu\x00":           "NUL",
		"--gres=gpu\n--export=ALL": "newline",
		"--gres=gpu\r":             "newline",
		"--mail-user=a\tb":         "control character",
		"--mail-user=\x1b[31m":     "control character",
		"--mail-user=\u0085":       "control character",
		"--mail-user=\xff":         "not valid UTF-8",
		"--mail-user=" + strings.Repeat("x", maxExtraArg): "longer than 4096",
	}
	for arg, want := range cases {
		err := (Settings{ExtraArgs: []string{"--exclusive", arg}}).Validate()
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: got %v, want an error with %q", arg, err, want)
			continue
		}
		if !strings.Contains(err.Error(), "extra_args") || strings.ContainsAny(err.Error(), "\n\x00\x1b") {
			t.Errorf("%q: error is not one clean line naming extra_args: %q", arg, err)
		}
	}
}

func TestNoAllowedOptionIsRefusedByAbbreviation(t *testing.T) {
	// sbatch 22.05's long options that fleet leaves to the user: none may
	// be a prefix of a refused option, or the prefix rule would refuse it.
	allowed := []string{
		"account-x", "acctg-freq", "batch", "bb", "bbf", "begin", "cluster-x", "container", "contiguous",
		"core-spec", "cores-per-socket", "cpu-freq", "cpus-per-gpu", "deadline", "delay-boot", "dependency",
		"distribution", "exclude", "exclusive", "extra-node-info", "gpu-bind", "gpu-freq", "gpus",
		"gpus-per-node", "gpus-per-socket", "gpus-per-task", "gres", "gres-flags", "hint", "ignore-pbs",
		"kill-on-invalid-dep", "licenses", "mail-type", "mail-user", "mcs-label", "mem-bind", "mincpus",
		"network", "nice", "no-kill", "nodefile", "nodelist", "ntasks-per-core",
		"ntasks-per-socket", "open-mode", "overcommit", "oversubscribe", "power", "prefer", "priority",
		"profile", "propagate", "reboot", "reservation", "signal", "sockets-per-node",
		"spread-job", "switches", "thread-spec", "threads-per-core", "time-min", "tmp", "use-min-nodes",
		"verbose", "wait-all-nodes", "wckey",
	}
	for _, name := range allowed {
		if err := checkExtraArg("--" + name); err != nil {
			t.Errorf("--%s: %v", name, err)
		}
	}
}

func TestParseSbatch(t *testing.T) {
	good := map[string]string{
		"123\n":           "123",
		"123":             "123",
		"7;cluster1\n":    "7",
		"  42 \n":         "42",
		"4294967293\n":    "4294967293",
		"9;my-cl.uster_2": "9",
	}
	for in, want := range good {
		got, err := ParseSbatch(in)
		if err != nil || got != want {
			t.Errorf("ParseSbatch(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	bad := []string{
		"", "\n", "Submitted batch job 123\n", "123_4\n", "123.batch", "123+0", "0", "007", "-1",
		"12a", "123;\n", "123;a b", "123;\x1b[2J", "1\n2\n", "4294967294", "4294967295", "99999999999",
		"１２３", "123;" + strings.Repeat("c", 65), strings.Repeat("1", MaxSbatchOutput+1),
		"sbatch: error: Batch job submission failed: Invalid account\n",
	}
	for _, in := range bad {
		if got, err := ParseSbatch(in); err == nil {
			t.Errorf("ParseSbatch(%q) = %q, want an error", in, got)
		} else if strings.ContainsAny(err.Error(), "\n\x1b") {
			t.Errorf("ParseSbatch(%q): error is not one clean line: %q", in, err)
		}
	}
}

func TestCommandEnv(t *testing.T) {
	in := []string{
		"PATH=/usr/bin", "HOME=/home/u", "SLURM_CONF=/etc/slurm/slurm.conf",
		"SBATCH_EXPORT=ALL", "SBATCH_PARTITION=other", "SLURM_CLUSTERS=c2", "SQUEUE_STATES=R",
		"SQUEUE_FORMAT=%j", "SACCT_FORMAT=JobName", "SCANCEL_USER=bob", "SCONTROL_ALL=1",
		"SLURM_SECRET_TOKEN=sk-123", "SALLOC_ACCOUNT=x", "SRUN_EXPORT_ENV=ALL", "SINFO_FORMAT=%N",
		"ANTHROPIC_API_KEY=sk-ant", "TERM=xterm", "SLURM_CONF_OUT=1",
	}
	got := CommandEnv(in)
	want := []string{"PATH=/usr/bin", "HOME=/home/u", "SLURM_CONF=/etc/slurm/slurm.conf", "ANTHROPIC_API_KEY=sk-ant", "TERM=xterm"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("CommandEnv = %q, want %q", got, want)
	}
}

func TestArgListsNeverReachOtherJobs(t *testing.T) {
	cases := []struct {
		got, want []string
	}{
		{SqueueArgs([]string{"1", "22"}), []string{"--noheader", "--states=all", "--jobs=1,22", "--format=%i|%T|%r|%N"}},
		{SqueueArgs(nil), []string{"--noheader", "--states=all", "--jobs=0", "--format=%i|%T|%r|%N"}},
		{SqueueArgs([]string{"1", "-u", "2,3"}), []string{"--noheader", "--states=all", "--jobs=1,0,0", "--format=%i|%T|%r|%N"}},
		{SacctArgs([]string{"5"}), []string{"--noheader", "--parsable2", "--allocations", "--jobs=5", "--format=JobID,State,NodeList,ExitCode,Reason"}},
		{SacctArgs([]string{""}), []string{"--noheader", "--parsable2", "--allocations", "--jobs=0", "--format=JobID,State,NodeList,ExitCode,Reason"}},
		{ScancelArgs("17"), []string{"17"}},
		{ScancelArgs("--user=bob"), []string{"0"}},
		{ScancelArgs(""), []string{"0"}},
		{ScontrolJobArgs("3"), []string{"--oneliner", "show", "job", "3"}},
		{ScontrolJobArgs("3 4"), []string{"--oneliner", "show", "job", "0"}},
	}
	for _, c := range cases {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("got %q, want %q", c.got, c.want)
		}
	}
	if got, err := ScontrolNodeArgs("n1"); err != nil || !reflect.DeepEqual(got, []string{"--oneliner", "show", "node", "n1"}) {
		t.Errorf("ScontrolNodeArgs(n1) = %q, %v", got, err)
	}
	for _, bad := range []string{"", "-n1", "n[1-2]", "n1,n2", "n 1", "n1\n"} {
		if got, err := ScontrolNodeArgs(bad); err == nil {
			t.Errorf("ScontrolNodeArgs(%q) = %q, want an error", bad, got)
		}
	}
}
