package egress

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/agentfleet/agentfleet/internal/layout"
)

// Spend is measured where the guest cannot touch it: the credential
// proxy reads the token counts the model API itself reports in each
// response (streamed or whole), prices them, and refuses a machine's
// next call once its budget is reached.

// Files of the meter in a machine's folder.
const (
	SpendFile = layout.SpendFile // budget and prices: written by the controller
	UsageFile = layout.UsageFile // what was counted: written by the proxy server only
)

// Usage is what one machine's calls used, as the API reported it, plus
// what is held for calls whose usage is not known.
type Usage struct {
	Calls            int64 `json:"calls"`
	InputTokens      int64 `json:"input_tokens"`
	OutputTokens     int64 `json:"output_tokens"`
	CacheWriteTokens int64 `json:"cache_write_tokens"`
	CacheReadTokens  int64 `json:"cache_read_tokens"`
	// CacheWrite1hTokens is the part of CacheWriteTokens written to the
	// one-hour cache (usage.cache_creation), which costs twice the input
	// price rather than the five-minute cache's CacheWrite.
	CacheWrite1hTokens int64 `json:"cache_write_1h_tokens,omitempty"`
	// WebSearches and WebFetches are the API's server-side tool uses
	// (usage.server_tool_use); searches carry a fee per use.
	WebSearches int64 `json:"web_search_requests,omitempty"`
	WebFetches  int64 `json:"web_fetch_requests,omitempty"`
	// CostUSD includes HeldUSD, so everything that reads the cost sees
	// what the budget sees.
	CostUSD float64 `json:"cost_usd"`
	// HeldTokens and HeldUSD are reservations: the most the calls in
	// flight may cost, and the whole reservation of every call whose
	// answer told no usage (a hang-up, a cut or unreadable answer, a proxy
	// that stopped mid-call). They are charged as if spent; a call's
	// reservation is replaced by its real usage when its answer is read.
	HeldTokens int64   `json:"held_tokens,omitempty"`
	HeldUSD    float64 `json:"held_usd,omitempty"`
	// Unsettled counts the calls charged their whole reservation.
	Unsettled int64 `json:"unsettled_calls,omitempty"`
}

// Tokens is every token billed or held: input (fresh, cache writes and
// cache reads), output, and reservations. Budgets in tokens count this.
func (u Usage) Tokens() int64 {
	return u.InputTokens + u.OutputTokens + u.CacheWriteTokens + u.CacheReadTokens + u.HeldTokens
}

// Add sums v into u.
func (u *Usage) Add(v Usage) {
	u.Calls += v.Calls
	u.InputTokens += v.InputTokens
	u.OutputTokens += v.OutputTokens
	u.CacheWriteTokens += v.CacheWriteTokens
	u.CacheReadTokens += v.CacheReadTokens
	u.CacheWrite1hTokens += v.CacheWrite1hTokens
	u.WebSearches += v.WebSearches
	u.WebFetches += v.WebFetches
	u.CostUSD += v.CostUSD
	u.HeldTokens += v.HeldTokens
	u.HeldUSD += v.HeldUSD
	u.Unsettled += v.Unsettled
}

// Price is what a model costs, in US dollars per million tokens. Model is
// a prefix of the API's model name ("claude-sonnet-4" covers
// "claude-sonnet-4-20250514"); "*" prices every model no entry names.
// WebSearch is the server-side web search fee in dollars per 1,000
// searches; zero means DefaultWebSearchPer1000, the API's $10.
type Price struct {
	Model      string  `json:"model"`
	Input      float64 `json:"input"`
	Output     float64 `json:"output"`
	CacheWrite float64 `json:"cache_write"`
	CacheRead  float64 `json:"cache_read"`
	WebSearch  float64 `json:"web_search,omitempty"`
}

// cacheWrite1hFactor: a write to the one-hour prompt cache costs twice
// the input price (the five-minute cache's, CacheWrite, is 1.25 times).
const cacheWrite1hFactor = 2.0

// DefaultWebSearchPer1000 is the API's web search fee: $10 per 1,000
// searches, whatever the model.
const DefaultWebSearchPer1000 = 10.0

// webSearchFee is the price of one search.
func (p Price) webSearchFee() float64 {
	if p.WebSearch > 0 {
		return p.WebSearch / 1000
	}
	return DefaultWebSearchPer1000 / 1000
}

