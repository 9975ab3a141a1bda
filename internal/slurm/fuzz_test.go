package slurm

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// checkJob asserts what every parser promises of a job it returns.
func checkJob(t *testing.T, in string, j JobInfo) {
	t.Helper()
	if ValidateJobID(j.ID) != nil {
		t.Fatalf("%q: bad id %q", in, j.ID)
	}
	if j.State.Class() == 0 {
		t.Fatalf("%q: state %q has no class", in, j.State)
	}
	if j.Node != "" && !nodeName.MatchString(j.Node) {
		t.Fatalf("%q: bad node %q", in, j.Node)
	}
	if j.ExitCode != "" {
		if _, err := parseExitCode(j.ExitCode); err != nil {
			t.Fatalf("%q: bad exit code %q", in, j.ExitCode)
		}
	}
	checkShown(t, in, j.Reason, maxReasonLen)
	checkShown(t, in, j.Phrase(), 1024)
}

// checkShown asserts s is fit to show: bounded, valid UTF-8, no control.
func checkShown(t *testing.T, in, s string, max int) {
	t.Helper()
	if len(s) > max || !utf8.ValidString(s) {
		t.Fatalf("%q: unbounded or invalid %q", in, s)
	}
	for _, r := range s {
		if r < 0x20 || (r >= 0x7f && r <= 0x9f) || (r >= 0x202a && r <= 0x202e) || (r >= 0x2066 && r <= 0x2069) {
			t.Fatalf("%q: control %U in %q", in, r, s)
		}
	}
}

func FuzzParseSqueue(f *testing.F) {
	f.Add(squeueOut)
	f.Add("1|RUNNING|a|b|n1\n1|PD||\r\n")
	f.Add("5|PENDING|(ReqNodeNotAvail, UnavailableNodes:n1)|\n")
	f.Add("2|R|\x1b[2J\u202e\xff|n2\n")
	f.Fuzz(func(t *testing.T, in string) {
		jobs, err := ParseSqueue(in)
		if err != nil {
			checkShown(t, in, err.Error(), 1024)
			return
		}
		if len(jobs) > strings.Count(in, "\n")+1 {
			t.Fatalf("%q: %d jobs from fewer lines", in, len(jobs))
		}
		for _, j := range jobs {
			checkJob(t, in, j)
		}
	})
}

func FuzzParseSacct(f *testing.F) {
	f.Add(sacctOut)
	f.Add("1|CANCELLED by 1000|None assigned|0:0|a|b\n")
	f.Add("1|OUT_OF_ME+|n1|0:125|None\n")
	f.Fuzz(func(t *testing.T, in string) {
		jobs, err := ParseSacct(in)
		if err != nil {
			checkShown(t, in, err.Error(), 1024)
			return
		}
		for _, j := range jobs {
			checkJob(t, in, j)
		}
	})
}

func FuzzParseScontrolJob(f *testing.F) {
	f.Add(scontrolJob)
	f.Add(scontrolPending)
	f.Add("JobId=1 JobState=RUNNING NodeList=n1 Comment=a b=c JobState=PENDING")
	f.Fuzz(func(t *testing.T, in string) {
		j, err := ParseScontrolJob(in)
		if err != nil {
			checkShown(t, in, err.Error(), 1024)
			return
		}
		checkJob(t, in, j)
	})
}

func FuzzParseNodeAddr(f *testing.F) {
	f.Add(scontrolNode)
	f.Add("NodeName=n1 NodeAddr=fd00::2")
	f.Add("NodeName=n1 NodeAddr=-oProxyCommand=x")
	f.Fuzz(func(t *testing.T, in string) {
		addr, err := ParseNodeAddr(in)
		if err != nil {
			checkShown(t, in, err.Error(), 1024)
			return
		}
		if addr == "" || len(addr) > 253 || strings.HasPrefix(addr, "-") || strings.ContainsAny(addr, " \t\n\r\x00%;/") {
			t.Fatalf("%q: bad address %q", in, addr)
		}
		checkShown(t, in, addr, 253)
	})
}

func FuzzParseSbatch(f *testing.F) {
	f.Add("123\n")
	f.Add("123;cluster\n")
	f.Add("123_4\n")
	f.Fuzz(func(t *testing.T, in string) {
		id, err := ParseSbatch(in)
		if err != nil {
			checkShown(t, in, err.Error(), 1024)
			return
		}
		if ValidateJobID(id) != nil {
			t.Fatalf("%q: bad id %q", in, id)
		}
	})
}

func FuzzParseState(f *testing.F) {
	for _, s := range States() {
		f.Add(string(s))
		f.Add(s.Short())
	}
	f.Add("CANCELLED by 1000")
	f.Add("OUT_OF_ME+")
	f.Fuzz(func(t *testing.T, in string) {
		s, err := ParseState(in)
		if err != nil {
			checkShown(t, in, err.Error(), 256)
			return
		}
		if s.Class() == 0 {
			t.Fatalf("%q: state %q has no class", in, s)
		}
	})
}

// Whatever settings pass Validate, sbatch's arguments hold no control
// character, and each extra argument is a long option.
func FuzzSbatchArgs(f *testing.F) {
	f.Add("debug", "1-0", "--gres=gpu:1", "fleet-p-1", "comment", 2, 2048, 0)
	f.Add("a b", "1:2:3:4", "--exp", "-x", "\n", 0, 0, -1)
	f.Add("p", "UNLIMITED", "--wr=sh", "j", "", 1, 64, 65536)
	f.Fuzz(func(t *testing.T, part, limit, extra, name, comment string, cpus, mem, overhead int) {
		s := Settings{Partition: part, TimeLimit: limit, ExtraArgs: []string{extra}, MemoryOverheadMiB: overhead}
		args, err := SbatchArgs(s, Job{Name: name, CPUs: cpus, MemoryMiB: mem, Comment: comment})
		if err != nil {
			checkShown(t, part, err.Error(), 1024)
			return
		}
		for _, a := range args {
			if !strings.HasPrefix(a, "--") || checkText(a) != nil {
				t.Fatalf("bad argument %q", a)
			}
		}
		if args[0] != "--parsable" || !strings.HasPrefix(args[1], "--job-name=") || args[6] != "--export=NONE" {
			t.Fatalf("fixed arguments moved: %q", args)
		}
		for _, r := range refusedOptions {
			if strings.HasPrefix(extra, "--"+r.name+"=") || extra == "--"+r.name {
				t.Fatalf("refused option %q passed", extra)
			}
		}
	})
}
