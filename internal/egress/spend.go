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

	"github.com/agentfleet/agentfleet/internal/vm"
)

// Spend is measured where the guest cannot touch it: the credential
// proxy reads the token counts the model API itself reports in each
// response (streamed or whole), prices them, and refuses a machine's
// next call once its budget is reached.

// Files of the meter in a machine's folder.
const (
	SpendFile = vm.SpendFile // budget and prices: written by the controller
	UsageFile = vm.UsageFile // what was counted: written by the proxy server only
)

// Usage is what one machine's calls used, as the API reported it.
type Usage struct {
	Calls            int64   `json:"calls"`
	InputTokens      int64   `json:"input_tokens"`
	OutputTokens     int64   `json:"output_tokens"`
	CacheWriteTokens int64   `json:"cache_write_tokens"`
	CacheReadTokens  int64   `json:"cache_read_tokens"`
	CostUSD          float64 `json:"cost_usd"`
}

// Tokens is every token billed: input (fresh, cache writes and cache
// reads) and output. Budgets in tokens count this.
func (u Usage) Tokens() int64 {
	return u.InputTokens + u.OutputTokens + u.CacheWriteTokens + u.CacheReadTokens
}

// Add sums v into u.
func (u *Usage) Add(v Usage) {
	u.Calls += v.Calls
	u.InputTokens += v.InputTokens
	u.OutputTokens += v.OutputTokens
	u.CacheWriteTokens += v.CacheWriteTokens
	u.CacheReadTokens += v.CacheReadTokens
	u.CostUSD += v.CostUSD
}

// Price is what a model costs, in US dollars per million tokens. Model is
// a prefix of the API's model name ("claude-sonnet-4" covers
// "claude-sonnet-4-20250514"); "*" prices every model no entry names.
type Price struct {
	Model      string  `json:"model"`
	Input      float64 `json:"input"`
	Output     float64 `json:"output"`
	CacheWrite float64 `json:"cache_write"`
	CacheRead  float64 `json:"cache_read"`
}

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
		for _, v := range []float64{p.Input, p.Output, p.CacheWrite, p.CacheRead} {
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

// Cost prices u's tokens.
func (p Price) Cost(u Usage) float64 {
	return (float64(u.InputTokens)*p.Input + float64(u.OutputTokens)*p.Output +
		float64(u.CacheWriteTokens)*p.CacheWrite + float64(u.CacheReadTokens)*p.CacheRead) / 1e6
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

// Meter keeps one machine's usage: in memory for the proxy server's life,
// and in usage.json after every call, so a restarted server (or the
// controller) reads the same numbers.
type Meter struct {
	Dir string
	mu  sync.Mutex
	u   Usage
	// loaded says u holds the file's numbers.
	loaded bool
}

// Usage is what the meter has counted.
func (m *Meter) Usage() Usage {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.load()
	return m.u
}

func (m *Meter) load() {
	if !m.loaded {
		m.u, _ = LoadUsage(m.Dir)
		m.loaded = true
	}
}

// Record adds one call's usage and saves the total.
func (m *Meter) Record(v Usage) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.load()
	m.u.Add(v)
	b, _ := json.Marshal(m.u)
	return writeAtomic(m.Dir, UsageFile, b)
}

// apiUsage is the usage object of the Messages API.
type apiUsage struct {
	InputTokens      *int64 `json:"input_tokens"`
	OutputTokens     *int64 `json:"output_tokens"`
	CacheWriteTokens *int64 `json:"cache_creation_input_tokens"`
	CacheReadTokens  *int64 `json:"cache_read_input_tokens"`
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
}

// Counter reads one response's usage as its bytes pass (Write), whether
// server-sent events or one JSON body, holding at most maxEventLine bytes of
// it. Result prices what it saw.
type Counter struct {
	Stream bool
	line   []byte
	long   bool // the current line passed maxEventLine and is skipped
	body   bytes.Buffer
	over   bool // the whole body passed maxBody: not counted
	model  string
	usage  Usage
	seen   bool
}

const (
	maxEventLine = 64 << 10
	maxBody      = 16 << 20
)

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
		c.seen = true
	case "message_delta":
		c.usage.merge(ev.Usage)
		c.seen = true
	}
}

// Result is the response's usage priced with ps; ok is false when the
// response carried none.
func (c *Counter) Result(ps []Price) (u Usage, model string, ok bool) {
	if !c.Stream {
		if c.line = nil; !c.over {
			var whole struct {
				Model string    `json:"model"`
				Usage *apiUsage `json:"usage"`
			}
			if json.Unmarshal(c.body.Bytes(), &whole) == nil && whole.Usage != nil {
				c.model, c.seen = whole.Model, true
				c.usage.merge(whole.Usage)
			}
		}
	} else if len(c.line) > 0 && !c.long {
		c.event(c.line) // a last line without its newline
		c.line = c.line[:0]
	}
	if !c.seen {
		return Usage{}, "", false
	}
	u = c.usage
	u.Calls = 1
	if p, found := PriceFor(ps, c.model); found {
		u.CostUSD = p.Cost(u)
	}
	return u, c.model, true
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
