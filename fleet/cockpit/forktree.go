package cockpit

// maxTreeLead is how many ancestor columns a fork's tree prefix draws:
// a deep chain of forks still leaves its name room in the cell.
const maxTreeLead = 3

// forkTree orders rows so each fork comes right after the machine it was
// forked from (a fork of a fork under its parent), keeping the given
// order among siblings and among top-level rows, and sets each row's
// Tree prefix. A fork whose source is not among rows (destroyed, another
// fleet, filtered out) is at the top level. Every row comes out once,
// whatever ForkOf says: a cycle is broken at its first row.
func forkTree(rows []Row) []Row {
	at := make(map[string]int, len(rows))
	for i, r := range rows {
		at[key(r.Fleet, r.Name)] = i
	}
	parent := make([]int, len(rows))
	children := make([][]int, len(rows))
	for i, r := range rows {
		parent[i] = -1
		if p, ok := at[key(r.Fleet, r.ForkOf)]; ok && r.ForkOf != "" && p != i {
			parent[i] = p
			children[p] = append(children[p], i)
		}
	}
	out := make([]Row, 0, len(rows))
	seen := make([]bool, len(rows))
	// An explicit stack: a chain of forks as long as the fleet does not
	// recurse that deep.
	type visit struct {
		i    int
		lead []string // the ancestors' columns: "│ " or "  "
		last bool
		top  bool
	}
	walk := func(root int) {
		stack := []visit{{i: root, top: true}}
		for len(stack) > 0 {
			v := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			if seen[v.i] {
				continue
			}
			seen[v.i] = true
			r := rows[v.i]
			r.Tree = ""
			var lead []string
			if !v.top {
				r.Tree = treeLead(v.lead)
				if v.last {
					r.Tree += "└ "
				} else {
					r.Tree += "├ "
				}
				lead = append(append([]string(nil), v.lead...), "│ ")
				if v.last {
					lead[len(lead)-1] = "  "
				}
			}
			out = append(out, r)
			var kids []int
			for _, c := range children[v.i] {
				if !seen[c] {
					kids = append(kids, c)
				}
			}
			// Pushed last first, so they come out in order.
			for k := len(kids) - 1; k >= 0; k-- {
				stack = append(stack, visit{i: kids[k], lead: lead, last: k == len(kids)-1})
			}
		}
	}
	start := cycleStarts(parent)
	for i := range rows {
		if parent[i] < 0 || start[i] {
			walk(i)
		}
	}
	return out
}

// cycleStarts marks the first row of each cycle of parent links: it is
// where that cycle's tree starts, as if its source were gone.
func cycleStarts(parent []int) []bool {
	const (
		unseen = iota
		onPath
		done
	)
	state := make([]int, len(parent))
	start := make([]bool, len(parent))
	var path []int
	for i := range parent {
		path = path[:0]
		j := i
		for j >= 0 && state[j] == unseen {
			state[j] = onPath
			path = append(path, j)
			j = parent[j]
		}
		if j >= 0 && state[j] == onPath {
			// The path went round: the cycle is the path from j on.
			first := j
			for k := len(path) - 1; path[k] != j; k-- {
				first = min(first, path[k])
			}
			start[first] = true
		}
		for _, k := range path {
			state[k] = done
		}
	}
	return start
}

// treeLead draws at most maxTreeLead of the ancestors' columns, the
// nearest ones.
func treeLead(lead []string) string {
	if len(lead) > maxTreeLead {
		lead = lead[len(lead)-maxTreeLead:]
	}
	s := ""
	for _, l := range lead {
		s += l
	}
	return s
}
