package session

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The guest programs run here for real, against a temporary home.

func guestHome(t *testing.T) (home, dir string) {
	if _, err := exec.LookPath("perl"); err != nil {
		t.Skip("no perl")
	}
	home = t.TempDir()
	dir = filepath.Join(home, Dir)
	os.MkdirAll(dir, 0o700)
	return home, dir
}

func runGuest(t *testing.T, home, script, stdin string) string {
	t.Helper()
	cmd := exec.Command("sh", "-c", script)
	cmd.Env = []string{"HOME=" + home, "PATH=" + os.Getenv("PATH")}
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	return string(out)
}

func snapshot(t *testing.T, home string) Status {
	t.Helper()
	st, err := ParseStatus([]byte(runGuest(t, home, StatusScript(), "")))
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func hook(t *testing.T, home, event, input string) {
	t.Helper()
	runGuest(t, home, "set -e\n"+installHook, "")
	runGuest(t, home, `exec "$HOME/`+HookFile+`" `+event, input)
}

// liveAgent is a process whose command line names run.sh, as the
// session's is.
func liveAgent(t *testing.T, dir string) {
	p := exec.Command("sh", "-c", "sleep 60", "run.sh")
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Process.Kill(); p.Wait() })
	os.WriteFile(filepath.Join(dir, "pid"), []byte(strconv.Itoa(p.Process.Pid)+"\n"), 0o600)
}

func start(dir string, ago time.Duration) {
	os.WriteFile(filepath.Join(dir, "task"), []byte("do it"), 0o600)
	os.WriteFile(filepath.Join(dir, "started"), []byte(strconv.FormatInt(time.Now().Add(-ago).Unix(), 10)+"\n"), 0o600)
}

func TestSnapshotStates(t *testing.T) {
	home, dir := guestHome(t)
	if st := snapshot(t, home); st.State != Idle {
		t.Fatalf("no task: %+v", st)
	}
	start(dir, 0)
	if st := snapshot(t, home); st.State != Working {
		t.Fatalf("a task just uploaded, its run.sh not yet started: %+v", st)
	}
	start(dir, time.Minute)
	old := time.Now().Add(-2 * time.Minute)
	os.Chtimes(filepath.Join(dir, "task"), old, old)
	if st := snapshot(t, home); st.State != Lost || st.ElapsedSec < 59 {
		t.Fatalf("a task that never started: %+v", st)
	}
	liveAgent(t, dir)
	if st := snapshot(t, home); st.State != Working {
		t.Fatalf("live: %+v", st)
	}
	// A pid that now belongs to some other process is not the agent.
	os.WriteFile(filepath.Join(dir, "pid"), []byte(strconv.Itoa(os.Getpid())), 0o600)
	if st := snapshot(t, home); st.State != Lost {
		t.Fatalf("a recycled pid: %+v", st)
	}
	os.WriteFile(filepath.Join(dir, "exit"), []byte("3\n"), 0o600)
	ended := time.Now().Add(-30 * time.Second)
	os.Chtimes(filepath.Join(dir, "exit"), ended, ended)
	st := snapshot(t, home)
	if st.State != Failed || st.ExitCode != 3 || st.ElapsedSec < 29 || st.ElapsedSec > 32 {
		t.Fatalf("exit 3 thirty seconds after a start a minute ago: %+v", st)
	}
	// A garbled exit file is a failure that says so (a waiter ends), not
	// an error a waiter polls forever, and never a success.
	os.WriteFile(filepath.Join(dir, "exit"), []byte("0; rm -rf /\n"), 0o600)
	st, err := ParseStatus([]byte(runGuest(t, home, StatusScript(), "")))
	if err != nil || st.State != Failed || st.ExitCode == 0 || !strings.Contains(st.Message, "unreadable") || strings.ContainsAny(st.Message, "\n") {
		t.Fatalf("a garbled exit file: %+v %v", st, err)
	}
}

