package session

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/agentfleet/agentfleet/internal/termsafe/termsafetest"
)

// nasty is a task a shell would love to misread.
const nasty = "fix it: \"quotes\" 'single' $(rm -rf /) `id` $HOME \\ ; & | > < * ?\nline two\tünïcödé 日本\n\n"

// fakeTmux is tmux as LaunchScript uses it: new-session runs the
// command to its end (so the test reads its files after), its pane
// output dropped.
const fakeTmux = `#!/bin/sh
case "$1" in
kill-server) exit 0 ;;
new-session) for a; do last=$a; done; "$last" >/dev/null 2>&1; exit 0 ;;
esac
exit 1
`

// launch plays the VM: LaunchScript with its input, in a temporary home
// with a tmux that runs the session at once.
func launch(t *testing.T, home string, input []byte) ([]byte, error) {
	t.Helper()
	bin := t.TempDir()
	if err := os.WriteFile(filepath.Join(bin, "tmux"), []byte(fakeTmux), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", "-c", LaunchScript())
	cmd.Env = append(os.Environ(), "HOME="+home, "PATH="+bin+":"+os.Getenv("PATH"))
	cmd.Dir, cmd.Stdin = home, bytes.NewReader(input)
	return cmd.CombinedOutput()
}

// runLocally launches a session of p with task and waits for its end.
func runLocally(t *testing.T, p Profile, setup []string, task string) (home string) {
	t.Helper()
	home = t.TempDir()
	if out, err := launch(t, home, LaunchInput([]byte(task), RunScript(p, setup), nil)); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	return home
}

func read(t *testing.T, home, name string) string {
	b, _ := os.ReadFile(filepath.Join(home, Dir, name))
	return string(b)
}

func TestTaskArrivesByteForByteOnStdin(t *testing.T) {
	agent := Profile{Name: "stand-in", Command: []string{"sh", "-c", `cat > "$HOME/got"; echo working; exit 3`}, Task: TaskStdin}
	home := runLocally(t, agent, nil, nasty)
	if got, _ := os.ReadFile(filepath.Join(home, "got")); string(got) != nasty {
		t.Fatalf("task changed on the way:\n got %q\nwant %q", got, nasty)
	}
	if e := read(t, home, "exit"); e != "3\n" {
		t.Fatalf("exit file %q", e)
	}
	if l := read(t, home, "log"); !strings.Contains(l, "working\n") || !strings.Contains(l, "agent exited with status 3") {
		t.Fatalf("log %q", l)
	}
	if read(t, home, "started") == "" || read(t, home, "pid") == "" {
		t.Fatal("no start time or pid")
	}
}

// One exec starts a session: the last session's files are gone, the
// hook is in place, and only the credential names pass into the agent's
// environment, in no file of the session.
func TestLaunchReplacesTheLastSessionAndPassesOnlyCredentials(t *testing.T) {
	home := t.TempDir()
	old := filepath.Join(home, Dir, "exit")
	os.MkdirAll(filepath.Dir(old), 0o700)
	os.WriteFile(old, []byte("1\n"), 0o600)
	agent := Profile{Name: "stand-in", Command: []string{"sh", "-c", `env > "$HOME/env"`}, Task: TaskStdin}
	creds := []byte("ANTHROPIC_API_KEY=sk-test-1\nFLEET_EVIL=1\nPATH=/evil\nCLAUDE_CODE_OAUTH_TOKEN=tok 2\n")
	if out, err := launch(t, home, LaunchInput([]byte(nasty), RunScript(agent, nil), creds)); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	env, _ := os.ReadFile(filepath.Join(home, "env"))
	for _, want := range []string{"ANTHROPIC_API_KEY=sk-test-1\n", "CLAUDE_CODE_OAUTH_TOKEN=tok 2\n"} {
		if !strings.Contains(string(env), want) {
			t.Errorf("the agent's environment lacks %q", want)
		}
	}
	if strings.Contains(string(env), "FLEET_EVIL") || strings.Contains(string(env), "PATH=/evil") {
		t.Errorf("a line that is no credential reached the agent:\n%s", env)
	}
	if read(t, home, "task") != nasty || read(t, home, "exit") != "0\n" {
		t.Errorf("task %q, exit %q", read(t, home, "task"), read(t, home, "exit"))
	}
	files, _ := filepath.Glob(filepath.Join(home, Dir, "*"))
	for _, f := range files {
		if b, _ := os.ReadFile(f); strings.Contains(string(b), "sk-test-1") {
			t.Errorf("%s holds the key", f)
		}
	}
	if fi, err := os.Stat(filepath.Join(home, HookFile)); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("the hook: %v %v", fi, err)
	}
}

