package egress

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// A streamed answer as the Messages API sends it: input counted in
// message_start, output as a running total in message_delta.
const streamed = "event: message_start\r\n" +
	`data: {"type":"message_start","message":{"id":"m","model":"claude-sonnet-4-5-20250929","usage":{"input_tokens":120,"cache_creation_input_tokens":30,"cache_read_input_tokens":400,"output_tokens":1}}}` + "\r\n\r\n" +
	"event: content_block_delta\n" +
	`data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"usage: {\"output_tokens\": 999999}"}}` + "\n\n" +
	"event: message_delta\n" +
	`data: {"type":"message_delta","delta":{"stop_reason":null},"usage":{"output_tokens":40}}` + "\n\n" +
	"event: message_delta\n" +
	`data: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":75}}` + "\n\n" +
	"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"

func TestCounterReadsAStreamInAnyChunking(t *testing.T) {
	want := Usage{Calls: 1, InputTokens: 120, OutputTokens: 75, CacheWriteTokens: 30, CacheReadTokens: 400}
	p, _ := PriceFor(DefaultPrices, "claude-sonnet-4-5-20250929")
	want.CostUSD = p.Cost(want)
	for size := 1; size <= len(streamed); size += 7 {
		c := &Counter{Stream: true}
		for i := 0; i < len(streamed); i += size {
			c.Write([]byte(streamed[i:min(i+size, len(streamed))]))
		}
		c.Done()
		got, model, ok := c.Result(DefaultPrices)
		if !ok || got != want || model != "claude-sonnet-4-5-20250929" {
			t.Fatalf("chunks of %d: %+v %q %v, want %+v", size, got, model, ok, want)
		}
	}
	// (120*3 + 75*15 + 30*3.75 + 400*0.3) / 1e6
	if math.Abs(want.CostUSD-0.0017175) > 1e-12 {
		t.Errorf("cost %v", want.CostUSD)
	}
}

func TestCounterReadsAWholeResponse(t *testing.T) {
	c := &Counter{}
	c.Write([]byte(`{"id":"m","model":"claude-haiku-4-5","content":[{"type":"text","text":"\"usage\":{}"}],`))
	c.Write([]byte(`"usage":{"input_tokens":10,"output_tokens":20}}`))
	c.Done()
	got, _, ok := c.Result(DefaultPrices)
	if want := (Usage{Calls: 1, InputTokens: 10, OutputTokens: 20, CostUSD: (10*1 + 20*5) / 1e6}); !ok || got != want {
		t.Fatalf("%+v, want %+v", got, want)
	}
}

func TestCounterWithoutUsageCountsNothing(t *testing.T) {
	whole := `{"model":"claude-haiku-4-5","usage":{"input_tokens":10,"output_tokens":20}}`
	for _, tc := range []struct {
		stream, done, unreadable bool
		body                     string
	}{
		{true, true, false, "event: ping\ndata: {\"type\":\"ping\"}\n\n"},
		{true, true, false, "data: not json\n\ndata: {\"type\":\"message_start\"\n"},
		{false, true, false, `{"type":"error","error":{"type":"overloaded_error"}}`},
		{false, true, false, `not json at all`},
		{false, true, false, ""},
		// Cut short: the guest hung up, or the upstream broke off.
		{true, false, false, streamed},
		{false, false, false, whole},
		// Usage so far, but not the final count: input only, before any
		// output was counted.
		{true, true, false, streamed[:strings.Index(streamed, "event: message_delta")]},
		// Read whole, but in an encoding the counter does not decode.
		{true, true, true, streamed},
		{false, true, true, whole},
	} {
		c := &Counter{Stream: tc.stream, Unreadable: tc.unreadable}
		c.Write([]byte(tc.body))
		if tc.done {
			c.Done()
		}
		if u, _, ok := c.Result(DefaultPrices); ok {
			t.Errorf("%q (done %v, unreadable %v) counted %+v", tc.body, tc.done, tc.unreadable, u)
		}
	}
	// An answer past maxBody is not parsed, whatever it ends with.
	c := &Counter{}
	c.Write([]byte(`{"pad":"`))
	c.Write(make([]byte, maxBody))
	c.Write([]byte(`","model":"x","usage":{"input_tokens":1,"output_tokens":1}}`))
	c.Done()
	if u, _, ok := c.Result(DefaultPrices); ok {
		t.Errorf("an oversized answer counted %+v", u)
	}
}