// Long-context rates: a call whose input passes longContext tokens (the
// 1M-token context window) is billed twice the input prices and 1.5 times
// the output price. Only models with that window take such input, so the
// rule is applied whatever the model.
const (
	longContext       = 200_000
	longContextInput  = 2.0
	longContextOutput = 1.5
)

// DefaultPrices is the README's price table (a test keeps the two the
// same); fleet.hcl's price blocks override or add entries. A model no
// entry names is priced as the dearest, so a USD budget errs on the side
// of stopping early.
var DefaultPrices = []Price{
	{Model: "claude-opus-4-5", Input: 5, Output: 25, CacheWrite: 6.25, CacheRead: 0.50},
	{Model: "claude-opus-4", Input: 15, Output: 75, CacheWrite: 18.75, CacheRead: 1.50},
	{Model: "claude-sonnet-4", Input: 3, Output: 15, CacheWrite: 3.75, CacheRead: 0.30},
	{Model: "claude-3-7-sonnet", Input: 3, Output: 15, CacheWrite: 3.75, CacheRead: 0.30},
	{Model: "claude-haiku-4-5", Input: 1, Output: 5, CacheWrite: 1.25, CacheRead: 0.10},
	{Model: "claude-3-5-haiku", Input: 0.80, Output: 4, CacheWrite: 1, CacheRead: 0.08},
	{Model: "*", Input: 15, Output: 75, CacheWrite: 18.75, CacheRead: 1.50},
}

// MergePrices is base with over's entries replacing those of the same
// model and the rest added.
func MergePrices(base, over []Price) []Price {
	out := append([]Price(nil), base...)
	for _, o := range over {
		replaced := false
		for i := range out {
			if out[i].Model == o.Model {
				out[i], replaced = o, true
			}
		}
		if !replaced {
			out = append(out, o)
		}
	}
	return out
}

// ValidatePrices refuses a table a budget could not be trusted with.
func ValidatePrices(ps []Price) error {
	seen := map[string]bool{}
	for _, p := range ps {
		if p.Model == "" {
			return fmt.Errorf("price: the model is empty")
		}
		if seen[p.Model] {
			return fmt.Errorf("price %q is given twice", p.Model)
		}
		seen[p.Model] = true
		for _, v := range []float64{p.Input, p.Output, p.CacheWrite, p.CacheRead, p.WebSearch} {
			if v < 0 || math.IsNaN(v) || math.IsInf(v, 0) || v > 1e6 {
				return fmt.Errorf("price %q: %v dollars per million tokens is not a price", p.Model, v)
			}
		}
	}
	return nil
}

// PriceFor picks the entry whose model prefix is the longest match, or
// "*".
func PriceFor(ps []Price, model string) (Price, bool) {
	best, found := Price{}, false
	for _, p := range ps {
		if p.Model != "*" && strings.HasPrefix(model, p.Model) && (!found || len(p.Model) > len(best.Model)) {
			best, found = p, true
		}
	}
	if found {
		return best, true
	}
	for _, p := range ps {
		if p.Model == "*" {
			return p, true
		}
	}
	return Price{}, false
}

// priceOrDearest is PriceFor, or for a model no entry prices (a table
// without "*") the dearest rate of each kind in the table: a budget errs
// on the side of stopping early.
func priceOrDearest(ps []Price, model string) Price {
	if p, ok := PriceFor(ps, model); ok {
		return p
	}
	d := Price{Model: "*"}
	for _, p := range ps {
		d.Input, d.Output = max(d.Input, p.Input), max(d.Output, p.Output)
		d.CacheWrite, d.CacheRead = max(d.CacheWrite, p.CacheWrite), max(d.CacheRead, p.CacheRead)
		d.WebSearch = max(d.WebSearch, p.WebSearch)
	}
	return d
}

// Cost prices u's tokens and search fees (one call's usage: the
// long-context rates apply to a call whose input passed longContext).
func (p Price) Cost(u Usage) float64 {
	in, out := 1.0, 1.0
	if u.InputTokens+u.CacheWriteTokens+u.CacheReadTokens > longContext {
		in, out = longContextInput, longContextOutput
	}
	long := min(max(u.CacheWrite1hTokens, 0), u.CacheWriteTokens) // the one-hour cache's writes
	return (float64(u.InputTokens)*p.Input*in+float64(u.OutputTokens)*p.Output*out+
		float64(u.CacheWriteTokens-long)*p.CacheWrite*in+float64(long)*max(p.CacheWrite, cacheWrite1hFactor*p.Input)*in+
		float64(u.CacheReadTokens)*p.CacheRead*in)/1e6 +
		float64(u.WebSearches)*p.webSearchFee()
}