// Input that is not LaunchInput's starts nothing and says why.
func TestLaunchRefusesInputWithoutItsLengths(t *testing.T) {
	run := RunScript(Profile{Name: "x", Command: []string{"touch", "ran"}, Task: TaskStdin}, nil)
	for name, in := range map[string]string{
		"no lengths":     "fix it\n",
		"one length":     "5\nhello",
		"a sign":         "-5 3\nhello",
		"cut short":      fmt.Sprintf("5 %d\nhello%s", len(run), run[:10]),
		"nothing at all": "",
		"a count one short (as a head that read past it would leave)": fmt.Sprintf("5 %d\nhello%s%s\n", len(run)-1, run, launchEnd),
		"no end mark": fmt.Sprintf("5 %d\nhello%sANTHROPIC_API_KEY=x\n", len(run), run),
	} {
		home := t.TempDir()
		out, err := launch(t, home, []byte(in))
		if err == nil {
			t.Errorf("%s: accepted", name)
		}
		if _, serr := os.Stat(filepath.Join(home, "ran")); serr == nil {
			t.Errorf("%s: the agent ran", name)
		}
		if name != "nothing at all" && !strings.Contains(string(out), "fleet: the session's input") {
			t.Errorf("%s: %q", name, out)
		}
	}
}

func TestTaskFileProfileAndSetup(t *testing.T) {
	agent := Profile{Name: "aider", Command: []string{"sh", "-c", `cp "$1" "$HOME/got"`, "x", "{task_file}"}, Task: TaskFile}
	home := runLocally(t, agent, []string{"echo setting up > \"$HOME/setup-ran\""}, nasty)
	if got, _ := os.ReadFile(filepath.Join(home, "got")); string(got) != nasty {
		t.Fatalf("task file: %q", got)
	}
	if _, err := os.Stat(filepath.Join(home, "setup-ran")); err != nil {
		t.Fatal("setup did not run")
	}
	if e := read(t, home, "exit"); e != "0\n" {
		t.Fatalf("exit %q", e)
	}
}

func TestFailedSetupStopsTheAgent(t *testing.T) {
	agent := Profile{Name: "a", Command: []string{"touch", "agent-ran"}, Task: TaskStdin}
	home := runLocally(t, agent, []string{"exit 7"}, "task")
	if e := read(t, home, "exit"); e != "7\n" {
		t.Fatalf("exit %q", e)
	}
	if !strings.Contains(read(t, home, "log"), "setup failed with exit status 7") {
		t.Fatalf("log %q", read(t, home, "log"))
	}
	if _, err := os.Stat(filepath.Join(home, "agent-ran")); err == nil {
		t.Fatal("the agent ran after a failed setup")
	}
}

// Setup commands run one by one, each its own shell (a quote or an exit
// in one is not the next's), and the first that fails stops the rest and
// the agent.
func TestSetupListRunsInOrderAndStopsAtTheFirstFailure(t *testing.T) {
	agent := Profile{Name: "a", Command: []string{"touch", "agent-ran"}, Task: TaskStdin}
	home := runLocally(t, agent, []string{
		`echo one >> "$HOME/steps"`,
		`echo "two 'quoted' $(echo x)" >> "$HOME/steps"; exit 0`,
		`echo three >> "$HOME/steps"`,
	}, "task")
	if got, _ := os.ReadFile(filepath.Join(home, "steps")); string(got) != "one\ntwo 'quoted' x\nthree\n" {
		t.Fatalf("steps %q", got)
	}
	if _, err := os.Stat(filepath.Join(home, "agent-ran")); err != nil || read(t, home, "exit") != "0\n" {
		t.Fatalf("the agent did not run after setup (exit %q)", read(t, home, "exit"))
	}

	home = runLocally(t, agent, []string{`echo one >> "$HOME/steps"`, "exit 5", `echo three >> "$HOME/steps"`}, "task")
	if got, _ := os.ReadFile(filepath.Join(home, "steps")); string(got) != "one\n" {
		t.Fatalf("steps after a failure %q", got)
	}
	if e := read(t, home, "exit"); e != "5\n" || !strings.Contains(read(t, home, "log"), "setup failed with exit status 5") {
		t.Fatalf("exit %q log %q", e, read(t, home, "log"))
	}
	if _, err := os.Stat(filepath.Join(home, "agent-ran")); err == nil {
		t.Fatal("the agent ran after a failed setup step")
	}
}