func TestCounterSkipsHugeLinesButKeepsCounting(t *testing.T) {
	c := &Counter{Stream: true}
	c.Write([]byte(`data: {"type":"message_start","message":{"model":"claude-opus-4-5","usage":{"input_tokens":5}}}` + "\n"))
	huge := `data: {"type":"content_block_delta","delta":{"text":"` + strings.Repeat("x", 3*maxEventLine) + `"}}` + "\n"
	c.Write([]byte(huge))
	c.Write([]byte(`data: {"type":"message_delta","usage":{"output_tokens":9}}`)) // no final newline
	c.Done()
	u, _, ok := c.Result(DefaultPrices)
	if !ok || u.InputTokens != 5 || u.OutputTokens != 9 {
		t.Fatalf("%+v %v", u, ok)
	}
	if cap(c.line) > 2*maxEventLine {
		t.Errorf("held %d bytes of a huge line", cap(c.line))
	}
}

func TestPriceForPicksTheLongestPrefix(t *testing.T) {
	for model, want := range map[string]float64{
		"claude-opus-4-5-20251101": 5,
		"claude-opus-4-1-20250805": 15,
		"claude-sonnet-4-20250514": 3,
		"claude-haiku-4-5":         1,
		"some-new-model":           15, // unknown: the dearest
		"":                         15,
	} {
		p, ok := PriceFor(DefaultPrices, model)
		if !ok || p.Input != want {
			t.Errorf("%q: %+v", model, p)
		}
	}
	ps := MergePrices(DefaultPrices, []Price{{Model: "claude-sonnet-4", Input: 1}, {Model: "local-llm"}})
	if p, _ := PriceFor(ps, "claude-sonnet-4-5"); p.Input != 1 {
		t.Errorf("override not used: %+v", p)
	}
	if p, _ := PriceFor(ps, "local-llm-7b"); p.Input != 0 || p.Model != "local-llm" {
		t.Errorf("added entry not used: %+v", p)
	}
	if len(ps) != len(DefaultPrices)+1 {
		t.Errorf("merge: %d entries", len(ps))
	}
	if _, ok := PriceFor([]Price{{Model: "a"}}, "b"); ok {
		t.Error("a table without * priced an unknown model")
	}
}

func TestValidatePrices(t *testing.T) {
	if err := ValidatePrices(DefaultPrices); err != nil {
		t.Fatal(err)
	}
	for _, ps := range [][]Price{
		{{Model: ""}},
		{{Model: "a"}, {Model: "a"}},
		{{Model: "a", Input: -1}},
		{{Model: "a", Output: math.NaN()}},
		{{Model: "a", CacheRead: math.Inf(1)}},
	} {
		if ValidatePrices(ps) == nil {
			t.Errorf("%+v accepted", ps)
		}
	}
}

func TestBudgetArithmetic(t *testing.T) {
	u := Usage{InputTokens: 600, OutputTokens: 300, CacheReadTokens: 100, CostUSD: 0.5}
	for _, tc := range []struct {
		b    Budget
		want bool
	}{
		{Budget{}, false},
		{Budget{Tokens: 1001}, false},
		{Budget{Tokens: 1000}, true}, // reached exactly: the next call is refused
		{Budget{Tokens: 999}, true},
		{Budget{USD: 0.51}, false},
		{Budget{USD: 0.5}, true},
		{Budget{Tokens: 5000, USD: 0.25}, true}, // either cap
	} {
		if got, why := tc.b.Reached(u); got != tc.want || (got && why == "") {
			t.Errorf("%+v: %v %q", tc.b, got, why)
		}
	}
	var sum Usage
	sum.Add(u)
	sum.Add(Usage{Calls: 2, InputTokens: 1, OutputTokens: 2, CacheWriteTokens: 3, CacheReadTokens: 4, CostUSD: 0.25})
	if sum.Tokens() != 1010 || sum.Calls != 2 || sum.CostUSD != 0.75 {
		t.Errorf("sum %+v", sum)
	}
	for _, b := range []Budget{{Tokens: -1}, {USD: -0.01}, {USD: math.NaN()}, {USD: math.Inf(1)}} {
		if b.Validate() == nil {
			t.Errorf("%+v valid", b)
		}
	}
}