// The exit status a guest reports cannot pass for success unless it is a
// clean 0, through the guest program or around it.
func TestExitStatusCannotBeForged(t *testing.T) {
	for _, tc := range []struct {
		file  string // the exit file's bytes
		state State
		code  int
	}{
		{"0\n", Succeeded, 0},
		{"0", Succeeded, 0},
		{"1\n", Failed, 1},
		{"137\n", Failed, 137},
		{"256\n", Failed, 256},
		{"-1\n", Failed, unreadableExit},
		{"-0\n", Failed, unreadableExit},
		{"+0\n", Failed, unreadableExit},
		{"1e9\n", Failed, unreadableExit},
		{"0x1\n", Failed, unreadableExit},
		{"0x0\n", Failed, unreadableExit},
		{"00\n", Failed, unreadableExit},
		{" 0\n", Failed, unreadableExit},
		{"\t0\n", Failed, unreadableExit},
		{"0 1\n", Failed, unreadableExit},
		{"99999999999999999999\n", Failed, unreadableExit},
		{"4294967296\n", Failed, 4294967296}, // failed: clamped where it becomes an exit status
		{"0\x00\n", Failed, unreadableExit},
		{"\xd9\xa0\n", Failed, unreadableExit}, // an Arabic-Indic zero
		{"\n", Failed, unreadableExit},
	} {
		// As the guest program reads it (the agent's own file).
		home, dir := guestHome(t)
		start(dir, 0)
		os.WriteFile(filepath.Join(dir, "exit"), []byte(tc.file), 0o600)
		st, err := ParseStatus([]byte(runGuest(t, home, StatusScript(), "")))
		if err != nil || st.State != tc.state || st.ExitCode != tc.code {
			t.Errorf("exit file %q: %+v %v, want %s %d", tc.file, st, err, tc.state, tc.code)
		}
		// As a guest that is not running the program may send it.
		v := strings.TrimRight(tc.file, "\n")
		st, err = ParseStatus([]byte("started=1\nnow=2\nexit=" + v + "\n.\n"))
		if err != nil || st.State != tc.state || st.ExitCode != tc.code {
			t.Errorf("exit=%q: %+v %v, want %s %d", v, st, err, tc.state, tc.code)
		}
	}
	// Two exit lines: the program prints one, so this is not it.
	st, err := ParseStatus([]byte("started=1\nnow=2\nexit=1\nexit=0\n.\n"))
	if err != nil || st.State != Failed || st.ExitCode == 0 {
		t.Fatalf("two exit lines: %+v %v", st, err)
	}
}

func TestHooksSayWaitingAndTheToolUsed(t *testing.T) {
	home, dir := guestHome(t)
	start(dir, 0)
	liveAgent(t, dir)
	hook(t, home, HookTool, `{"session_id":"s","hook_event_name":"PostToolUse","tool_name":"Bash","tool_input":{"command":"echo \"tool_name\":\"Fake\""}}`)
	if st := snapshot(t, home); st.State != Working || st.Tool != "Bash" {
		t.Fatalf("after a tool: %+v", st)
	}
	// The message arrives JSON-escaped, with an escape sequence inside.
	hook(t, home, HookNotification, `{"hook_event_name":"Notification","message":"Claude needs your permission to use \"Bash\" \u001b[2J\u001b]0;pwned\u0007 now"}`)
	st := snapshot(t, home)
	if st.State != Waiting || st.Tool != "Bash" || strings.ContainsAny(st.Message, "\x1b\x07") ||
		!strings.HasPrefix(st.Message, `Claude needs your permission to use "Bash"`) {
		t.Fatalf("waiting: %+v", st)
	}
	hook(t, home, HookPrompt, `{}`)
	if st := snapshot(t, home); st.State != Working || st.Message != "" {
		t.Fatalf("after the answer: %+v", st)
	}
	// A turn that just ended is not a question yet; one that ended a
	// while ago, with the agent still there, is.
	hook(t, home, HookStop, `{}`)
	if st := snapshot(t, home); st.State != Working {
		t.Fatalf("just stopped: %+v", st)
	}
	old := "event=stop\nat=" + strconv.FormatInt(time.Now().Unix()-5, 10) + "\n"
	os.WriteFile(filepath.Join(dir, "agent"), []byte(old), 0o600)
	if st := snapshot(t, home); st.State != Waiting || st.Message == "" {
		t.Fatalf("stopped for a while: %+v", st)
	}
	// The agent owns its files: what it writes there is never more than
	// a hook field.
	os.WriteFile(filepath.Join(dir, "agent"), []byte("exit=0\nevent=notification\nalive=0\nstarted=1\ntool=zz\n"), 0o600)
	st = snapshot(t, home)
	if st.State != Waiting || st.ExitCode != 0 || st.ElapsedSec > 5 || st.Tool != "" {
		t.Fatalf("forged fields: %+v", st)
	}
}

func TestSnapshotLastLineIsRenderedAndClean(t *testing.T) {
	home, dir := guestHome(t)
	start(dir, 0)
	liveAgent(t, dir)
	log := "step 1\n" +
		`{"type":"assistant","message":{"content":[{"type":"tool_use","name":"Bash","input":{"command":"make test"}}]}}` + "\n" +
		"\x1b[31mred\x1b[0m \x9b2J\xff bad\n" +
		"== fleet: agent exited with status 0\n\n"
	os.WriteFile(filepath.Join(dir, "log"), []byte(log), 0o600)
	if st := snapshot(t, home); st.LastLine != `\e[31mred\e[0m \x9b2J\xff bad` {
		t.Fatalf("last line %q", st.LastLine)
	}
	os.WriteFile(filepath.Join(dir, "log"), []byte(log[:strings.Index(log, "\x1b")]+"\n"+result+"\n"), 0o600)
	st := snapshot(t, home)
	if st.LastLine != "→ Bash make test" || st.Turns != 4 || st.CostUSD != 0.0123 {
		t.Fatalf("rendered %+v", st)
	}
	// A huge line is cut in the guest and again here.
	os.WriteFile(filepath.Join(dir, "log"), []byte(strings.Repeat("é", 1<<20)+"\n"), 0o600)
	if st := snapshot(t, home); len([]rune(st.LastLine)) > 301 {
		t.Fatalf("%d runes", len([]rune(st.LastLine)))
	}
}