// Budget caps a machine's spend; zero fields are no cap.
type Budget struct {
	Tokens int64   `json:"tokens,omitempty"`
	USD    float64 `json:"usd,omitempty"`
}

// IsZero says there is no cap.
func (b Budget) IsZero() bool { return b.Tokens == 0 && b.USD == 0 }

// Reached says whether u has used up b, and how, in words for the agent
// and the audit log.
func (b Budget) Reached(u Usage) (bool, string) {
	if b.Tokens > 0 && u.Tokens() >= b.Tokens {
		return true, fmt.Sprintf("%d of its %d-token budget used", u.Tokens(), b.Tokens)
	}
	if b.USD > 0 && u.CostUSD >= b.USD {
		return true, fmt.Sprintf("$%.4f of its $%.2f budget used", u.CostUSD, b.USD)
	}
	return false, ""
}

// Validate refuses caps that are not amounts.
func (b Budget) Validate() error {
	if b.Tokens < 0 {
		return fmt.Errorf("a token budget of %d is below zero", b.Tokens)
	}
	if b.USD < 0 || math.IsNaN(b.USD) || math.IsInf(b.USD, 0) {
		return fmt.Errorf("a budget of $%v is not an amount", b.USD)
	}
	return nil
}

// SpendConfig is spend.json: the machine's budget and the prices its
// cost is counted at.
type SpendConfig struct {
	Budget Budget  `json:"budget"`
	Prices []Price `json:"prices"`
}

// LoadSpendConfig reads dir's spend.json; a machine without one has no
// budget and the default prices.
func LoadSpendConfig(dir string) (SpendConfig, error) {
	b, err := os.ReadFile(filepath.Join(dir, SpendFile))
	if os.IsNotExist(err) {
		return SpendConfig{Prices: DefaultPrices}, nil
	}
	if err != nil {
		return SpendConfig{}, err
	}
	var c SpendConfig
	if err := json.Unmarshal(b, &c); err != nil {
		return SpendConfig{}, fmt.Errorf("%s: %w", SpendFile, err)
	}
	if c.Prices == nil {
		c.Prices = DefaultPrices
	}
	return c, nil
}

// LoadUsage reads what dir's proxy has counted (zero before any call).
func LoadUsage(dir string) (Usage, error) {
	var u Usage
	b, err := os.ReadFile(filepath.Join(dir, UsageFile))
	if os.IsNotExist(err) {
		return u, nil
	}
	if err != nil {
		return u, err
	}
	if err := json.Unmarshal(b, &u); err != nil {
		return Usage{}, fmt.Errorf("%s: %w", UsageFile, err)
	}
	return u, nil
}

// Reservation is the most one call may cost, held against the budget from
// before it is forwarded until its answer settles it.
type Reservation struct {
	Tokens int64
	USD    float64
}

// Admits says whether a call reserving r may start with u already spent or
// held, and if not why, in words for the agent and the audit log.
func (b Budget) Admits(u Usage, r Reservation) (bool, string) {
	if done, why := b.Reached(u); done {
		return false, why
	}
	if b.Tokens > 0 && u.Tokens()+r.Tokens > b.Tokens {
		return false, fmt.Sprintf("%d of its %d-token budget used or held, and this call may use up to %d more", u.Tokens(), b.Tokens, r.Tokens)
	}
	if b.USD > 0 && u.CostUSD+r.USD > b.USD {
		return false, fmt.Sprintf("$%.4f of its $%.2f budget used or held, and this call may cost up to $%.4f more", u.CostUSD, b.USD, r.USD)
	}
	return true, ""
}

// Meter keeps one machine's usage: in memory for the proxy server's life,
// and in usage.json after every change, reservations included, so a
// restarted server (or the controller) reads the same numbers and a call
// in flight when a server stopped stays charged.
type Meter struct {
	Dir string
	mu  sync.Mutex
	u   Usage
	// loaded says u holds the file's numbers.
	loaded bool
}

// Usage is what the meter has counted and holds. A usage file that
// cannot be read counts as nothing here; Reserve refuses on it.
func (m *Meter) Usage() Usage {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.load()
	return m.u
}

func (m *Meter) load() error {
	if m.loaded {
		return nil
	}
	u, err := LoadUsage(m.Dir)
	if err != nil {
		// Not loaded: a file that cannot be read is never written over
		// with a count that forgot it.
		return fmt.Errorf("reading what this machine has spent: %w", err)
	}
	m.u, m.loaded = u, true
	return nil
}

