//go:build linux

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentfleet/agentfleet/internal/egress"
)

// meterStub is a model API that answers each message call with usage its
// request could really cost (input a quarter of the body's bytes, output
// all of max_tokens), after a pause so calls overlap, streamed when asked.
// It sums what it served at the default prices: what the account would be
// billed.
type meterStub struct {
	url    string
	mu     sync.Mutex
	calls  int
	served float64
}

func startMeterStub(t *testing.T) *meterStub {
	s := &meterStub{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.url = "http://" + ln.Addr().String()
	price, _ := egress.PriceFor(egress.DefaultPrices, "claude-sonnet-4-5")
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var req struct {
			MaxTokens int64 `json:"max_tokens"`
			Stream    bool  `json:"stream"`
		}
		json.Unmarshal(body, &req)
		u := egress.Usage{InputTokens: int64(len(body) / 4), OutputTokens: req.MaxTokens}
		time.Sleep(300 * time.Millisecond)
		s.mu.Lock()
		s.calls++
		s.served += price.Cost(u)
		s.mu.Unlock()
		if req.Stream {
			w.Header().Set("Content-Type", "text/event-stream")
			fmt.Fprintf(w, "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-sonnet-4-5\",\"usage\":{\"input_tokens\":%d,\"output_tokens\":1}}}\n\n", u.InputTokens)
			w.(http.Flusher).Flush()
			fmt.Fprintf(w, "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"max_tokens\"},\"usage\":{\"output_tokens\":%d}}\n\n", u.OutputTokens)
			io.WriteString(w, "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n")
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"model":"claude-sonnet-4-5","content":[{"type":"text","text":"ok"}],"usage":{"input_tokens":%d,"output_tokens":%d}}`, u.InputTokens, u.OutputTokens)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	return s
}

// Each call the guest makes: streamed when its number is odd, and asking
// with the guest's own Accept-Encoding for gzip, as Node's fetch does.
const meterCall = `n=$1; s=false; [ $((n % 2)) -eq 1 ] && s=true
curl -sS -m 120 -o /dev/null -w '%{http_code}\n' -H 'Accept-Encoding: gzip' \
  -H "Authorization: Bearer $ANTHROPIC_AUTH_TOKEN" -H 'content-type: application/json' \
  -d "{\"model\":\"claude-sonnet-4-5\",\"max_tokens\":2000,\"stream\":$s,\"messages\":[{\"role\":\"user\",\"content\":\"write\"}]}" \
  "$ANTHROPIC_BASE_URL/v1/messages"
`

// 50 concurrent model calls from one guest against a small budget: what
// the upstream serves overshoots the budget by at most one call's
// reservation, and what fleet counts is what the upstream served.
func TestMeteringHoldsUnderConcurrentCalls(t *testing.T) {
	requireE2E(t)
	parallelVM(t)
	t.Cleanup(func() { dumpConsoles(t) })
	api := startMeterStub(t)
	project := t.TempDir()
	os.WriteFile(filepath.Join(project, "fleet.hcl"), []byte(fmt.Sprintf("credentials {\n  upstream = %q\n}\n", api.url)), 0o644)
	run := func(args ...string) result {
		return fleetIn(t, "met", 5*time.Minute, []string{"ANTHROPIC_API_KEY=sk-ant-metering-e2e"}, args...)
	}
	defer run("destroy", "--all", "--force")
	if r := fleetWithEnv(t, bootDeadline, []string{"ANTHROPIC_API_KEY=sk-ant-metering-e2e"}, "spawn", "1", "--name", "met", "--project", project, "--sync", "none"); r.code != 0 {
		t.Fatalf("spawn: %s", r.stderr)
	}
	const budget = 0.25
	if r := run("net", "budget", "met-1", fmt.Sprintf("$%v", budget)); r.code != 0 {
		t.Fatalf("budget: %s", r.stderr)
	}
	script := "cat > /tmp/call.sh <<'EOF'\n" + meterCall + "EOF\nseq 1 50 | xargs -P 50 -n 1 sh /tmp/call.sh"
	r := run("exec", "met-1", "--", "sh", "-c", script)
	codes := map[string]int{}
	for _, l := range strings.Fields(r.stdout) {
		codes[l]++
	}
	// The dearest of the guest's two bodies (stream true or false).
	var reservation egress.Reservation
	for _, s := range []string{"true", "false"} {
		body := fmt.Sprintf(`{"model":"claude-sonnet-4-5","max_tokens":2000,"stream":%s,"messages":[{"role":"user","content":"write"}]}`, s)
		res, err := egress.ReservationFor([]byte(body), egress.DefaultPrices)
		if err != nil {
			t.Fatal(err)
		}
		reservation.USD = max(reservation.USD, res.USD)
	}
	api.mu.Lock()
	calls, served := api.calls, api.served
	api.mu.Unlock()
	refused := codes[fmt.Sprint(egress.BudgetStatus)]
	if codes["200"] == 0 || refused == 0 || codes["200"]+refused != 50 || calls != codes["200"] {
		t.Fatalf("the guest got %v, the upstream served %d calls: %s", codes, calls, r.stderr)
	}
	if served > budget+reservation.USD {
		t.Fatalf("the upstream served $%.4f in %d calls: past the $%v budget by more than one reservation ($%.4f)", served, calls, budget, reservation.USD)
	}
	var rows []struct {
		Name  string `json:"name"`
		Spend *struct {
			Calls   int64   `json:"calls"`
			CostUSD float64 `json:"cost_usd"`
			HeldUSD float64 `json:"held_usd"`
			Reached bool    `json:"budget_reached"`
		} `json:"spend"`
	}
	json.Unmarshal([]byte(run("ls", "--json").stdout), &rows)
	if len(rows) != 1 || rows[0].Spend == nil {
		t.Fatalf("ls --json: %+v", rows)
	}
	s := rows[0].Spend
	if s.Calls != int64(calls) || s.HeldUSD != 0 || s.CostUSD < served-1e-9 || s.CostUSD > served+1e-9 {
		t.Errorf("fleet counted %+v; the upstream served $%.6f in %d calls", *s, served, calls)
	}
	t.Logf("%d calls served for $%.4f against a $%v budget (one reservation $%.4f); %d refused", calls, served, budget, reservation.USD, refused)
}