func TestWatchReportsChanges(t *testing.T) {
	home, dir := guestHome(t)
	start(dir, 0)
	liveAgent(t, dir)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", "-c", WatchScript())
	cmd.Env = []string{"HOME=" + home, "PATH=" + os.Getenv("PATH")}
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer cancel()
	steps := []func(){
		func() { os.WriteFile(filepath.Join(dir, "log"), []byte("compiling\n"), 0o600) },
		func() { hook(t, home, HookNotification, `{"message":"need input"}`) },
		func() { os.WriteFile(filepath.Join(dir, "exit"), []byte("0\n"), 0o600) },
	}
	want := []func(Status) bool{
		func(s Status) bool { return s.State == Working },
		func(s Status) bool { return s.LastLine == "compiling" },
		func(s Status) bool { return s.State == Waiting && s.Message == "need input" },
		func(s Status) bool { return s.State == Succeeded },
	}
	i := 0
	ReadSnapshots(bufio.NewReader(out), func(s Status, err error) bool {
		if err != nil {
			t.Fatal(err)
		}
		if want[i](s) {
			if i == len(steps) {
				i++
				return false
			}
			steps[i]()
			i++
		}
		return true
	})
	if i != len(want) {
		t.Fatalf("the watch stopped after %d of %d changes", i, len(want))
	}
}

func TestCleanMakesGuestTextSafe(t *testing.T) {
	for in, want := range map[string]string{
		"plain":               "plain",
		"a\x1b[2Jb":           `a\e[2Jb`,
		"tab\tand\nnewline\r": "tab and newline",
		"\u202eevil":          `\u202eevil`,
		string([]byte{0xff}):  `\xff`,
		"\u009b1m":            `\x9b1m`,
		"\x9b1m":              `\x9b1m`,
		"\x1b]0;pwned\a":      `\e]0;pwned\x07`,
	} {
		if got := Clean(in, 100); got != want {
			t.Errorf("%q: %q, want %q", in, got, want)
		}
	}
	if got := Clean(strings.Repeat("x", 50), 10); got != strings.Repeat("x", 10)+"…" {
		t.Errorf("cut: %q", got)
	}
	_ = hex.EncodeToString
}

// A guest that is not running the program (the agent has sudo) can send
// anything: a flood of lines, or of snapshots, is cut, not buffered.
func TestReadSnapshotsBoundsALyingGuest(t *testing.T) {
	flood := "started=1\nnow=2\nalive=1\n" + strings.Repeat("last=41\n", 100000) + ".\n"
	n := 0
	err := ReadSnapshots(strings.NewReader(flood), func(Status, error) bool { n++; return true })
	if err == nil || n != 0 {
		t.Fatalf("a flood of lines: %d snapshots, %v", n, err)
	}
	huge := "started=1\nnow=2\nlast=" + strings.Repeat("41", 2<<20) + "\n.\n"
	if err := ReadSnapshots(strings.NewReader(huge), func(Status, error) bool { return true }); err == nil {
		t.Fatal("a 4 MiB line was read")
	}
	// Many well-formed snapshots are each delivered; the reader stops when
	// told to.
	many := strings.Repeat("started=1\nnow=2\nexit=0\n.\n", 1000)
	n = 0
	ReadSnapshots(strings.NewReader(many), func(s Status, err error) bool { n++; return n < 10 })
	if n != 10 {
		t.Fatalf("%d snapshots after stopping at 10", n)
	}
	// Values that are not hex, and keys that are not the program's, are
	// nothing.
	st, err := ParseStatus([]byte("started=1\nnow=5\nalive=1\nlast=zz\nhook_tool=\x1b[2J\ncommits=-1\nfiles=9\nevil=1\n.\n"))
	if err != nil || st.State != Working || st.LastLine != "" || st.Tool != "" || st.Commits != nil {
		t.Fatalf("%+v %v", st, err)
	}
}

// flood is a guest stream that never ends a line: it counts what the host
// took from it, and gives up (an error) after limit bytes, so a reader
// that would hold it all fails the test instead of the machine.
type flood struct{ read, limit int64 }

func (f *flood) Read(p []byte) (int, error) {
	if f.read >= f.limit {
		return 0, errors.New("read past the bound")
	}
	for i := range p {
		p[i] = 'A'
	}
	f.read += int64(len(p))
	return len(p), nil
}

func TestReadSnapshotsStopsAnEndlessLine(t *testing.T) {
	f := &flood{limit: 64 << 20}
	err := ReadSnapshots(io.MultiReader(strings.NewReader("started=1\nlast="), f), func(Status, error) bool { return true })
	if err == nil || strings.Contains(err.Error(), "past the bound") {
		t.Fatalf("an endless line: %v", err)
	}
	if f.read > 2*maxSnapshotLine {
		t.Fatalf("read %d bytes of one line (the bound is %d)", f.read, maxSnapshotLine)
	}
}