// save writes the total: the one write path of usage.json.
func (m *Meter) save() error {
	b, _ := json.Marshal(m.u)
	if err := writeAtomic(m.Dir, UsageFile, b); err != nil {
		return fmt.Errorf("saving what this machine has spent: %w", err)
	}
	return nil
}

// Reserve holds r against b if b admits it, and saves the hold before the
// call may go: ok false with why when the budget does not admit it, an
// error when the usage cannot be read or saved (the call must not go).
// Check and hold are one step, so concurrent calls cannot all pass a
// check made before any of them held anything.
func (m *Meter) Reserve(r Reservation, b Budget) (ok bool, why string, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.load(); err != nil {
		return false, "", err
	}
	if ok, why := b.Admits(m.u, r); !ok {
		return false, why, nil
	}
	before := m.u
	m.u.HeldTokens += r.Tokens
	m.u.HeldUSD += r.USD
	m.u.CostUSD += r.USD
	if err := m.save(); err != nil {
		m.u = before
		return false, "", err
	}
	return true, "", nil
}

// Settle ends the call that reserved r. With ok, its reservation is
// replaced by v, the usage its answer reported; without, the whole
// reservation stays charged. Release is Settle for a call that provably
// never reached the API.
func (m *Meter) Settle(r Reservation, v Usage, ok bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.load(); err != nil {
		return err
	}
	if ok {
		m.unhold(r)
		m.u.Add(v)
	} else {
		m.u.Calls++
		m.u.Unsettled++
	}
	return m.save()
}

// Release drops the reservation of a call that was never sent.
func (m *Meter) Release(r Reservation) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.load(); err != nil {
		return err
	}
	m.unhold(r)
	return m.save()
}

func (m *Meter) unhold(r Reservation) {
	m.u.HeldTokens -= r.Tokens
	m.u.HeldUSD -= r.USD
	m.u.CostUSD -= r.USD
	// Sums and differences of floats leave dust, never a real amount.
	if math.Abs(m.u.HeldUSD) < 1e-9 {
		m.u.HeldUSD = 0
	}
	if m.u.CostUSD < 0 && m.u.CostUSD > -1e-9 {
		m.u.CostUSD = 0
	}
}

// Record adds one call's usage and saves the total.
func (m *Meter) Record(v Usage) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.load(); err != nil {
		return err
	}
	m.u.Add(v)
	return m.save()
}

// apiUsage is the usage object of the Messages API.
type apiUsage struct {
	InputTokens      *int64 `json:"input_tokens"`
	OutputTokens     *int64 `json:"output_tokens"`
	CacheWriteTokens *int64 `json:"cache_creation_input_tokens"`
	CacheReadTokens  *int64 `json:"cache_read_input_tokens"`
	CacheCreation    *struct {
		OneHour *int64 `json:"ephemeral_1h_input_tokens"`
	} `json:"cache_creation"`
	ServerToolUse *struct {
		WebSearches *int64 `json:"web_search_requests"`
		WebFetches  *int64 `json:"web_fetch_requests"`
	} `json:"server_tool_use"`
}

// merge takes the counts a usage object carries. The API's counts are
// running totals for the message (message_delta repeats them as they
// grow), so the newest value of each replaces the older, never adds.
func (u *Usage) merge(a *apiUsage) {
	if a == nil {
		return
	}
	set := func(dst *int64, v *int64) {
		if v != nil && *v >= 0 {
			*dst = *v
		}
	}
	set(&u.InputTokens, a.InputTokens)
	set(&u.OutputTokens, a.OutputTokens)
	set(&u.CacheWriteTokens, a.CacheWriteTokens)
	set(&u.CacheReadTokens, a.CacheReadTokens)
	if c := a.CacheCreation; c != nil {
		set(&u.CacheWrite1hTokens, c.OneHour)
	}
	if s := a.ServerToolUse; s != nil {
		set(&u.WebSearches, s.WebSearches)
		set(&u.WebFetches, s.WebFetches)
	}
}

// Counter reads one response's usage as its bytes pass (Write), whether
// server-sent events or one JSON body, holding at most maxEventLine bytes of
// a stream or maxBody of a whole answer. Result prices what it saw, and
// only an answer read to its end tells usage: Done marks that end.
type Counter struct {
	Stream bool
	// Unreadable marks an answer the counter cannot read (an encoding it
	// does not decode): it tells no usage.
	Unreadable bool
	line       []byte
	long       bool // the current line passed maxEventLine and is skipped
	body       bytes.Buffer
	over       bool // the whole body passed maxBody: not counted
	model      string
	usage      Usage
	started    bool // message_start seen
	delta      bool // message_delta seen
	done       bool // the answer was read to its clean end
}

