//go:build linux

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// tmuxUI is fleet top running in a tmux server of its own, driven with
// send-keys and read with capture-pane, as a user at an 80x24 terminal.
type tmuxUI struct {
	t            *testing.T
	sock, target string
}

func startTop(t *testing.T, dir string, w, h int, args ...string) *tmuxUI {
	t.Helper()
	u := &tmuxUI{t: t, sock: fmt.Sprintf("fleet-e2e-%d-%s", os.Getpid(), strings.ReplaceAll(t.Name(), "/", "-")), target: "top"}
	cmd := fmt.Sprintf("cd %q && exec env FLEET_HOME=%q FLEET_CACHE=%q %q top %s 2>%q", dir, fleetHome,
		envOr("FLEET_CACHE", "/var/cache/agentfleet"), fleetBin, strings.Join(args, " "), filepath.Join(t.TempDir(), "top.err"))
	out, err := exec.Command("tmux", "-L", u.sock, "new-session", "-d", "-s", u.target, "-x", fmt.Sprint(w), "-y", fmt.Sprint(h), cmd).CombinedOutput()
	if err != nil {
		t.Fatalf("tmux: %v %s", err, out)
	}
	exec.Command("tmux", "-L", u.sock, "set-option", "-g", "remain-on-exit", "on").Run()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("fleet top's last screen:\n%s", u.screen())
		}
		exec.Command("tmux", "-L", u.sock, "kill-server").Run()
	})
	return u
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func (u *tmuxUI) keys(keys ...string) {
	u.t.Helper()
	if out, err := exec.Command("tmux", append([]string{"-L", u.sock, "send-keys", "-t", u.target}, keys...)...).CombinedOutput(); err != nil {
		u.t.Fatalf("send-keys %v: %v %s", keys, err, out)
	}
}

func (u *tmuxUI) screen() string {
	out, _ := exec.Command("tmux", "-L", u.sock, "capture-pane", "-p", "-t", u.target).Output()
	return string(out)
}