func TestProfileValidate(t *testing.T) {
	if err := Claude.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, p := range []Profile{
		{Name: "x"},
		{Name: "x", Command: []string{"aider"}, Task: "pipe"},
		{Name: "x", Command: []string{"aider"}, Task: TaskFile},
	} {
		if p.Validate() == nil {
			t.Errorf("accepted %+v", p)
		}
	}
}

func TestCredentialInput(t *testing.T) {
	env := map[string]string{"ANTHROPIC_API_KEY": "sk-1", "OTHER": "x"}
	b, err := CredentialInput(func(k string) string { return env[k] })
	if err != nil || string(b) != "ANTHROPIC_API_KEY=sk-1\n" {
		t.Fatalf("%q %v", b, err)
	}
	env["CLAUDE_CODE_OAUTH_TOKEN"] = "a\nb"
	if _, err := CredentialInput(func(k string) string { return env[k] }); err == nil {
		t.Fatal("a value with a line break must be refused")
	}
}

const result = `{"type":"result","subtype":"success","is_error":false,"num_turns":4,"total_cost_usd":0.0123,"result":"ok"}`

func TestRender(t *testing.T) {
	lines := []string{
		`{"type":"system","subtype":"init","model":"claude-x"}`,
		`{"type":"assistant","message":{"content":[{"type":"text","text":"Reading the tests."},{"type":"tool_use","name":"Bash","input":{"command":"go test ./..."}}]}}`,
		`{"type":"user","message":{"content":[{"type":"tool_result","content":"ok","is_error":false}]}}`,
		result,
		`{"type":"result","subtype":"success","is_error":true,"num_turns":1,"result":"Invalid API key · Please run /login"}`,
		"npm WARN deprecated",
	}
	var b bytes.Buffer
	for _, l := range lines {
		if r := Render(l); r != "" {
			b.WriteString(r + "\n")
		}
	}
	want := "● session started (claude-x)\nReading the tests.\n→ Bash go test ./...\n✓ done in 4 turn(s), $0.0123\n✗ failed after 1 turn(s): Invalid API key · Please run /login\nnpm WARN deprecated\n"
	if b.String() != want {
		t.Fatalf("got\n%s\nwant\n%s", b.String(), want)
	}
}

var hostile = termsafetest.Hostile

var rawControl = termsafetest.RawControl

func TestRenderedLinesHaveNoRawControls(t *testing.T) {
	for _, h := range hostile {
		j, _ := json.Marshal(h)
		for _, line := range []string{
			"npm WARN " + h + " deprecated",
			`{"type":"assistant","message":{"content":[{"type":"text","text":` + string(j) + `},{"type":"tool_use","name":` + string(j) + `,"input":{"command":` + string(j) + `}}]}}`,
			`{"type":"user","message":{"content":[{"type":"tool_result","content":` + string(j) + `,"is_error":true}]}}`,
			`{"type":"result","subtype":` + string(j) + `,"is_error":true,"result":` + string(j) + `}`,
			`{"type":"system","subtype":"init","model":` + string(j) + `}`,
		} {
			out := Render(line)
			if out == "" {
				t.Errorf("%q rendered as nothing", line)
			}
			if where, bad := rawControl(out); bad {
				t.Errorf("Render(%q) = %q: raw %s", line, out, where)
			}
		}
	}
}
