package session

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/agentfleet/agentfleet/internal/execx"
	"github.com/agentfleet/agentfleet/internal/termsafe"
)

// An agent's state is read by one perl program in the guest (perl-base is
// essential on Debian and Ubuntu, and one process costs far less than the
// dozen a shell script would exec under software emulation). Once, it
// prints one snapshot (fleet ls, fleet wait); watching, it checks the
// session's files four times a second and prints a snapshot when one
// changes and every second regardless, over the kept SSH connection
// (fleet top, fleet events). Every string that comes from the agent
// (log lines, hook fields) is hex-encoded, so none can break the line
// protocol, and the host cleans it again before showing it: the guest is
// never trusted to be well-formed.
//
// A snapshot is key=value lines ending with a line holding only ".".

// watchProgram is the guest side. ARGV[0] is "once" or "watch".
const watchProgram = `
use strict; use warnings;
my $mode = shift // 'once';
my $d = "$ENV{HOME}/.fleet/session";
my ($off, $ino, $result, @last) = (0, -1, '');
my ($commits, $files, $gitat, $gitsig) = (-1, -1, 0, '');
$| = 1;
sub rd { my $p = shift; open(my $f, '<', $p) or return undef; local $/; my $s = <$f>; close $f;
  $s = '' unless defined $s; $s =~ s/\s+\z//; return substr($s, 0, 4096) }
sub hx { unpack('H*', $_[0]) }
sub scanlog {
  my @st = stat("$d/log");
  unless (@st) { ($off, $ino, $result, @last) = (0, -1, ''); return }
  if ($st[1] != $ino || $st[7] < $off) { ($off, $ino, $result, @last) = (0, $st[1], '') }
  return if $st[7] == $off;
  my $start = $off; my $skip = 0;
  if ($st[7] - $off > 1048576) { $start = $st[7] - 1048576; $skip = 1 }
  open(my $f, '<', "$d/log") or return;
  seek($f, $start, 0); my $buf = ''; read($f, $buf, $st[7] - $start); close $f;
  my $nl = rindex($buf, "\n"); return if $nl < 0;
  $off = $start + $nl + 1;
  my @lines = split(/\n/, substr($buf, 0, $nl));
  shift @lines if $skip;
  for my $l (@lines) {
    next if $l =~ /^\s*$/;
    if ($l =~ /^\{"type":"result"/) { $result = substr($l, 0, 262144); next }
    next if $l =~ /^== fleet: /;
    push @last, substr($l, 0, 8192); shift @last while @last > 5;
  }
}
sub git {
  return unless -d '/workspace/.git';
  my $g = 'git -C /workspace -c core.fsmonitor=false -c core.hooksPath=/dev/null';
  my $c = ` + "`$g rev-list --count refs/fleet/start..HEAD 2>/dev/null`" + `;
  $commits = ($c =~ /^(\d+)/) ? $1 : -1;
  my @f = split(/\0/, ` + "`$g diff -z --name-only refs/fleet/start 2>/dev/null; $g ls-files -z --others --exclude-standard 2>/dev/null`" + `);
  $files = $commits < 0 ? -1 : scalar(@f);
}
sub snapshot {
  return "state=idle\n.\n" unless -e "$d/task";
  my @o = ('started=' . (rd("$d/started") // ''), 'now=' . time);
  my $pid = rd("$d/pid");
  if (defined $pid && $pid =~ /^\d+$/) {
    my $cmd = rd("/proc/$pid/cmdline");
    push @o, 'alive=1' if defined $cmd && $cmd =~ /run\.sh/;
  }
  # Between the task's upload and run.sh writing its pid, the session is
  # starting, not lost.
  if (!defined $pid) { my @t = stat("$d/task"); push @o, 'task_age=' . (time - $t[9]) if @t }
  my $exit = rd("$d/exit");
  if (defined $exit) { push @o, "exit=$exit"; my @st = stat("$d/exit"); push @o, "ended=$st[9]" if @st }
  if (open(my $h, '<', "$d/agent")) {
    while (my $l = <$h>) { push @o, "hook_$1=$2" if $l =~ /^(event|tool|message|at)=([0-9A-Za-z_]{0,1024})$/ }
    close $h;
  }
  scanlog();
  push @o, map { 'last=' . hx($_) } @last;
  push @o, 'result=' . hx($result) if $result ne '';
  push @o, "commits=$commits", "files=$files" if $commits >= 0;
  return join("\n", @o) . "\n.\n";
}
sub sig { join(',', map { my @s = stat("$d/$_"); @s ? "$s[7]:$s[9]" : '-' } qw(task pid exit log agent)) }
if ($mode ne 'watch') { print snapshot(); exit 0 }
my ($prev, $at) = ('', 0);
while (1) {
  my $s = sig();
  # git only after activity, at most every 3 seconds, and once at the end.
  if ($s ne $gitsig && time - $gitat >= 3) { git(); ($gitat, $gitsig) = (time, $s) }
  my $k = "$s|$commits|$files";
  if ($k ne $prev || time - $at >= 1) { print snapshot() or exit 0; ($prev, $at) = ($k, time) }
  select(undef, undef, undef, 0.25);
}
`

