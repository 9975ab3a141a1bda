package egress

import (
	"bytes"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// proxyRig is a credential proxy served through ServeConn on loopback, in
// front of an upstream the test writes, with a budget in its folder.
type proxyRig struct {
	t     *testing.T
	dir   string
	p     *CredProxy
	base  string
	calls atomic.Int64 // requests the upstream received
}

func newProxyRig(t *testing.T, up http.HandlerFunc, budget Budget, configure ...func(*CredProxy)) *proxyRig {
	t.Helper()
	r := &proxyRig{t: t, dir: t.TempDir()}
	upLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	upSrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.calls.Add(1)
		up(w, req)
	})}
	go upSrv.Serve(upLn)
	t.Cleanup(func() { upSrv.Close() })
	u, _ := url.Parse("http://" + upLn.Addr().String())
	raw, _ := json.Marshal(SpendConfig{Budget: budget, Prices: DefaultPrices})
	if err := os.WriteFile(filepath.Join(r.dir, SpendFile), raw, 0o600); err != nil {
		t.Fatal(err)
	}
	r.p = &CredProxy{Token: "tok", Credential: Credential{Kind: APIKey, Value: "sk-ant-secret-key"}, Upstream: u,
		Transport: &http.Transport{MaxIdleConnsPerHost: 64}, Audit: NewAudit(r.dir), Meter: &Meter{Dir: r.dir},
		Spend:  func() (SpendConfig, error) { return LoadSpendConfig(r.dir) },
		Policy: func() (Policy, error) { return Policy{Mode: ModeAllowlist, Allow: []string{"allowed.test:443"}}, nil }}
	for _, f := range configure {
		f(r.p)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); ln.Close(); r.p.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go r.p.ServeConn(ctx, c)
		}
	}()
	r.base = "http://" + ln.Addr().String()
	return r
}

// send posts body to path with the fleet token and the given headers.
func (r *proxyRig) send(path, body string, hdr ...string) (*http.Response, error) {
	req, _ := http.NewRequest("POST", r.base+path, strings.NewReader(body))
	req.Header.Set("X-Api-Key", "tok")
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	// No transparent decoding on the guest side: the test sees the bytes.
	return (&http.Client{Transport: &http.Transport{DisableCompression: true}}).Do(req)
}