const (
	maxEventLine = 64 << 10
	maxBody      = 16 << 20
)

// Done marks that the answer was read to its end, not cut or abandoned.
func (c *Counter) Done() { c.done = true }

// Write takes the next bytes of the response body.
func (c *Counter) Write(p []byte) (int, error) {
	if !c.Stream {
		if !c.over {
			if c.body.Len()+len(p) > maxBody {
				c.over = true
				c.body = bytes.Buffer{}
			} else {
				c.body.Write(p)
			}
		}
		return len(p), nil
	}
	rest := p
	for len(rest) > 0 {
		i := bytes.IndexByte(rest, '\n')
		chunk := rest
		if i >= 0 {
			chunk = rest[:i]
		}
		if !c.long {
			if len(c.line)+len(chunk) > maxEventLine {
				// Text deltas can be long; usage lives in short events.
				c.long, c.line = true, c.line[:0]
			} else {
				c.line = append(c.line, chunk...)
			}
		}
		if i < 0 {
			break
		}
		if !c.long {
			c.event(c.line)
		}
		c.line, c.long = c.line[:0], false
		rest = rest[i+1:]
	}
	return len(p), nil
}

// event reads one line of an event stream.
func (c *Counter) event(line []byte) {
	data, ok := bytes.CutPrefix(bytes.TrimRight(line, "\r"), []byte("data:"))
	if !ok {
		return
	}
	var ev struct {
		Type    string `json:"type"`
		Message struct {
			Model string    `json:"model"`
			Usage *apiUsage `json:"usage"`
		} `json:"message"`
		Usage *apiUsage `json:"usage"`
	}
	if json.Unmarshal(bytes.TrimSpace(data), &ev) != nil {
		return
	}
	switch ev.Type {
	case "message_start":
		c.model = ev.Message.Model
		c.usage.merge(ev.Message.Usage)
		c.started = true
	case "message_delta":
		c.usage.merge(ev.Usage)
		c.delta = true
	}
}

// Result is the response's usage priced with ps; ok is false when the
// response told none for certain: not read to its end, unreadable, over
// maxBody, or a stream without both its message_start and a
// message_delta (the delta carries the final output count).
func (c *Counter) Result(ps []Price) (u Usage, model string, ok bool) {
	seen := false
	if !c.Stream {
		if c.line = nil; !c.over && c.done && !c.Unreadable {
			var whole struct {
				Model string    `json:"model"`
				Usage *apiUsage `json:"usage"`
			}
			if json.Unmarshal(c.body.Bytes(), &whole) == nil && whole.Usage != nil {
				c.model, seen = whole.Model, true
				c.usage.merge(whole.Usage)
			}
		}
	} else {
		if len(c.line) > 0 && !c.long {
			c.event(c.line) // a last line without its newline
			c.line = c.line[:0]
		}
		seen = c.started && c.delta && c.done && !c.Unreadable
	}
	if !seen {
		return Usage{}, "", false
	}
	u = c.usage
	u.Calls = 1
	u.CostUSD = priceOrDearest(ps, c.model).Cost(u)
	return u, c.model, true
}

// APIError reports whether the answer, read whole, was the API's own
// error object ({"type":"error",...}): the API bills no tokens for a call
// it refused (overloaded, rate-limited, invalid), so its reservation can
// be given back. Anything less certain keeps it.
func (c *Counter) APIError() bool {
	if c.Stream || c.over || !c.done || c.Unreadable {
		return false
	}
	var e struct {
		Type  string `json:"type"`
		Error *struct {
			Type string `json:"type"`
		} `json:"error"`
		Usage json.RawMessage `json:"usage"`
	}
	return json.Unmarshal(c.body.Bytes(), &e) == nil && e.Type == "error" && e.Error != nil && e.Error.Type != "" && e.Usage == nil
}

// SortedPrices is ps by model, "*" last, for printing.
func SortedPrices(ps []Price) []Price {
	out := append([]Price(nil), ps...)
	sort.SliceStable(out, func(i, j int) bool {
		if (out[i].Model == "*") != (out[j].Model == "*") {
			return out[j].Model == "*"
		}
		return out[i].Model < out[j].Model
	})
	return out
}