// StatusScript prints one snapshot of the session (fleet ls, wait).
func StatusScript() string { return programScript("once") }

// WatchScript prints a snapshot whenever the session changes, and every
// second, until the connection closes (fleet top, events).
func WatchScript() string { return programScript("watch") }

func programScript(mode string) string {
	return "exec perl -e " + execx.ShellQuote(watchProgram) + " " + mode + "\n"
}

// hookProgram is ~/.fleet/hook, which the image's Claude Code settings run
// on Notification, Stop, PostToolUse and UserPromptSubmit with the event
// as its argument and Claude's JSON on stdin. It keeps the agent's last
// event, tool and message in the session's agent file. Any other agent
// can run it too (echo '{"message":"..."}' | ~/.fleet/hook notification).
const hookProgram = `#!/usr/bin/perl
use strict; use warnings;
my $ev = shift // ''; exit 0 unless $ev =~ /^[a-z_]{1,32}$/;
my $d = "$ENV{HOME}/.fleet/session"; exit 0 unless -d $d;
my $in = ''; read(STDIN, $in, 1048576);
my ($tool) = $in =~ /"tool_name"\s*:\s*"((?:[^"\\]|\\.){0,200})"/;
my ($msg) = $in =~ /"message"\s*:\s*"((?:[^"\\]|\\.){0,500})"/;
unless (defined $tool) {
  if (open(my $o, '<', "$d/agent")) { while (<$o>) { $tool = pack('H*', $1) if /^tool=([0-9a-f]*)$/ } close $o }
}
open(my $f, '>', "$d/agent.tmp") or exit 0;
print $f "event=$ev\nat=", time, "\n";
print $f 'tool=', unpack('H*', $tool), "\n" if defined $tool;
print $f 'message=', unpack('H*', $msg), "\n" if defined $msg && $ev eq 'notification';
close $f; rename("$d/agent.tmp", "$d/agent");
exit 0;
`

// HookFile is the hook program's path under the agent's home.
const HookFile = ".fleet/hook"

// Hook events the image's Claude Code settings report.
const (
	HookNotification = "notification" // Claude needs permission or input
	HookStop         = "stop"         // a turn ended
	HookTool         = "tool"         // a tool call finished (PostToolUse)
	HookPrompt       = "prompt"       // the user answered (UserPromptSubmit)
)

// waitingAfterStop is how long a live agent must stay stopped after a
// turn before it counts as waiting: a headless agent stops and exits
// within a moment, and that is no question for the user.
const waitingAfterStop = 2

// startingFor is how long a session may be uploaded but not yet running
// before it counts as lost.
const startingFor = 60

// ParseStatus reads one snapshot.
func ParseStatus(out []byte) (Status, error) {
	var st Status
	var err error
	n := 0
	err2 := ReadSnapshots(bytes.NewReader(out), func(s Status, e error) bool {
		st, err, n = s, e, n+1
		return false
	})
	if n == 0 {
		if err2 != nil {
			return Status{}, err2
		}
		return Status{}, errors.New("unreadable session state")
	}
	return st, err
}

// ReadSnapshots calls fn with each snapshot r carries until fn returns
// false or r ends. A line longer than the program ever prints ends it
// with an error: a guest that floods gets nothing more read.
func ReadSnapshots(r io.Reader, fn func(Status, error) bool) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxSnapshotLine)
	kv := map[string][]string{}
	lines, size := 0, 0
	for sc.Scan() {
		line := sc.Text()
		if line == "." {
			st, err := statusOf(kv)
			if !fn(st, err) {
				return nil
			}
			kv, lines, size = map[string][]string{}, 0, 0
			continue
		}
		// The program prints about 20 lines; a guest that sends more is
		// not running it, and is not read further.
		if lines, size = lines+1, size+len(line); lines > maxSnapshotLines || size > maxSnapshotBytes {
			return errors.New("the guest's agent snapshot is too large")
		}
		if k, v, ok := strings.Cut(line, "="); ok {
			kv[k] = append(kv[k], v)
		}
	}
	return sc.Err()
}