// waitFor polls the screen until ok holds, and returns it.
func (u *tmuxUI) waitFor(what string, timeout time.Duration, ok func(string) bool) string {
	u.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		s := u.screen()
		if ok(s) {
			return s
		}
		if time.Now().After(deadline) {
			u.t.Fatalf("fleet top never showed %s in %s:\n%s", what, timeout, s)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func has(subs ...string) func(string) bool {
	return func(s string) bool {
		for _, sub := range subs {
			if !strings.Contains(s, sub) {
				return false
			}
		}
		return true
	}
}

// rowOf is the screen line of a machine's row.
func rowOf(screen, name string) string {
	for _, l := range strings.Split(screen, "\n") {
		if strings.HasPrefix(strings.TrimLeft(l, "> "), name+" ") {
			return l
		}
	}
	return ""
}

func rowHas(name string, subs ...string) func(string) bool {
	return func(s string) bool { return has(subs...)(rowOf(s, name)) }
}

// usageStub is a model API that answers every message call with the same
// usage, streamed when asked, and counts what it sent.
type usageStub struct {
	url                  string
	mu                   sync.Mutex
	calls                int
	in, out, cacheRead   int
	perIn, perOut, perCR int
}

func startUsageStub(t *testing.T) *usageStub {
	u := &usageStub{perIn: 120, perOut: 30, perCR: 50}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u.url = "http://" + ln.Addr().String()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		u.mu.Lock()
		u.calls++
		u.in, u.out, u.cacheRead = u.in+u.perIn, u.out+u.perOut, u.cacheRead+u.perCR
		u.mu.Unlock()
		if bytes.Contains(body, []byte(`"stream":true`)) {
			w.Header().Set("Content-Type", "text/event-stream")
			fmt.Fprintf(w, "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-sonnet-4-5\",\"usage\":{\"input_tokens\":%d,\"cache_read_input_tokens\":%d,\"output_tokens\":1}}}\n\n", u.perIn, u.perCR)
			w.(http.Flusher).Flush()
			fmt.Fprintf(w, "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"stub-says-hi\"}}\n\n")
			fmt.Fprintf(w, "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":%d}}\n\n", u.perOut)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"model":"claude-sonnet-4-5","content":[{"type":"text","text":"stub-says-hi"}],"usage":{"input_tokens":%d,"cache_read_input_tokens":%d,"output_tokens":%d}}`, u.perIn, u.perCR, u.perOut)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	return u
}

// The stand-in agent: its task says what it does. "exit=N steps=M" works
// for M seconds, commits and exits N; "wait" first asks for input the way
// Claude Code's hooks report it; "api" calls the model API three times
// through the credential proxy (streamed, whole, streamed) and prints
// what came back.
const cockpitAgent = `task=$(cat)
case "$task" in *api*)
  for s in true false true; do
    curl -sS -m 60 "$ANTHROPIC_BASE_URL/v1/messages" -H "Authorization: Bearer $ANTHROPIC_AUTH_TOKEN" -d "{\"stream\":$s,\"max_tokens\":30}"; echo
  done
  exit 0;;
esac
case "$task" in *wait*)
  echo '{"hook_event_name":"Notification","message":"Claude needs your input"}' | ~/.fleet/hook notification
  echo asking; read -r answer </dev/tty; echo "got $answer"
  echo '{}' | ~/.fleet/hook prompt;;
esac
code=$(echo "$task" | sed -n 's/.*exit=\([0-9]*\).*/\1/p')
steps=$(echo "$task" | sed -n 's/.*steps=\([0-9]*\).*/\1/p')
for i in $(seq 1 ${steps:-3}); do echo "step $i"; sleep 1; done
echo "$(hostname) $task" >> work.txt && git add -A && git commit -qm "agent work on $(hostname)"
echo finished
exit ${code:-0}
`

type spendRow struct {
	Name  string `json:"name"`
	Spend *struct {
		Calls           int64   `json:"calls"`
		InputTokens     int64   `json:"input_tokens"`
		OutputTokens    int64   `json:"output_tokens"`
		CacheReadTokens int64   `json:"cache_read_tokens"`
		CostUSD         float64 `json:"cost_usd"`
		Reached         bool    `json:"budget_reached"`
	} `json:"spend"`
	Agent *struct {
		State string `json:"state"`
	} `json:"agent"`
}

// The cockpit on two real VMs with stand-in agents: live states, attach
// and detach, diff and collect from the keys, a wait for input reaching
// the notify command, a refused host answered from the UI, and spend
// counted and capped by the credential proxy.
func TestCockpit(t *testing.T) {
	requireE2E(t)
	parallelVM(t)
	t.Cleanup(func() { dumpConsoles(t) })
	startStubNet(t)
	api := startUsageStub(t)
	repo := t.TempDir()
	events := filepath.Join(t.TempDir(), "events.jsonl")
	os.WriteFile(filepath.Join(repo, "agent.sh"), []byte(cockpitAgent), 0o755)
	os.WriteFile(filepath.Join(repo, "fleet.hcl"), []byte(fmt.Sprintf(`
agent  = "standin"
notify = "cat >> %[1]s"
profile "standin" {
  command = ["sh", "agent.sh"]
}
egress {
  hosts = { "denied.test" = %[2]q }
}
credentials {
  upstream = %[3]q
}
`, events, stubSiteIP, api.url)), 0o644)
	sh(t, repo, "git init -q -b main && git add -A && git commit -qm first")
	run := func(args ...string) result {
		return fleetIn(t, "ck", 5*time.Minute, []string{"ANTHROPIC_API_KEY=sk-ant-cockpit"}, args...)
	}
	defer run("destroy", "--all", "--force")
	if r := fleetWithEnv(t, bootDeadline, []string{"ANTHROPIC_API_KEY=sk-ant-cockpit"}, "spawn", "2", "--name", "ck", "--project", repo); r.code != 0 {
		t.Fatalf("spawn: %s", r.stderr)
	}
	task := func(vm, text string) {
		t.Helper()
		if r := run("run", vm, "--task", text, "--project", repo); r.code != 0 {
			t.Fatalf("run %s: %s", vm, r.stderr)
		}
	}
	readEvents := func() []map[string]any {
		b, _ := os.ReadFile(events)
		var out []map[string]any
		for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			var ev map[string]any
			if json.Unmarshal([]byte(l), &ev) == nil {
				out = append(out, ev)
			}
		}
		return out
	}
	waitEvent := func(what string, ok func(map[string]any) bool) map[string]any {
		t.Helper()
		deadline := time.Now().Add(3 * time.Minute)
		for time.Now().Before(deadline) {
			for _, ev := range readEvents() {
				if ok(ev) {
					return ev
				}
			}
			time.Sleep(200 * time.Millisecond)
		}
		t.Fatalf("the notify command never got %s; it got %v", what, readEvents())
		return nil
	}

	ui := startTop(t, repo, 80, 24, "--name", "ck")
	ui.waitFor("both machines", time.Minute, has("ck-1", "ck-2", "2 machines"))

	t.Run("states change live: succeeded, and failed with its exit code", func(t *testing.T) {
		task("ck-1", "exit=0 steps=6")
		task("ck-2", "exit=5 steps=3")
		ui.waitFor("both working", 2*time.Minute, func(s string) bool { return rowHas("ck-1", "working")(s) || rowHas("ck-1", "succeeded")(s) })
		ui.waitFor("ck-2 failed (5)", 3*time.Minute, rowHas("ck-2", "failed (5)"))
		s := ui.waitFor("ck-1 succeeded with a commit", 3*time.Minute, rowHas("ck-1", "succeeded", "1c 1f"))
		if !strings.Contains(s, "finished") {
			t.Errorf("the last line of output is not shown:\n%s", s)
		}
		ev := waitEvent("ck-2's failure with its exit code", func(ev map[string]any) bool {
			return ev["machine"] == "ck-2" && ev["state"] == "failed" && ev["exit_code"] == float64(5)
		})
		if ev["kind"] != "agent" || ev["fleet"] != "ck" {
			t.Errorf("event %v", ev)
		}
	})

	t.Run("d shows the agent's commit; c makes the fleet/<vm> branch", func(t *testing.T) {
		ui.keys("d") // ck-1 is selected: the first row
		ui.waitFor("the diff in a pager", time.Minute, has("+ck-1 exit=0 steps=6"))
		ui.keys("q")
		ui.waitFor("the cockpit again", 30*time.Second, has("2 machines", "back from diff"))
		ui.keys("c")
		ui.waitFor("collect's summary", time.Minute, has("fleet/ck-1", "1 commit"))
		ui.keys("Enter")
		ui.waitFor("the cockpit again", 30*time.Second, has("2 machines", "back from collect"))
		if got := sh(t, repo, "git log -1 --format=%s fleet/ck-1"); !strings.Contains(got, "agent work on ck-1") {
			t.Fatalf("fleet/ck-1 is %q", got)
		}
		if dirty := sh(t, repo, "git status --porcelain"); strings.TrimSpace(dirty) != "" {
			t.Errorf("collect from the cockpit touched the tree: %s", dirty)
		}
	})

	t.Run("waiting for input reaches the notify command; enter attaches and detach returns", func(t *testing.T) {
		task("ck-1", "wait exit=0 steps=2")
		ui.waitFor("ck-1 waiting", 2*time.Minute, rowHas("ck-1", "waiting"))
		ev := waitEvent("ck-1 waiting", func(ev map[string]any) bool { return ev["machine"] == "ck-1" && ev["state"] == "waiting" })
		if ev["message"] != "Claude needs your input" {
			t.Errorf("waiting event %v", ev)
		}
		ui.keys("Enter")
		ui.waitFor("the agent's pane", time.Minute, has("asking"))
		ui.keys("yes", "Enter")
		ui.waitFor("the agent going on", time.Minute, has("got yes"))
		ui.keys("C-b", "d")
		ui.waitFor("the cockpit after detach", time.Minute, has("2 machines", "back from attach"))
		ui.waitFor("ck-1 succeeded", 2*time.Minute, rowHas("ck-1", "succeeded"))
		waitEvent("ck-1 succeeded with exit code 0", func(ev map[string]any) bool {
			return ev["machine"] == "ck-1" && ev["state"] == "succeeded" && ev["exit_code"] == float64(0)
		})
	})

	t.Run("a refused host shows within a second and is allowed from the UI", func(t *testing.T) {
		get := fmt.Sprintf(`curl -sS -m 20 http://denied.test:%d/x; echo " rc=$?"`, stubHTTP)
		pattern := fmt.Sprintf("denied.test:%d", stubHTTP)
		// The screen is read every 50ms while the guest asks; the latency is
		// from the proxy's own log entry to the first screen that shows it.
		shown := make(chan time.Time, 1)
		stop := make(chan struct{})
		go func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if strings.Contains(ui.screen(), "ck-2 was refused "+pattern) {
					shown <- time.Now()
					return
				}
				time.Sleep(50 * time.Millisecond)
			}
		}()
		r := run("exec", "ck-2", "--", "sh", "-c", get)
		if strings.Contains(r.stdout, "stub denied.test") {
			t.Fatalf("denied.test was reachable before any allow: %s", r.stdout)
		}
		var at time.Time
		select {
		case at = <-shown:
		case <-time.After(10 * time.Second):
			close(stop)
			t.Fatalf("the refusal never showed:\n%s", ui.screen())
		}
		var entry struct {
			Time    time.Time `json:"time"`
			Verdict string    `json:"verdict"`
			Host    string    `json:"host"`
		}
		for _, l := range strings.Split(run("net", "log", "--json", "ck-2").stdout, "\n") {
			var e = entry
			if json.Unmarshal([]byte(l), &e) == nil && e.Verdict == "deny" && e.Host == "denied.test" {
				entry = e
			}
		}
		if entry.Time.IsZero() {
			t.Fatal("the refusal is not in the audit log")
		}
		if d := at.Sub(entry.Time); d > time.Second {
			t.Errorf("the refusal showed %s after the proxy logged it (want within a second)", d)
		} else {
			t.Logf("refusal on screen %s after the proxy logged it", d.Round(time.Millisecond))
		}
		ui.waitFor("the hint", time.Second, has("e allows it"))
		ui.keys("e") // ck-1 is selected: the notice names ck-2's refusal, and e answers it
		ui.waitFor("the allow", 30*time.Second, has("ck-2: allowed "+pattern))
		if r := run("exec", "ck-2", "--", "sh", "-c", get); !strings.Contains(r.stdout, fmt.Sprintf("stub denied.test:%d /x", stubHTTP)) {
			t.Fatalf("after allowing from the UI: %s", r.stdout)
		}
		var rows []struct {
			Name  string   `json:"name"`
			Allow []string `json:"allow"`
		}
		json.Unmarshal([]byte(run("net", "ls", "--json").stdout), &rows)
		for _, row := range rows {
			has := strings.Contains(strings.Join(row.Allow, " "), pattern)
			if has != (row.Name == "ck-2") {
				t.Errorf("fleet net ls: %s allows %v", row.Name, row.Allow)
			}
		}
		waitEvent("the refusal event", func(ev map[string]any) bool {
			return ev["kind"] == "egress_denied" && ev["machine"] == "ck-2" && ev["host"] == "denied.test"
		})
		// fleet events says the same for scripts. Each machine's agent is
		// asked over SSH, which a loaded host may answer late: a few tries.
		var denied, succeeded bool
		var ev result
		for try := 0; try < 10 && !(denied && succeeded); try++ {
			if try > 0 {
				time.Sleep(3 * time.Second)
			}
			ev = run("events", "--json")
			for _, l := range strings.Split(strings.TrimSpace(ev.stdout), "\n") {
				var e map[string]any
				if err := json.Unmarshal([]byte(l), &e); err != nil {
					t.Fatalf("fleet events --json printed %q: %v", l, err)
				}
				denied = denied || (e["machine"] == "ck-2" && e["kind"] == "egress_denied" && e["host"] == "denied.test" && e["port"] == float64(stubHTTP))
				succeeded = succeeded || (e["machine"] == "ck-1" && e["kind"] == "agent" && e["state"] == "succeeded" && e["exit_code"] == float64(0))
			}
		}
		if !denied || !succeeded {
			t.Errorf("fleet events --json (exit %d):\n%s\n%s", ev.code, ev.stdout, ev.stderr)
		}
	})

	t.Run("tokens counted from the API's answers; a budget stops the next call and a raise lets it through", func(t *testing.T) {
		spend := func() spendRow {
			var rows []spendRow
			json.Unmarshal([]byte(run("ls", "--json").stdout), &rows)
			for _, r := range rows {
				if r.Name == "ck-1" && r.Spend != nil {
					return r
				}
			}
			t.Fatal("ls --json has no spend for ck-1")
			return spendRow{}
		}
		finish := func() string {
			t.Helper()
			if r := run("wait", "ck-1", "--timeout", "4m"); r.code != 0 {
				t.Fatalf("the api agent: %s %s", r.stdout, run("logs", "ck-1").stdout)
			}
			return run("logs", "--raw", "ck-1").stdout
		}
		task("ck-1", "api")
		finish()
		api.mu.Lock()
		calls, in, out, cr := api.calls, api.in, api.out, api.cacheRead
		api.mu.Unlock()
		s := spend().Spend
		if calls != 3 || s.Calls != 3 || s.InputTokens != int64(in) || s.OutputTokens != int64(out) || s.CacheReadTokens != int64(cr) {
			t.Fatalf("ls --json counted %+v; the stub sent %d calls, %d in, %d out, %d cache reads", *s, calls, in, out, cr)
		}
		// (120*3 + 30*15 + 50*0.3) per million, per call: sonnet 4.5 prices.
		if want := 3 * (120*3.0 + 30*15.0 + 50*0.3) / 1e6; s.CostUSD < want*0.999 || s.CostUSD > want*1.001 {
			t.Errorf("cost %v, want %v", s.CostUSD, want)
		}
		ui.waitFor("ck-1's tokens", 30*time.Second, rowHas("ck-1", "600"))

		// 600 used, a cap of 1000: two more calls pass, the third is refused.
		if r := run("net", "budget", "ck-1", "1000"); r.code != 0 {
			t.Fatal(r.stderr)
		}
		task("ck-1", "api")
		logs := finish()
		if strings.Count(logs, "stub-says-hi") != 2 || !strings.Contains(logs, "budget is reached") || !strings.Contains(logs, "1000 of its 1000-token budget") || !strings.Contains(logs, "fleet net budget ck-1 +N") {
			t.Fatalf("past the budget the agent saw:\n%s", logs)
		}
		if api.calls != 5 {
			t.Fatalf("the refused call reached the API (%d calls)", api.calls)
		}
		if s := spend().Spend; !s.Reached || s.InputTokens != 5*120 {
			t.Fatalf("after the cap: %+v", *s)
		}
		ui.waitFor("budget reached in ck-1's row", 30*time.Second, rowHas("ck-1", "budget reached"))
		waitEvent("budget_reached", func(ev map[string]any) bool { return ev["kind"] == "budget_reached" && ev["machine"] == "ck-1" })
		if r := run("net", "budget", "ck-1", "+500"); r.code != 0 || !strings.Contains(r.stderr, "1.5k tokens") {
			t.Fatalf("raise: %s", r.stderr)
		}
		task("ck-1", "api")
		if logs := finish(); strings.Contains(logs, "budget is reached") || strings.Count(logs, "stub-says-hi") != 3 || api.calls != 8 {
			t.Fatalf("after the raise (%d calls):\n%s", api.calls, logs)
		}
		// Bad amounts change nothing.
		for _, bad := range []string{"+-5", "$abc", "+0"} {
			if r := run("net", "budget", "ck-1", bad); r.code == 0 {
				t.Errorf("budget %q accepted", bad)
			}
		}
	})
}
