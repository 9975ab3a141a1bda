package egress

import "testing"

// Only the credential proxy's own budget refusal counts as one: a guest
// can put the words in a host name or a path, and an allowed call's
// reason is never a refusal.
func TestBudgetReachedIsTheCredentialProxysRefusalOnly(t *testing.T) {
	for _, c := range []struct {
		e    Entry
		want bool
	}{
		{Entry{Proxy: ProxyCredentials, Verdict: VerdictDeny, Reason: BudgetReason + ": 1000 of its 1000-token budget"}, true},
		{Entry{Proxy: ProxyEgress, Verdict: VerdictDeny, Reason: BudgetReason, Host: "budget.reached"}, false},
		{Entry{Proxy: ProxyCredentials, Verdict: VerdictAllow, Reason: BudgetReason}, false},
		{Entry{Proxy: ProxyCredentials, Verdict: VerdictDeny, Reason: "bad token: " + BudgetReason}, false},
		{Entry{Proxy: "Credentials", Verdict: VerdictDeny, Reason: BudgetReason}, false},
		{Entry{Proxy: ProxyCredentials, Verdict: "DENY", Reason: BudgetReason}, false},
	} {
		if got := c.e.BudgetReached(); got != c.want {
			t.Errorf("%+v: BudgetReached %v, want %v", c.e, got, c.want)
		}
	}
}

func TestParseKindNamesOnlyTheTwoProxies(t *testing.T) {
	for name, want := range map[string]byte{ProxyEgress: KindEgress, ProxyCredentials: KindCredentials} {
		if k, err := ParseKind(name); err != nil || k != want || kindName(k) != name {
			t.Errorf("%s: %d %v", name, k, err)
		}
	}
	for _, bad := range []string{"", "EGRESS", "egress ", "credentials\x00", "../egress"} {
		if _, err := ParseKind(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