// Bounds of one snapshot: the program's own are 5 log lines of 8 KiB
// (16 KiB in hex) and a result line of 256 KiB (512 KiB in hex).
const (
	maxSnapshotLine  = 1 << 20
	maxSnapshotLines = 64
	maxSnapshotBytes = 1 << 20
)

// statusOf turns a snapshot's fields into a Status.
func statusOf(kv map[string][]string) (Status, error) {
	get := func(k string) string {
		if v := kv[k]; len(v) > 0 {
			return v[len(v)-1]
		}
		return ""
	}
	num := func(k string) int64 { n, _ := strconv.ParseInt(strings.TrimSpace(get(k)), 10, 64); return n }
	if get("state") == "idle" {
		return Status{State: Idle}, nil
	}
	if _, ok := kv["started"]; !ok {
		return Status{}, errors.New("unreadable session state")
	}
	var s Status
	started, now := num("started"), num("now")
	end := now
	if e := num("ended"); e > 0 {
		end = e
	}
	if started > 0 && end >= started {
		s.ElapsedSec = end - started
	}
	hookAt := num("hook_at")
	switch code, hasExit := kv["exit"]; {
	case hasExit:
		// Anything but one clean number is a failure, never a success:
		// " 0", "0x0", "-0", "1e9" and two exit lines all fail.
		n, ok := ParseExitCode(code)
		s.ExitCode, s.State = n, Succeeded
		if !ok {
			s.Message = `unreadable exit status "` + Clean(code[len(code)-1], 20) + `"`
		}
		if n != 0 || !ok {
			s.State = Failed
		}
	case get("alive") == "1":
		s.State = Working
		switch get("hook_event") {
		case HookNotification:
			s.State = Waiting
		case HookStop:
			if now-hookAt >= waitingAfterStop {
				s.State = Waiting
			}
		}
	case kv["task_age"] != nil && num("task_age") < startingFor:
		s.State = Working // starting
	default:
		s.State = Lost
	}
	s.Tool = Clean(unhex(get("hook_tool")), 60)
	if s.State == Waiting {
		s.Message = Clean(jsonText(unhex(get("hook_message"))), 200)
		if s.Message == "" && get("hook_event") == HookStop {
			s.Message = "the turn ended; the agent waits for a prompt"
		}
	}
	for i := len(kv["last"]) - 1; i >= 0 && s.LastLine == ""; i-- {
		line := unhex(kv["last"][i])
		if strings.HasPrefix(line, "{") {
			if !json.Valid([]byte(line)) {
				continue // cut in the guest: an earlier line says more
			}
			line = Render(line)
		}
		s.LastLine = Clean(line, 300)
	}
	if r := unhex(get("result")); r != "" {
		if ev, ok := parseEvent([]byte(r)); ok {
			s.Turns, s.CostUSD = ev.NumTurns, ev.TotalCostUSD
		}
	}
	if _, ok := kv["commits"]; ok && num("commits") >= 0 {
		c, f := int(num("commits")), int(num("files"))
		s.Commits, s.Files = &c, &f
	}
	return s, nil
}

func unhex(s string) string {
	b, err := hex.DecodeString(s)
	if err != nil {
		return ""
	}
	return string(b)
}

// jsonText undoes the JSON string escapes of a value the hook cut out of
// Claude's input.
func jsonText(s string) string {
	var out string
	if json.Unmarshal([]byte(`"`+s+`"`), &out) != nil {
		return s
	}
	return out
}

// unreadableExit is what a failed session reports when its exit file
// holds anything but a clean status: never 0.
const unreadableExit = 255

// ParseExitCode reads an exit file's value(s). ok only for exactly one
// value that is a plain decimal number ("0", "1", "137"): no sign, space,
// leading zero, exponent or base prefix. A value that is not ok reads as
// unreadableExit, so whatever a guest wrote there, only "0" succeeds.
func ParseExitCode(vals []string) (int, bool) {
	if len(vals) != 1 {
		return unreadableExit, false
	}
	v := vals[0]
	if v == "" || len(v) > 10 || (v[0] == '0' && len(v) > 1) {
		return unreadableExit, false
	}
	for i := 0; i < len(v); i++ {
		if v[i] < '0' || v[i] > '9' {
			return unreadableExit, false
		}
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return unreadableExit, false
	}
	return n, true
}

var spaces = strings.NewReplacer("\t", " ", "\n", " ", "\r", " ")

// Clean makes guest text safe for one terminal line (termsafe.Line, with
// tabs and line breaks as spaces) and cuts it to max runes.
func Clean(s string, max int) string {
	s = strings.TrimSpace(termsafe.Line(spaces.Replace(s)))
	if utf8.RuneCountInString(s) <= max {
		return s
	}
	return strings.TrimSpace(string([]rune(s)[:max])) + "…"
}
