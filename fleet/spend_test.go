package fleet

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/agentfleet/agentfleet/internal/egress"
)

func TestBudgetChanges(t *testing.T) {
	start := egress.Budget{Tokens: 1000, USD: 2}
	for _, tc := range []struct {
		in   string
		want egress.Budget
	}{
		{"+500", egress.Budget{Tokens: 1500, USD: 2}},
		{"+250k", egress.Budget{Tokens: 251000, USD: 2}},
		{"2M", egress.Budget{Tokens: 2000000, USD: 2}},
		{"+$1.5", egress.Budget{Tokens: 1000, USD: 3.5}},
		{"$10", egress.Budget{Tokens: 1000, USD: 10}},
		{"+3usd", egress.Budget{Tokens: 1000, USD: 5}},
		{"none", egress.Budget{}},
		{"NONE", egress.Budget{}},
		{"0", egress.Budget{USD: 2}},
	} {
		c, err := ParseBudgetChange(tc.in)
		if err != nil {
			t.Fatalf("%q: %v", tc.in, err)
		}
		got, err := c.Apply(start)
		if err != nil || got != tc.want {
			t.Errorf("%q: %+v %v, want %+v", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"", "+", "+0", "-5", "1.5", "+1.5k5", "abc", "$-1", "NaN", "+Inf", "1e400", "$1e12", "1e16", "$ 1", "++1"} {
		if c, err := ParseBudgetChange(bad); err == nil {
			t.Errorf("%q accepted: %+v", bad, c)
		}
	}
	// Raising a cap that is not there is a mistake, not a new cap.
	for _, in := range []string{"+5", "+$5"} {
		c, _ := ParseBudgetChange(in)
		if _, err := c.Apply(egress.Budget{}); err == nil || !strings.Contains(err.Error(), "no ") {
			t.Errorf("%q on no budget: %v", in, err)
		}
	}
}

func TestProjectBudgetAndPrices(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, ProjectFile), []byte(`
budget {
  usd    = 5
  tokens = 2000000
}
price "claude-sonnet-4" {
  input  = 1
  output = 2
}
price "local" {
  input  = 0
  output = 0
}
notify = "cat > /tmp/x"
`), 0o644)
	p, err := LoadProject(dir)
	if err != nil {
		t.Fatal(err)
	}
	r, err := p.Network(NetworkOverrides{Budget: egress.Budget{USD: 1}})
	if err != nil {
		t.Fatal(err)
	}
	if r.Spend.Budget != (egress.Budget{USD: 1, Tokens: 2000000}) {
		t.Errorf("budget %+v: the flag wins, fleet.hcl fills the rest", r.Spend.Budget)
	}
	if pr, _ := egress.PriceFor(r.Spend.Prices, "claude-sonnet-4-5"); pr.Input != 1 || pr.Output != 2 {
		t.Errorf("price %+v", pr)
	}
	if p.Notify != "cat > /tmp/x" {
		t.Errorf("notify %q", p.Notify)
	}
	if _, err := p.Network(NetworkOverrides{Credentials: "env"}); err == nil || !strings.Contains(err.Error(), "credential proxy") {
		t.Errorf("a budget without the proxy: %v", err)
	}
	for _, src := range []string{
		`budget { usd = -1 }`,
		`budget { tokens = -5 }`,
		"price \"x\" {\n input = -1\n output = 1\n}",
		"price \"x\" {\n input = 1\n output = 1\n}\nprice \"x\" {\n input = 2\n output = 1\n}",
		`price "x" { input = 1 }`,
	} {
		os.WriteFile(filepath.Join(dir, ProjectFile), []byte(src), 0o644)
		if _, err := LoadProject(dir); err == nil {
			t.Errorf("%s accepted", src)
		}
	}
}
