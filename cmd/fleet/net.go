package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/agentfleet/agentfleet/fleet"
	"github.com/agentfleet/agentfleet/fleet/cockpit"
	"github.com/agentfleet/agentfleet/internal/egress"
	"github.com/agentfleet/agentfleet/internal/termsafe"
	"github.com/spf13/cobra"
)

func newNetCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "net",
		Short: "See and change what running machines may reach",
		Long: `With --egress allowlist (the default) a machine has no route out: its only
way out is a proxy on the host that allows named domains, refuses private,
loopback, link-local, CGNAT and metadata addresses whatever a name resolves
to, and logs every decision. The policy lives on the host; nothing in the
guest can change it. These commands change it for running machines, with
no restart.`,
		Example: `  fleet net ls
  fleet net allow pypi.org myproj-1
  fleet net allow '*.pythonhosted.org' --all
  fleet net deny github.com --all
  fleet net log -f myproj-1
  fleet net budget myproj-1 +500k`,
	}
	cmd.AddCommand(newNetChangeCmd(g, "allow"), newNetChangeCmd(g, "deny"), newNetLogCmd(g), newNetLsCmd(g), newNetBudgetCmd(g))
	return cmd
}

func newNetChangeCmd(g *globals, verb string) *cobra.Command {
	var all bool
	cmd := &cobra.Command{
		Use:   verb + " DOMAIN [VM...|--all]",
		Short: map[string]string{"allow": "Let machines reach a domain (exact, or *.suffix)", "deny": "Stop machines reaching a domain, cutting open connections"}[verb],
		Example: fmt.Sprintf(`  fleet net %s registry.npmjs.org myproj-1
  fleet net %s '*.githubusercontent.com' --all`, verb, verb),
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			pattern, names := args[0], args[1:]
			if _, err := egress.ParsePattern(pattern); err != nil {
				return err
			}
			if err := machineArgs(names, all); err != nil {
				return err
			}
			c, err := g.controller(cmd)
			if err != nil {
				return err
			}
			defer c.Close()
			var ms []*fleet.Machine
			if verb == "allow" {
				ms, err = c.Net().AllowHost(cmd.Context(), names, all, pattern)
			} else {
				ms, err = c.Net().ChangePolicy(cmd.Context(), names, all, func(p egress.Policy) (egress.Policy, error) { return p.WithDenied(pattern) })
			}
			if err != nil {
				return err
			}
			for _, m := range ms {
				fmt.Fprintf(cmd.ErrOrStderr(), "%s: %s %s\n", m.Name, map[string]string{"allow": "allowed", "deny": "denied"}[verb], pattern)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "every machine of the fleet")
	return cmd
}

func newNetLsCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "ls",
		Short:   "Each machine's egress mode, credentials and allowlist",
		Example: "  fleet net ls\n  fleet net ls --json | jq '.[].allow'",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.controller(cmd)
			if err != nil {
				return err
			}
			defer c.Close()
			s, err := c.Store().Load()
			if err != nil {
				return err
			}
			type row struct {
				Name        string   `json:"name"`
				Egress      string   `json:"egress"`
				Credentials string   `json:"credentials"`
				Allow       []string `json:"allow"`
				Deny        []string `json:"deny"`
			}
			rows := []row{}
			for _, m := range s.Machines {
				p, err := fleet.Policy(m)
				if err != nil {
					return fmt.Errorf("%s: %w", m.Name, err)
				}
				creds := string(fleet.CredentialsEnv)
				if m.Network != nil {
					creds = string(m.Network.Credentials)
				}
				rows = append(rows, row{m.Name, string(p.Mode), creds, p.Allow, append([]string{}, p.Deny...)})
			}
			if asJSON {
				return printJSON(cmd, rows)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tEGRESS\tCREDENTIALS\tALLOW\tDENY")
			for _, r := range rows {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.Name, r.Egress, r.Credentials, dash(strings.Join(r.Allow, " ")), dash(strings.Join(r.Deny, " ")))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newNetLogCmd(g *globals) *cobra.Command {
	var follow, asJSON bool
	cmd := &cobra.Command{
		Use:   "log VM",
		Short: "Every egress and credential-proxy decision for a machine",
		Example: `  fleet net log myproj-1
  fleet net log -f myproj-1
  fleet net log --json myproj-1 | jq 'select(.verdict=="deny")'`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, ms, err := g.machines(cmd, args, false)
			if err != nil {
				return err
			}
			defer c.Close()
			out, flush := forPerson(cmd.OutOrStdout())
			defer flush()
			// A machine on a Slurm node: its proxies log there. What was
			// pulled before is shown if the node cannot be reached now.
			stop, err := c.Net().PullAudit(cmd.Context(), ms[0], follow)
			defer stop()
			if err != nil {
				fmt.Fprintf(cmd.ErrOrStderr(), "fleet: %v; showing the log as last pulled\n", err)
			}
			return tailAudit(cmd.Context(), ms[0].Dir, follow, asJSON, out)
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new decisions until interrupted")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the log's JSON lines")
	return cmd
}

// tailAudit prints the log a line at a time, then with follow polls it
// for more: the proxy server is another process, so there is nothing to
// subscribe to.
func tailAudit(ctx context.Context, dir string, follow, asJSON bool, w io.Writer) error {
	return egress.Tail(ctx, dir, follow, 300*time.Millisecond, func(line []byte) error {
		if asJSON {
			_, err := w.Write(line)
			return err
		}
		return egress.ReadEntries(bytes.NewReader(line), func(e egress.Entry) { fmt.Fprintln(w, termsafe.Line(e.String())) })
	})
}

func newNetBudgetCmd(g *globals) *cobra.Command {
	var all, asJSON bool
	cmd := &cobra.Command{
		Use:   "budget [VM...|--all] [AMOUNT]",
		Short: "Show or change what machines' agents may spend on the model API",
		Long: `Without an amount, shows each machine's tokens and cost as the credential
proxy counted them from the API's answers, its budget, and the total.
With one, changes the budget of the named machines (or --all); the proxy
applies it to the agent's next call:
  +N    raise the token cap by N (250k, 2M)     N     set it
  +$N   raise the dollar cap by N               $N    set it
  none  remove both caps
A machine past its cap gets each call answered with a 400 in the API's
error shape, saying the budget is reached; nothing goes upstream.`,
		Example: `  fleet net budget
  fleet net budget myproj-1 +500k
  fleet net budget --all '+$2'
  fleet net budget myproj-2 none
  fleet net budget --json | jq .total.cost_usd`,
		RunE: func(cmd *cobra.Command, args []string) error {
			names, amount := args, ""
			if n := len(args); n > 0 {
				// An amount parses, or is a mistyped one (+..., $...); anything
				// else is a machine's name (which may start with a digit).
				if _, err := fleet.ParseBudgetChange(args[n-1]); err == nil || strings.HasPrefix(args[n-1], "+") || strings.HasPrefix(args[n-1], "$") {
					names, amount = args[:n-1], args[n-1]
				}
			}
			c, err := g.controller(cmd)
			if err != nil {
				return err
			}
			defer c.Close()
			if amount == "" {
				return showBudgets(cmd, c, names, all, asJSON)
			}
			change, err := fleet.ParseBudgetChange(amount)
			if err != nil {
				return err
			}
			if err := machineArgs(names, all); err != nil {
				return err
			}
			ms, budgets, err := c.Net().ChangeBudget(cmd.Context(), names, all, change.Apply)
			if err != nil {
				return err
			}
			for i, m := range ms {
				fmt.Fprintf(cmd.ErrOrStderr(), "%s: budget %s\n", m.Name, budgetText(budgets[i]))
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "every machine of the fleet")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON (with the amount: nothing changes)")
	return cmd
}

func budgetText(b egress.Budget) string {
	var parts []string
	if b.Tokens > 0 {
		parts = append(parts, cockpit.HumanTokens(b.Tokens)+" tokens")
	}
	if b.USD > 0 {
		parts = append(parts, cockpit.Dollars(b.USD))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, " and ")
}

func showBudgets(cmd *cobra.Command, c *fleet.Controller, names []string, all, asJSON bool) error {
	s, err := c.Store().Load()
	if err != nil {
		return err
	}
	ms := s.Machines
	if len(names) > 0 || all {
		if ms, err = c.Select(s, names, all); err != nil {
			return err
		}
	}
	type row struct {
		Name  string       `json:"name"`
		Spend *fleet.Spend `json:"spend"`
	}
	rows := []row{}
	var spends []*fleet.Spend
	for _, m := range ms {
		sp, err := c.Net().Spend(cmd.Context(), m)
		if err != nil {
			return fmt.Errorf("%s: %w", m.Name, err)
		}
		rows = append(rows, row{m.Name, sp})
		spends = append(spends, sp)
	}
	total := fleet.TotalSpend(spends)
	if asJSON {
		return printJSON(cmd, map[string]any{"machines": rows, "total": total})
	}
	tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tCALLS\tINPUT\tOUTPUT\tCACHE\tTOKENS\tCOST\tBUDGET")
	for _, r := range rows {
		if r.Spend == nil {
			fmt.Fprintf(tw, "%s\t-\t-\t-\t-\t-\t-\tnot measured (no credential proxy)\n", r.Name)
			continue
		}
		sp := r.Spend
		b := budgetText(sp.Budget)
		if sp.Reached {
			b += " (reached)"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Name, sp.Calls, cockpit.HumanTokens(sp.InputTokens), cockpit.HumanTokens(sp.OutputTokens),
			cockpit.HumanTokens(sp.CacheWriteTokens+sp.CacheReadTokens), cockpit.HumanTokens(sp.Tokens()), cockpit.Dollars(sp.CostUSD), b)
	}
	fmt.Fprintf(tw, "TOTAL\t%d\t%s\t%s\t%s\t%s\t%s\t\n", total.Calls, cockpit.HumanTokens(total.InputTokens), cockpit.HumanTokens(total.OutputTokens),
		cockpit.HumanTokens(total.CacheWriteTokens+total.CacheReadTokens), cockpit.HumanTokens(total.Tokens()), cockpit.Dollars(total.CostUSD))
	return tw.Flush()
}