func TestMeterPersistsAcrossServers(t *testing.T) {
	dir := t.TempDir()
	m := &Meter{Dir: dir}
	m.Record(Usage{Calls: 1, InputTokens: 5})
	m.Record(Usage{Calls: 1, OutputTokens: 7})
	again := &Meter{Dir: dir} // a proxy server started after an idle exit
	if u := again.Usage(); u.Calls != 2 || u.Tokens() != 12 {
		t.Fatalf("%+v", u)
	}
	if u, err := LoadUsage(dir); err != nil || u.Tokens() != 12 {
		t.Fatalf("%+v %v", u, err)
	}
	os.WriteFile(filepath.Join(dir, UsageFile), []byte("{"), 0o600)
	if _, err := LoadUsage(dir); err == nil {
		t.Error("a damaged usage file read as zero")
	}
}

// meterRig is a credential proxy in front of an upstream that answers
// with the usage it is told to, streamed or whole.
func meterRig(t *testing.T, budget Budget) (post func(stream bool) (int, string), sent *Usage, setBudget func(Budget), dir string) {
	dir = t.TempDir()
	var upstreamSent Usage
	calls := 0
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		calls++
		in, out := int64(100*calls), int64(10*calls)
		upstreamSent.Add(Usage{Calls: 1, InputTokens: in, OutputTokens: out})
		if strings.Contains(r.Header.Get("Accept"), "event-stream") {
			w.Header().Set("Content-Type", "text/event-stream")
			fmt.Fprintf(w, "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-haiku-4-5\",\"usage\":{\"input_tokens\":%d,\"output_tokens\":1}}}\n\n", in)
			w.(http.Flusher).Flush()
			fmt.Fprintf(w, "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":%d}}\n\n", out)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"model":"claude-haiku-4-5","usage":{"input_tokens":%d,"output_tokens":%d}}`, in, out)
	}))
	t.Cleanup(up.Close)
	u, _ := url.Parse(up.URL)
	write := func(b Budget) {
		raw, _ := json.Marshal(SpendConfig{Budget: b, Prices: DefaultPrices})
		os.WriteFile(filepath.Join(dir, SpendFile), raw, 0o600)
	}
	write(budget)
	p := &CredProxy{Token: "tok", Credential: Credential{Kind: APIKey, Value: "sk"}, Upstream: u, Transport: http.DefaultTransport,
		Audit: NewAudit(dir), Meter: &Meter{Dir: dir}, Spend: func() (SpendConfig, error) { return LoadSpendConfig(dir) }}
	srv := httptest.NewServer(p)
	t.Cleanup(srv.Close)
	post = func(stream bool) (int, string) {
		req, _ := http.NewRequest("POST", srv.URL+"/v1/messages", strings.NewReader(`{"max_tokens":10}`))
		req.Header.Set("X-Api-Key", "tok")
		if stream {
			req.Header.Set("Accept", "text/event-stream")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	return post, &upstreamSent, write, dir
}

func TestCredentialProxyCountsAndStopsAtTheBudget(t *testing.T) {
	// Calls use 110, 220, 330 tokens and each reserves 27 (17 bytes and
	// 10 of output): the third starts at 330+27 <= 400 and passes; the
	// fourth starts at 660 and is refused.
	post, sent, setBudget, dir := meterRig(t, Budget{Tokens: 400})
	for i, stream := range []bool{true, false, true} {
		if code, body := post(stream); code != 200 {
			t.Fatalf("call %d: %d %s", i+1, code, body)
		}
	}
	code, body := post(false)
	var e struct {
		Type  string `json:"type"`
		Error struct{ Type, Message string }
	}
	if code != BudgetStatus || json.Unmarshal([]byte(body), &e) != nil || e.Type != "error" ||
		e.Error.Type != "invalid_request_error" || !strings.Contains(e.Error.Message, "budget is reached") ||
		!strings.Contains(e.Error.Message, "660 of its 400-token budget") {
		t.Fatalf("past the budget: %d %s", code, body)
	}
	if sent.Calls != 3 {
		t.Fatalf("the refused call reached the upstream (%d calls)", sent.Calls)
	}
	if !auditHas(t, dir, BudgetReason) {
		t.Error("the refusal is not in the audit log")
	}
	setBudget(Budget{Tokens: 400 + 1000})
	if code, body := post(true); code != 200 {
		t.Fatalf("after raising the budget: %d %s", code, body)
	}
	if sent.Calls != 4 {
		t.Fatal("the call after the raise did not reach the upstream")
	}
}

func TestCredentialProxyCountsEqualWhatTheUpstreamSent(t *testing.T) {
	post, sent, _, dir := meterRig(t, Budget{})
	for i := 0; i < 6; i++ {
		if code, _ := post(i%2 == 0); code != 200 {
			t.Fatalf("call %d: %d", i, code)
		}
	}
	got, err := LoadUsage(dir) // as ls reads it
	want := *sent
	want.CostUSD = (float64(want.InputTokens)*1 + float64(want.OutputTokens)*5) / 1e6
	if err != nil || got.Calls != want.Calls || got.Tokens() != want.Tokens() || got.InputTokens != want.InputTokens ||
		math.Abs(got.CostUSD-want.CostUSD) > 1e-12 {
		t.Fatalf("counted %+v, the upstream sent %+v", got, want)
	}
}

func auditHas(t *testing.T, dir, reason string) bool {
	found := false
	f, err := os.Open(filepath.Join(dir, AuditFile))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ReadEntries(f, func(e Entry) { found = found || strings.Contains(e.Reason, reason) })
	return found
}

// The README's price table and DefaultPrices are one table.
func TestREADMEPriceTableIsTheDefault(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("(?m)^ *\\| `([^`]+)` *\\| *([0-9.]+) *\\| *([0-9.]+) *\\| *([0-9.]+) *\\| *([0-9.]+) *\\| *$")
	var got []Price
	for _, m := range row.FindAllStringSubmatch(string(b), -1) {
		f := func(i int) float64 { v, _ := strconv.ParseFloat(m[i], 64); return v }
		got = append(got, Price{Model: m[1], Input: f(2), Output: f(3), CacheWrite: f(4), CacheRead: f(5)})
	}
	if fmt.Sprint(got) != fmt.Sprint(DefaultPrices) {
		t.Fatalf("README prices:\n%v\nDefaultPrices:\n%v", got, DefaultPrices)
	}
}

// Writes to the one-hour prompt cache cost twice the input price, not the
// five-minute cache's 1.25 times: 100k of them on claude-opus-4-5 are $1,
// and reading them at the five-minute rate would let a $5 budget spend $8.
func TestOneHourCacheWritesArePricedAsSuch(t *testing.T) {
	for _, stream := range []bool{false, true} {
		c := &Counter{Stream: stream}
		usage := `{"input_tokens":10,"output_tokens":0,"cache_creation_input_tokens":100000,"cache_creation":{"ephemeral_5m_input_tokens":0,"ephemeral_1h_input_tokens":100000}}`
		if stream {
			c.Write([]byte(`event: message_start` + "\n" + `data: {"type":"message_start","message":{"model":"claude-opus-4-5","usage":` + usage + "}}\n\n"))
			c.Write([]byte(`event: message_delta` + "\n" + `data: {"type":"message_delta","usage":{"output_tokens":0}}` + "\n\n"))
		} else {
			c.Write([]byte(`{"model":"claude-opus-4-5","usage":` + usage + `}`))
		}
		c.Done()
		got, _, ok := c.Result(DefaultPrices)
		want := (10*5 + 100000*10) / 1e6
		if !ok || got.CacheWrite1hTokens != 100000 || math.Abs(got.CostUSD-want) > 1e-9 {
			t.Errorf("stream=%v: %+v, want $%.6f", stream, got, want)
		}
	}
	// Without the breakdown, cache writes are the five-minute cache's.
	p, _ := PriceFor(DefaultPrices, "claude-opus-4-5")
	if got := p.Cost(Usage{CacheWriteTokens: 100000}); math.Abs(got-0.625) > 1e-9 {
		t.Errorf("five-minute writes: $%f", got)
	}
	// A breakdown that claims more one-hour writes than writes is held to them.
	if got := p.Cost(Usage{CacheWriteTokens: 10, CacheWrite1hTokens: 1 << 40}); math.Abs(got-10*10/1e6) > 1e-12 {
		t.Errorf("an inflated breakdown: $%f", got)
	}
}
