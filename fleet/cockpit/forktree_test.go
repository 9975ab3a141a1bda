package cockpit

import (
	"fmt"
	"strings"
	"testing"

	"github.com/agentfleet/agentfleet/fleet"
)

// rowsOf is fleet p's rows from "name" or "name<source" specs.
func rowsOf(specs ...string) []Row {
	var rs []Row
	for _, s := range specs {
		fl, s, ok := strings.Cut(s, ":")
		if !ok {
			fl, s = "p", fl
		}
		name, src, _ := strings.Cut(s, "<")
		rs = append(rs, Row{Fleet: fl, Name: name, ForkOf: src})
	}
	return rs
}

// drawn is the rows as the name cells show them (another fleet's named
// with it).
func drawn(rs []Row) string {
	var out []string
	for _, r := range rs {
		name := r.Name
		if r.Fleet != "p" {
			name = r.Fleet + ":" + name
		}
		out = append(out, r.Tree+name)
	}
	return strings.Join(out, " | ")
}

func TestForkTreeOrdersForksUnderTheirSource(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []string
		want string
	}{
		{"no forks", []string{"p-1", "p-2"}, "p-1 | p-2"},
		{"none at all", nil, ""},
		{"two children", []string{"p-1", "p-2", "p-3<p-1", "p-4<p-1"}, "p-1 | ├ p-3 | └ p-4 | p-2"},
		{"a fork of a fork", []string{"p-1", "p-2<p-1", "p-3<p-2", "p-4<p-1"},
			"p-1 | ├ p-2 | │ └ p-3 | └ p-4"},
		{"last child's children", []string{"p-1", "p-2<p-1", "p-3<p-2", "p-4<p-2"},
			"p-1 | └ p-2 |   ├ p-3 |   └ p-4"},
		{"source destroyed", []string{"p-2", "p-3<p-1", "p-4<p-3"}, "p-2 | p-3 | └ p-4"},
		{"forked from itself", []string{"p-1<p-1", "p-2"}, "p-1 | p-2"},
		{"a cycle of two", []string{"p-1<p-2", "p-2<p-1", "p-3"}, "p-1 | └ p-2 | p-3"},
		{"a cycle after a row", []string{"p-0", "p-1<p-2", "p-2<p-1"}, "p-0 | p-1 | └ p-2"},
		{"a tail first, then its cycle", []string{"p-1<p-3", "p-2<p-3", "p-3<p-4", "p-4<p-3"}, "p-3 | ├ p-1 | ├ p-2 | └ p-4"},
		{"a cycle of three with a tail", []string{"p-1<p-3", "p-2<p-1", "p-3<p-2", "p-4<p-2"},
			"p-1 | └ p-2 |   ├ p-3 |   └ p-4"},
		{"the source in another fleet", []string{"p-1", "q:p-1", "q:p-2<p-1"}, "p-1 | q:p-1 | └ q:p-2"},
		{"an empty source name", []string{"p-1<", "p-2"}, "p-1 | p-2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs := rowsOf(tc.in...)
			got := forkTree(rs)
			if len(got) != len(rs) {
				t.Fatalf("%d rows in, %d out: %s", len(rs), len(got), drawn(got))
			}
			if d := drawn(got); d != tc.want {
				t.Errorf("got  %s\nwant %s", d, tc.want)
			}
		})
	}
}

// A chain of forks as long as a fleet, and longer, comes out whole, each
// name still in room of its cell.
func TestForkTreeOfADeepChain(t *testing.T) {
	for _, n := range []int{fleet.MaxMachines, 5000} {
		specs := []string{"p-1"}
		for i := 2; i <= n; i++ {
			specs = append(specs, fmt.Sprintf("p-%d<p-%d", i, i-1))
		}
		got := forkTree(rowsOf(specs...))
		if len(got) != n {
			t.Fatalf("%d rows out of %d", len(got), n)
		}
		for i, r := range got {
			if r.Name != fmt.Sprintf("p-%d", i+1) {
				t.Fatalf("row %d is %s", i, r.Name)
			}
			if w := len([]rune(r.Tree)); w > 2*(maxTreeLead+1) {
				t.Fatalf("%s's prefix %q is %d wide", r.Name, r.Tree, w)
			}
		}
		if last := got[n-1].Tree; last != "      └ " {
			t.Errorf("the deepest prefix is %q", last)
		}
	}
	// Every row in one ring: each comes out once.
	var ring []string
	for i := 1; i <= 100; i++ {
		ring = append(ring, fmt.Sprintf("p-%d<p-%d", i, i%100+1))
	}
	if got := forkTree(rowsOf(ring...)); len(got) != 100 || got[0].Name != "p-1" || got[0].Tree != "" {
		t.Fatalf("a ring of 100: %d rows, first %+v", len(got), got[0])
	}
}