func (r *proxyRig) post(body string, hdr ...string) (int, string) {
	r.t.Helper()
	resp, err := r.send("/v1/messages", body, hdr...)
	if err != nil {
		r.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (r *proxyRig) usage() Usage {
	r.t.Helper()
	u, err := LoadUsage(r.dir)
	if err != nil {
		r.t.Fatal(err)
	}
	return u
}

// waitUsage waits, boundedly, for the proxy to settle what ok looks for.
func (r *proxyRig) waitUsage(ok func(Usage) bool) Usage {
	r.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		u := r.usage()
		if ok(u) || time.Now().After(deadline) {
			return u
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func reservationOf(t *testing.T, body string) Reservation {
	t.Helper()
	req, err := parseRequest([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	return req.reservation(DefaultPrices)
}

const haikuCall = `{"model":"claude-haiku-4-5","max_tokens":1000,"stream":true,"messages":[{"role":"user","content":"hi"}]}`

func sseAnswer(in, out int) string {
	return fmt.Sprintf("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-haiku-4-5\",\"usage\":{\"input_tokens\":%d,\"output_tokens\":1}}}\n\n", in) +
		"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\n" +
		fmt.Sprintf("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":%d}}\n\n", out) +
		"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
}

// haikuCost is what the stub's answer costs at haiku prices.
func haikuCost(in, out int) float64 { return (float64(in)*1 + float64(out)*5) / 1e6 }

func TestReservationIsAnUpperBoundAndPricesTheDearest(t *testing.T) {
	r := reservationOf(t, haikuCall)
	if r.Tokens != int64(len(haikuCall))+1000 {
		t.Errorf("tokens %d, want the body's %d bytes plus max_tokens", r.Tokens, len(haikuCall))
	}
	// Input at the cache write price (1.25), the dearer way haiku bills it.
	if want := (float64(len(haikuCall))*1.25 + 1000*5) / 1e6; math.Abs(r.USD-want) > 1e-12 {
		t.Errorf("usd %v, want %v", r.USD, want)
	}
	for _, tc := range []struct {
		name, body string
		more       func(Reservation) bool
	}{
		{"no max_tokens reserves the most any model writes", `{"model":"claude-haiku-4-5"}`, func(x Reservation) bool { return x.Tokens >= DefaultMaxTokens }},
		{"an unknown model is priced as the dearest", `{"model":"gpt-9","max_tokens":1000}`, func(x Reservation) bool { return x.USD >= 1000*75/1e6 }},
		{"a thinking budget over max_tokens counts", `{"model":"claude-haiku-4-5","max_tokens":10,"thinking":{"type":"enabled","budget_tokens":50000}}`, func(x Reservation) bool { return x.Tokens > 50000 }},
		{"an image costs more than its bytes", `{"model":"claude-haiku-4-5","max_tokens":1,"messages":[{"role":"user","content":[{"type":"image","source":{"type":"base64","data":"AA=="}}]}]}`, func(x Reservation) bool { return x.Tokens >= imageTokens }},
		{"web search reserves its fees", `{"model":"claude-haiku-4-5","max_tokens":1,"tools":[{"type":"web_search_20250305","name":"web_search","max_uses":5}]}`, func(x Reservation) bool { return x.USD >= 5*0.01 }},
		{"the one-hour cache writes at twice the input price", `{"model":"claude-haiku-4-5","max_tokens":1,"system":[{"type":"text","text":"x","cache_control":{"type":"ephemeral","ttl":"1h"}}]}`, func(x Reservation) bool {
			return x.USD >= float64(len(`{"model":"claude-haiku-4-5","max_tokens":1,"system":[{"type":"text","text":"x","cache_control":{"type":"ephemeral","ttl":"1h"}}]}`))*2/1e6
		}},
		{"max_tokens that is not a number is not a way to reserve nothing", `{"model":"claude-haiku-4-5","max_tokens":"1"}`, func(x Reservation) bool { return x.Tokens >= DefaultMaxTokens }},
		{"a negative max_tokens neither", `{"model":"claude-haiku-4-5","max_tokens":-5000}`, func(x Reservation) bool { return x.Tokens >= DefaultMaxTokens }},
	} {
		if x := reservationOf(t, tc.body); !tc.more(x) {
			t.Errorf("%s: %+v", tc.name, x)
		}
	}
	// Long input passes to the long-context rates.
	big := `{"model":"claude-sonnet-4-5","max_tokens":1,"messages":[{"role":"user","content":"` + strings.Repeat("a", longContext+1) + `"}]}`
	if x := reservationOf(t, big); x.USD < float64(longContext)*3.75*2/1e6 {
		t.Errorf("long context: %+v", x)
	}
}

// The guest asks for gzip; an upstream that honours Accept-Encoding is
// asked for none, and one that compresses anyway is decoded: the usage is
// counted either way, and the guest reads a plain answer.
func TestGuestAcceptEncodingDoesNotHideUsage(t *testing.T) {
	compress := map[string]func(io.Writer) io.WriteCloser{
		"gzip":    func(w io.Writer) io.WriteCloser { return gzip.NewWriter(w) },
		"deflate": func(w io.Writer) io.WriteCloser { return zlib.NewWriter(w) },
		"raw":     func(w io.Writer) io.WriteCloser { f, _ := flate.NewWriter(w, 5); return f },
	}
	for _, mode := range []string{"honours", "gzip", "deflate", "raw"} {
		t.Run(mode, func(t *testing.T) {
			var sawAE atomic.Value
			rig := newProxyRig(t, func(w http.ResponseWriter, req *http.Request) {
				io.Copy(io.Discard, req.Body)
				sawAE.Store(req.Header.Get("Accept-Encoding"))
				w.Header().Set("Content-Type", "text/event-stream")
				enc := mode
				if mode == "honours" {
					if !strings.Contains(req.Header.Get("Accept-Encoding"), "gzip") {
						io.WriteString(w, sseAnswer(300, 700))
						return
					}
					enc = "gzip"
				}
				name := enc
				if enc == "raw" {
					name = "deflate"
				}
				w.Header().Set("Content-Encoding", name)
				zw := compress[enc](w)
				io.WriteString(zw, sseAnswer(300, 700))
				zw.Close()
			}, Budget{USD: 100})
			for i := 0; i < 3; i++ {
				code, body := rig.post(haikuCall, "Accept-Encoding", "gzip, deflate, br")
				if code != 200 || !strings.Contains(body, `"text":"hi"`) {
					t.Fatalf("call %d: %d %q", i, code, body)
				}
			}
			if ae := sawAE.Load(); ae != "identity" {
				t.Errorf("the upstream was asked for %q", ae)
			}
			u := rig.usage()
			if u.Calls != 3 || u.InputTokens != 900 || u.OutputTokens != 2100 || u.HeldTokens != 0 || math.Abs(u.CostUSD-3*haikuCost(300, 700)) > 1e-12 {
				t.Errorf("counted %+v", u)
			}
		})
	}
}

// An answer the meter cannot read, or that tells no usage for certain,
// is charged its whole reservation: never zero.
func TestAnswersWithoutUsageKeepTheReservation(t *testing.T) {
	longDelta := "event: message_delta\ndata: {\"type\":\"message_delta\",\"pad\":\"" + strings.Repeat("x", maxEventLine) + "\",\"usage\":{\"output_tokens\":999}}\n\n"
	start := "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-haiku-4-5\",\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n"
	for name, up := range map[string]http.HandlerFunc{
		"brotli, which the meter does not decode": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/event-stream")
			w.Header().Set("Content-Encoding", "br")
			io.WriteString(w, "\x1b\x00\x00not really brotli but unreadable all the same")
		},
		"two encodings": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.Header().Add("Content-Encoding", "gzip")
			w.Header().Add("Content-Encoding", "zstd")
			io.WriteString(w, "??")
		},
		"a gzip answer cut short": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/event-stream")
			w.Header().Set("Content-Encoding", "gzip")
			var b bytes.Buffer
			zw := gzip.NewWriter(&b)
			io.WriteString(zw, sseAnswer(5, 8000))
			zw.Close()
			w.Write(b.Bytes()[:b.Len()-12])
		},
		"a stream cut before its final count": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/event-stream")
			io.WriteString(w, start)
			w.(http.Flusher).Flush()
			hj, _, _ := http.NewResponseController(w).Hijack()
			hj.Close() // mid-chunk: no clean end
		},
		"the final count on a line too long to read": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/event-stream")
			io.WriteString(w, start+longDelta+"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n")
		},
		"an unparsable whole answer": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"model":"claude-haiku-4-5","usage":{"input_tokens":5,"output_tokens":`)
		},
		"a whole answer past the meter's cap": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"pad":"`+strings.Repeat("x", maxBody)+`","model":"claude-haiku-4-5","usage":{"input_tokens":5,"output_tokens":8000}}`)
		},
		"an error that is not the API's error object": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/html")
			w.WriteHeader(502)
			io.WriteString(w, `<html>bad gateway</html>`)
		},
		"an API error cut short": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Content-Length", "200")
			w.WriteHeader(529)
			io.WriteString(w, `{"type":"error","error":{"type":"overloaded_error"`)
		},
		"an error that also reports usage": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(500)
			io.WriteString(w, `{"type":"error","error":{"type":"api_error"},"usage":{"output_tokens":"lots"}}`)
		},
	} {
		t.Run(name, func(t *testing.T) {
			rig := newProxyRig(t, func(w http.ResponseWriter, r *http.Request) { io.Copy(io.Discard, r.Body); up(w, r) }, Budget{USD: 100})
			resp, err := rig.send("/v1/messages", haikuCall, "Accept-Encoding", "gzip")
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			res := reservationOf(t, haikuCall)
			u := rig.waitUsage(func(u Usage) bool { return u.Unsettled == 1 })
			if u.Unsettled != 1 || u.Calls != 1 || u.HeldTokens != res.Tokens || math.Abs(u.CostUSD-res.USD) > 1e-12 || u.OutputTokens != 0 {
				t.Errorf("charged %+v, want the reservation %+v", u, res)
			}
		})
	}
}

