package fleet

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/agentfleet/agentfleet/internal/egress"
	"github.com/agentfleet/agentfleet/internal/layout"
	"github.com/agentfleet/agentfleet/internal/vm"
)

// Spend is what a machine's agents used through the credential proxy,
// against its budget.
type Spend struct {
	egress.Usage
	Budget egress.Budget `json:"budget"`
	// Reached says the proxy refuses the next call.
	Reached bool `json:"budget_reached,omitempty"`
}

// MachineSpend reads m's counts and budget (nil without a credential
// proxy: then nothing was measured).
func MachineSpend(m *Machine) (*Spend, error) {
	if m.Network == nil || m.Network.Credentials != CredentialsProxy {
		return nil, nil
	}
	u, err := egress.LoadUsage(m.Dir)
	if err != nil {
		return nil, err
	}
	cfg, err := egress.LoadSpendConfig(m.Dir)
	if err != nil {
		return nil, err
	}
	reached, _ := cfg.Budget.Reached(u)
	return &Spend{Usage: u, Budget: cfg.Budget, Reached: reached}, nil
}

// TotalSpend sums machines' spend.
func TotalSpend(ss []*Spend) egress.Usage {
	var t egress.Usage
	for _, s := range ss {
		if s != nil {
			t.Add(s.Usage)
		}
	}
	return t
}

// Spend is m's spend as its credential proxy counted it (nil: it has
// none), brought here first from where m runs when that is another host
// (a Slurm node's proxies count there).
func (nt Net) Spend(ctx context.Context, m *Machine) (*Spend, error) {
	sp, err := MachineSpend(m)
	if err != nil || sp == nil {
		return sp, err
	}
	if _, remote := nt.c.Driver.(vm.RemoteFolder); !remote {
		return sp, nil
	}
	spec := nt.c.spec(m, vm.Seed{})
	if ds, err := nt.c.Driver.Status(ctx, spec); err != nil || ds.Power != vm.PowerOn {
		return sp, nil // what it counted before it ended is here
	}
	if err := vm.PullFiles(ctx, nt.c.Driver, spec, layout.UsageFile); err != nil {
		return sp, nil
	}
	return MachineSpend(m)
}

// ChangeBudget applies change to the budget of the named machines (or
// all). Every new budget is computed and checked before any is written;
// the proxy reads it on the agent's next call.
func (nt Net) ChangeBudget(ctx context.Context, names []string, all bool, change BudgetChanger) ([]*Machine, []egress.Budget, error) {
	unlock, _, ms, err := nt.c.lockSelected(ctx, names, all)
	if err != nil {
		return nil, nil, err
	}
	defer unlock()
	cfgs := make([]egress.SpendConfig, len(ms))
	for i, m := range ms {
		if m.Network == nil || m.Network.Credentials != CredentialsProxy {
			return nil, nil, fmt.Errorf("%s does not use the credential proxy, which is what counts and caps spend (spawn with --credentials proxy)", m.Name)
		}
		cfg, err := egress.LoadSpendConfig(m.Dir)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", m.Name, err)
		}
		if cfg.Budget, err = change(cfg.Budget); err != nil {
			return nil, nil, err
		}
		cfgs[i] = cfg
	}
	out := make([]egress.Budget, len(ms))
	for i, m := range ms {
		if err := saveSpend(m.Dir, cfgs[i]); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", m.Name, err)
		}
		if err := vm.PushFiles(ctx, nt.c.Driver, nt.c.spec(m, vm.Seed{}), layout.SpendFile); err != nil {
			return nil, nil, fmt.Errorf("%s: the budget is saved here but did not reach its node: %w", m.Name, err)
		}
		out[i] = cfgs[i].Budget
	}
	return ms, out, nil
}

// BudgetChange is one edit of a budget: set or raise the token cap, the
// dollar cap, or remove both.
type BudgetChange struct {
	Tokens, Raise bool // which cap; add rather than set
	N             float64
	None          bool
}

// ParseBudgetChange reads fleet net budget's amount: "+N" raises the
// token cap by N, "N" sets it, "+$N" and "$N" the dollar cap, "none"
// removes both. N may end in k or M for tokens (250k, 2M).
func ParseBudgetChange(s string) (BudgetChange, error) {
	orig := s
	bad := func() (BudgetChange, error) {
		return BudgetChange{}, fmt.Errorf("budget %q: want +N or N tokens (250k, 2M), +$N or $N dollars, or none", orig)
	}
	if strings.EqualFold(s, "none") {
		return BudgetChange{None: true}, nil
	}
	var c BudgetChange
	s, c.Raise = strings.CutPrefix(s, "+")
	var dollars bool
	s, dollars = strings.CutPrefix(s, "$")
	if !dollars {
		s, dollars = strings.CutSuffix(strings.ToLower(s), "usd")
	}
	c.Tokens = !dollars
	mult := 1.0
	if c.Tokens {
		switch {
		case strings.HasSuffix(s, "k"), strings.HasSuffix(s, "K"):
			s, mult = s[:len(s)-1], 1e3
		case strings.HasSuffix(s, "m"), strings.HasSuffix(s, "M"):
			s, mult = s[:len(s)-1], 1e6
		}
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || s == "" || !strings.ContainsAny(s[:1], "0123456789.") || math.IsNaN(v) || math.IsInf(v, 0) || v < 0 || (c.Raise && v == 0) {
		return bad()
	}
	c.N = v * mult
	if c.Tokens && (c.N != math.Trunc(c.N) || c.N > 1e15) {
		return bad()
	}
	if !c.Tokens && c.N > 1e9 {
		return bad()
	}
	return c, nil
}

// Apply makes the new budget.
func (c BudgetChange) Apply(b egress.Budget) (egress.Budget, error) {
	switch {
	case c.None:
		return egress.Budget{}, nil
	case c.Tokens && c.Raise:
		if b.Tokens == 0 {
			return b, errors.New("there is no token budget to raise: set one with N (not +N)")
		}
		b.Tokens += int64(c.N)
	case c.Tokens:
		b.Tokens = int64(c.N)
	case c.Raise:
		if b.USD == 0 {
			return b, errors.New("there is no dollar budget to raise: set one with $N (not +$N)")
		}
		b.USD += c.N
	default:
		b.USD = c.N
	}
	return b, b.Validate()
}

// SetBudget is the change that sets the caps b gives (run --budget-*),
// keeping the other.
func SetBudget(b egress.Budget) BudgetChanger {
	return func(old egress.Budget) (egress.Budget, error) {
		if b.Tokens != 0 {
			old.Tokens = b.Tokens
		}
		if b.USD != 0 {
			old.USD = b.USD
		}
		return old, old.Validate()
	}
}

// BudgetChanger makes a new budget from the old.
type BudgetChanger func(egress.Budget) (egress.Budget, error)