// A guest that hangs up after the first event (8,000 tokens on their way)
// is charged the reservation, not the 1 output token counted so far.
func TestHangUpMidStreamKeepsTheReservation(t *testing.T) {
	release := make(chan struct{})
	rig := newProxyRig(t, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-haiku-4-5\",\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
		case <-release:
		}
		io.WriteString(w, "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":8000}}\n\n")
	}, Budget{USD: 100})
	defer close(release)
	resp, err := rig.send("/v1/messages", haikuCall)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	if _, err := resp.Body.Read(buf); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close() // the guest hangs up
	res := reservationOf(t, haikuCall)
	u := rig.waitUsage(func(u Usage) bool { return u.Unsettled == 1 })
	if u.Unsettled != 1 || u.HeldTokens != res.Tokens || math.Abs(u.CostUSD-res.USD) > 1e-12 {
		t.Errorf("after a hang-up: %+v, want the reservation %+v held", u, res)
	}
}

// 200 parallel calls against a $5 budget: the upstream serves no more
// than the budget and one call's reservation.
func TestTheCapHoldsUnderConcurrency(t *testing.T) {
	const call = `{"model":"claude-opus-4-5","max_tokens":4000,"messages":[{"role":"user","content":"write"}]}`
	var mu sync.Mutex
	var served float64
	p, _ := PriceFor(DefaultPrices, "claude-opus-4-5")
	rig := newProxyRig(t, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		time.Sleep(5 * time.Millisecond) // calls overlap
		u := Usage{InputTokens: 40, OutputTokens: 4000}
		mu.Lock()
		served += p.Cost(u)
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"model":"claude-opus-4-5","usage":{"input_tokens":%d,"output_tokens":%d}}`, u.InputTokens, u.OutputTokens)
	}, Budget{USD: 5})
	res := reservationOf(t, call)
	var wg sync.WaitGroup
	var ok, refused atomic.Int64
	for i := 0; i < 200; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := rig.send("/v1/messages", call)
			if err != nil {
				t.Error(err)
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			switch {
			case resp.StatusCode == 200:
				ok.Add(1)
			case resp.StatusCode == BudgetStatus && strings.Contains(string(b), "budget is reached"):
				refused.Add(1)
			default:
				t.Errorf("%d %s", resp.StatusCode, b)
			}
		}()
	}
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if served > 5+res.USD || ok.Load() == 0 || refused.Load() == 0 || int64(rig.calls.Load()) != ok.Load() {
		t.Fatalf("the upstream served $%.4f in %d calls (%d answered, %d refused); the cap is $5 plus one reservation of $%.4f", served, rig.calls.Load(), ok.Load(), refused.Load(), res.USD)
	}
	u := rig.usage()
	if u.Calls != ok.Load() || u.HeldTokens != 0 || math.Abs(u.CostUSD-served) > 1e-9 {
		t.Errorf("the meter says %+v; the upstream served $%.6f in %d calls", u, served, ok.Load())
	}
}

func TestServerToolFeesAreCounted(t *testing.T) {
	rig := newProxyRig(t, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-haiku-4-5\",\"usage\":{\"input_tokens\":100,\"output_tokens\":1}}}\n\n"+
			"event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":50,\"server_tool_use\":{\"web_search_requests\":3,\"web_fetch_requests\":2}}}\n\n")
	}, Budget{USD: 100})
	body := `{"model":"claude-haiku-4-5","max_tokens":100,"tools":[{"type":"web_search_20250305","name":"web_search","max_uses":5}]}`
	if code, b := rig.post(body); code != 200 {
		t.Fatal(code, b)
	}
	u := rig.usage()
	if want := haikuCost(100, 50) + 3*DefaultWebSearchPer1000/1000; u.WebSearches != 3 || u.WebFetches != 2 || math.Abs(u.CostUSD-want) > 1e-12 {
		t.Errorf("%+v, want $%v with 3 searches", u, want)
	}
	if p := (Price{WebSearch: 25}); math.Abs(p.Cost(Usage{WebSearches: 4})-0.1) > 1e-12 {
		t.Errorf("a priced search: %v", p.Cost(Usage{WebSearches: 4}))
	}
}

// Reservations are on disk: a proxy that restarts mid-call, or the
// controller, sees them charged; a usage file that cannot be read stops
// calls rather than restarting the count.
func TestReservationsPersistAndAnUnreadableCountStopsCalls(t *testing.T) {
	dir := t.TempDir()
	m := &Meter{Dir: dir}
	r := Reservation{Tokens: 1000, USD: 2}
	if ok, why, err := m.Reserve(r, Budget{USD: 5}); !ok || err != nil {
		t.Fatal(why, err)
	}
	again := &Meter{Dir: dir} // the server restarted; the call's answer is lost
	if u := again.Usage(); u.HeldTokens != 1000 || u.CostUSD != 2 {
		t.Fatalf("after a restart: %+v", u)
	}
	if ok, _, _ := again.Reserve(Reservation{USD: 3.5}, Budget{USD: 5}); ok {
		t.Error("a restart forgot a held reservation")
	}
	if ok, _, _ := again.Reserve(Reservation{USD: 3}, Budget{USD: 5}); !ok {
		t.Error("a reservation that fits was refused")
	}
	if err := again.Settle(Reservation{USD: 3}, Usage{Calls: 1, OutputTokens: 10, CostUSD: 1}, true); err != nil {
		t.Fatal(err)
	}
	if u, _ := LoadUsage(dir); u.CostUSD != 3 || u.HeldUSD != 2 || u.OutputTokens != 10 {
		t.Errorf("after settling: %+v", u)
	}
	rig := newProxyRig(t, func(w http.ResponseWriter, r *http.Request) {}, Budget{})
	os.WriteFile(filepath.Join(rig.dir, UsageFile), []byte("{"), 0o600)
	if code, body := rig.post(haikuCall); code != 500 || !strings.Contains(body, "cannot be counted") || rig.calls.Load() != 0 {
		t.Errorf("with a damaged usage file: %d %s (%d calls sent)", code, body, rig.calls.Load())
	}
	if b, _ := os.ReadFile(filepath.Join(rig.dir, UsageFile)); string(b) != "{" {
		t.Errorf("the damaged file was written over: %q", b)
	}
}

// A call that never reached the upstream is released; a settled call
// leaves nothing held.
func TestSettledAndUnsentCallsHoldNothing(t *testing.T) {
	rig := newProxyRig(t, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, sseAnswer(10, 20))
	}, Budget{USD: 100})
	rig.post(haikuCall)
	if u := rig.usage(); u.HeldTokens != 0 || u.HeldUSD != 0 || u.Calls != 1 || math.Abs(u.CostUSD-haikuCost(10, 20)) > 1e-12 {
		t.Errorf("settled: %+v", u)
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead, _ := url.Parse("http://" + ln.Addr().String())
	ln.Close()
	down := newProxyRig(t, nil, Budget{USD: 100}, func(p *CredProxy) { p.Upstream = dead })
	if code, _ := down.post(haikuCall); code != 502 {
		t.Fatal(code)
	}
	if u := down.usage(); u.HeldTokens != 0 || u.Calls != 0 {
		t.Errorf("a call the upstream never took is held: %+v", u)
	}
}

// The API's own refusal (overloaded, rate-limited), read whole, bills
// nothing: its reservation is given back, so retries do not eat a budget.
func TestAnAPIRefusalGivesTheReservationBack(t *testing.T) {
	for _, code := range []int{429, 529, 400} {
		rig := newProxyRig(t, func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(code)
			io.WriteString(w, `{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}`)
		}, Budget{USD: 100})
		resp, err := rig.send("/v1/messages", haikuCall)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != code {
			t.Fatalf("status %d, want %d", resp.StatusCode, code)
		}
		time.Sleep(100 * time.Millisecond)
		if u := rig.waitUsage(func(u Usage) bool { return u.HeldTokens == 0 }); u.HeldTokens != 0 || u.CostUSD != 0 || u.Unsettled != 0 {
			t.Errorf("%d: charged %+v for a call the API refused", code, u)
		}
	}
}
