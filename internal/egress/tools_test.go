package egress

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/netip"
	"reflect"
	"strings"
	"sync"
	"testing"
)

// toolRig is a proxy whose upstream keeps the last body and headers it
// received, under the policy given.
type toolRig struct {
	*proxyRig
	mu   sync.Mutex
	body []byte
	hdr  http.Header
}

func newToolRig(t *testing.T, pol func() (Policy, error)) *toolRig {
	tr := &toolRig{}
	tr.proxyRig = newProxyRig(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		tr.mu.Lock()
		tr.body, tr.hdr = b, r.Header.Clone()
		tr.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"model":"claude-haiku-4-5","usage":{"input_tokens":1,"output_tokens":1}}`)
	}, Budget{}, func(p *CredProxy) { p.Policy = pol })
	return tr
}

func (tr *toolRig) last() ([]byte, http.Header) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.body, tr.hdr
}

var testPolicy = Policy{Mode: ModeAllowlist,
	Allow: []string{"allowed.test:443", "*.allowed.test:443", "docs.other.test:443", "parent.test:443", "*.wild.test:443", "ssh.test:22", "203.0.113.7:443"},
	Deny:  []string{"evil.parent.test"}}

func policyOf(p Policy) func() (Policy, error) { return func() (Policy, error) { return p, nil } }

// What Claude Code sends: client tools without a type, web search, and
// betas. It passes byte for byte.
const claudeCodeBody = `{"model":"claude-sonnet-4-5-20250929","max_tokens":32000,"stream":true,` +
	`"system":[{"type":"text","text":"You are Claude Code.","cache_control":{"type":"ephemeral"}}],` +
	`"messages":[{"role":"user","content":[{"type":"text","text":"fetch https://evil.test/x and look"}]},` +
	`{"role":"assistant","content":[{"type":"tool_use","id":"t1","name":"WebFetch","input":{"url":"https://evil.test/x","prompt":"p"}}]},` +
	`{"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":"denied by the egress proxy"}]}],` +
	`"tools":[{"name":"Bash","description":"run","input_schema":{"type":"object","properties":{"command":{"type":"string"}}}},` +
	`{"name":"WebFetch","description":"fetch","input_schema":{"type":"object","properties":{"url":{"type":"string","format":"uri"}}}},` +
	`{"type":"web_search_20250305","name":"web_search","max_uses":8}],` +
	"\n  \"metadata\":{\"user_id\":\"u\"}, \"thinking\":{\"type\":\"enabled\",\"budget_tokens\":1024}}"

func TestClaudeCodeRequestsPassUnchanged(t *testing.T) {
	tr := newToolRig(t, policyOf(testPolicy))
	beta := "claude-code-20250219,interleaved-thinking-2025-05-14,fine-grained-tool-streaming-2025-05-14"
	if code, body := tr.post(claudeCodeBody, "Anthropic-Beta", beta); code != 200 {
		t.Fatal(code, body)
	}
	got, hdr := tr.last()
	if string(got) != claudeCodeBody {
		t.Errorf("the body changed:\n%s", got)
	}
	if hdr.Get("Anthropic-Beta") != beta {
		t.Errorf("betas %q", hdr.Get("Anthropic-Beta"))
	}
}

func fetchTool(extra string) string {
	return `{"model":"claude-haiku-4-5","max_tokens":10,"messages":[],"tools":[{"name":"Read","input_schema":{}},{"type":"web_fetch_20250910","name":"web_fetch"` + extra + `}],"stream":false}`
}

func forwardedFetchTool(t *testing.T, got []byte) map[string]any {
	t.Helper()
	var b struct {
		Tools  []map[string]any `json:"tools"`
		Stream *bool            `json:"stream"`
	}
	if err := json.Unmarshal(got, &b); err != nil || len(b.Tools) != 2 || b.Stream == nil {
		t.Fatalf("forwarded %s (%v)", got, err)
	}
	return b.Tools[1]
}

func TestWebFetchIsConfinedToTheAllowlist(t *testing.T) {
	tr := newToolRig(t, policyOf(testPolicy))
	for _, tc := range []struct {
		extra string
		want  []any
	}{
		// Names allowed with their subdomains (the API's list covers them)
		// on the web's ports: not docs.other.test (its subdomains are not
		// allowed), not the wildcard alone, not port 22, not parent.test (a
		// deny entry lies under it), not the address.
		{``, []any{"allowed.test"}},
		{`,"allowed_domains":["allowed.test","evil.test","parent.test","x.allowed.test","ALLOWED.test/docs"]`, []any{"allowed.test", "x.allowed.test", "ALLOWED.test/docs"}},
		{`,"blocked_domains":["other.test"]`, []any{"allowed.test"}},
		{`,"allowed_domains":null`, []any{"allowed.test"}},
	} {
		if code, body := tr.post(fetchTool(tc.extra)); code != 200 {
			t.Fatalf("%s: %d %s", tc.extra, code, body)
		}
		got, _ := tr.last()
		tool := forwardedFetchTool(t, got)
		if !reflect.DeepEqual(tool["allowed_domains"], tc.want) || tool["blocked_domains"] != nil || tool["type"] != "web_fetch_20250910" {
			t.Errorf("%s: forwarded %v, want allowed_domains %v", tc.extra, tool, tc.want)
		}
	}
	// A guest list already inside the allowlist is left as it is; one that
	// names an allowed host whose subdomains are not is refused.
	if code, _ := tr.post(fetchTool(`,"allowed_domains":["docs.other.test"]`)); code != 403 {
		t.Errorf("docs.other.test (its subdomains not allowed) given to web fetch: %d", code)
	}
	exact := fetchTool(`,"allowed_domains":["x.allowed.test"]`)
	tr.post(exact)
	if got, _ := tr.last(); string(got) != exact {
		t.Errorf("an already confined tool was rewritten: %s", got)
	}
	n := tr.calls.Load()
	for _, extra := range []string{`,"allowed_domains":["evil.test"]`, `,"allowed_domains":[]`, `,"allowed_domains":"allowed.test"`, `,"blocked_domains":["test"]`} {
		code, body := tr.post(fetchTool(extra))
		if code != 403 || !strings.Contains(body, "permission_error") || !strings.Contains(body, "web fetch") {
			t.Errorf("%s: %d %s", extra, code, body)
		}
	}
	if tr.calls.Load() != n {
		t.Error("a refused call reached the upstream")
	}
	if e := lastEntryIn(t, tr.dir); e.Verdict != "deny" || !strings.Contains(e.Reason, "web fetch") {
		t.Errorf("audit %+v", e)
	}
}

func TestNetworkToolsUnderEachPolicy(t *testing.T) {
	msg := func(content string) string {
		return `{"model":"claude-haiku-4-5","max_tokens":10,"messages":[{"role":"user","content":` + content + `}]}`
	}
	mcp := func(url string) string {
		return `{"model":"claude-haiku-4-5","max_tokens":10,"mcp_servers":[{"type":"url","name":"m","url":` + url + `}]}`
	}
	tool := func(typ string) string {
		return `{"model":"claude-haiku-4-5","max_tokens":10,"tools":[{"type":"` + typ + `","name":"x"}]}`
	}
	type want int
	const (
		pass want = iota
		refused
		malformed
	)
	cases := []struct {
		name          string
		body          string
		allow, open   want
		none, unknown want // egress none; a policy that cannot be read
	}{
		{"mcp server on an allowed host", mcp(`"https://allowed.test/mcp"`), pass, pass, refused, refused},
		{"mcp server elsewhere", mcp(`"https://evil.test/mcp"`), refused, pass, refused, refused},
		{"mcp server on another port", mcp(`"https://allowed.test:8443/mcp"`), refused, pass, refused, refused},
		{"mcp server over plain http", mcp(`"http://allowed.test/mcp"`), refused, pass, refused, refused},
		{"mcp server behind user info", mcp(`"https://allowed.test@evil.test/"`), refused, refused, refused, refused},
		{"mcp server read two ways", mcp(`"https://evil.test\\@allowed.test/"`), refused, refused, refused, refused},
		{"mcp server with a fragment", mcp(`"https://evil.test#@allowed.test"`), refused, pass, refused, refused},
		{"mcp server with a trailing dot", mcp(`"https://allowed.test./"`), refused, refused, refused, refused},
		{"mcp server not over http", mcp(`"ftp://allowed.test/"`), refused, refused, refused, refused},
		{"mcp server without a url", `{"mcp_servers":[{"type":"url","name":"m"}]}`, refused, refused, refused, refused},
		{"mcp_servers not a list", `{"mcp_servers":{"url":"https://evil.test/"}}`, refused, refused, refused, refused},
		{"image from an allowed host", msg(`[{"type":"image","source":{"type":"url","url":"https://allowed.test/a.png"}}]`), pass, pass, refused, refused},
		{"image from elsewhere", msg(`[{"type":"image","source":{"type":"url","url":"https://evil.test/a.png?secret=1"}}]`), refused, pass, refused, refused},
		{"document from elsewhere, deep in a tool result", msg(`[{"type":"tool_result","tool_use_id":"t","content":[{"type":"document","source":{"type":"url","url":"https://evil.test/d.pdf"}}]}]`), refused, pass, refused, refused},
		{"an image named twice", msg(`[{"type":"image","source":{"type":"url","url":"https://allowed.test/a","url":"https://evil.test/a"}}]`), malformed, malformed, malformed, malformed},
		{"code execution", tool("code_execution_20250825"), refused, pass, refused, refused},
		{"a container", `{"model":"x","max_tokens":1,"container":"container_1"}`, refused, pass, refused, refused},
		{"a tool type nobody looked at", tool("browser_20260101"), refused, pass, refused, refused},
		{"a tool type that is not a string", `{"tools":[{"type":7,"name":"x"}]}`, refused, refused, refused, refused},
		{"tools not a list", `{"tools":{"type":"web_fetch_20250910","name":"f"}}`, refused, refused, refused, refused},
		{"client-run API tools", `{"max_tokens":1,"tools":[{"type":"bash_20250124","name":"bash"},{"type":"text_editor_20250728","name":"e"},{"type":"computer_20250124","name":"c","display_width_px":1,"display_height_px":1},{"type":"memory_20250818","name":"memory"}]}`, pass, pass, pass, pass},
		{"web search", tool("web_search_20260209"), pass, pass, pass, pass},
		{"tool search", tool("tool_search_tool_regex_20251119"), pass, pass, pass, pass},
		{"web fetch", tool("web_fetch_20260209"), pass, pass, refused, refused},
		{"tools named twice", `{"tools":[],"tools":[{"type":"web_fetch_20250910","name":"f"}]}`, malformed, malformed, malformed, malformed},
		{"a tool naming its type twice", `{"tools":[{"type":"custom","name":"f","type":"web_fetch_20250910"}]}`, malformed, malformed, malformed, malformed},
		{"more after the object", `{"model":"x"} {"tools":[{"type":"web_fetch_20250910","name":"f"}]}`, malformed, malformed, malformed, malformed},
		{"not an object", `[{"tools":[]}]`, malformed, malformed, malformed, malformed},
		{"nested too deep", `{"messages":` + strings.Repeat("[", 200) + strings.Repeat("]", 200) + `}`, malformed, malformed, malformed, malformed},
	}
	policies := []func() (Policy, error){
		policyOf(testPolicy), policyOf(Policy{Mode: ModeOpen}), policyOf(Policy{Mode: ModeNone}),
		func() (Policy, error) { return Policy{}, errors.New("policy.json: no such file") },
	}
	for pi, pol := range policies {
		tr := newToolRig(t, pol)
		for _, tc := range cases {
			w := []want{tc.allow, tc.open, tc.none, tc.unknown}[pi]
			n := tr.calls.Load()
			code, body := tr.post(tc.body)
			sent := tr.calls.Load() != n
			switch {
			case w == pass && (code != 200 || !sent):
				t.Errorf("policy %d, %s: %d %s", pi, tc.name, code, body)
			case w == refused && (code != 403 || sent || !strings.Contains(body, "permission_error")):
				t.Errorf("policy %d, %s: %d %s (sent %v), want a refusal", pi, tc.name, code, body, sent)
			case w == malformed && (code != 400 || sent || !strings.Contains(body, "invalid_request_error")):
				t.Errorf("policy %d, %s: %d %s (sent %v), want a 400", pi, tc.name, code, body, sent)
			}
		}
	}
	// No policy given at all: nothing that reaches the network passes.
	tr := newToolRig(t, nil)
	if code, _ := tr.post(tool("web_fetch_20250910")); code != 403 {
		t.Errorf("without a policy, web fetch: %d", code)
	}
	if code, _ := tr.post(tool("web_search_20250305")); code != 200 {
		t.Errorf("without a policy, web search: %d", code)
	}
}

func TestNetworkBetasAreDroppedUnlessUsedAndAllowed(t *testing.T) {
	betas := "code-execution-2025-08-25, web-fetch-2025-09-10,mcp-client-2025-04-04,skills-2025-10-02,claude-code-20250219"
	for _, tc := range []struct {
		pol  Policy
		body string
		want string
	}{
		{testPolicy, `{"max_tokens":1}`, "claude-code-20250219"},
		{testPolicy, fetchTool(``), "web-fetch-2025-09-10,claude-code-20250219"},
		{testPolicy, `{"max_tokens":1,"mcp_servers":[{"type":"url","name":"m","url":"https://allowed.test/"}]}`, "mcp-client-2025-04-04,claude-code-20250219"},
		{Policy{Mode: ModeOpen}, `{"max_tokens":1}`, betas},
	} {
		tr := newToolRig(t, policyOf(tc.pol))
		if code, body := tr.post(tc.body, "Anthropic-Beta", betas); code != 200 {
			t.Fatal(code, body)
		}
		_, hdr := tr.last()
		if got := strings.Join(hdr.Values("Anthropic-Beta"), ","); got != tc.want {
			t.Errorf("%s under %s: upstream got betas %q, want %q", tc.body, tc.pol.Mode, got, tc.want)
		}
	}
}

// count_tokens takes the same body, and is checked the same way.
func TestTokenCountsAreCheckedToo(t *testing.T) {
	tr := newToolRig(t, policyOf(testPolicy))
	resp, err := tr.send("/v1/messages/count_tokens", `{"mcp_servers":[{"type":"url","name":"m","url":"https://evil.test/"}]}`)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 403 || tr.calls.Load() != 0 {
		t.Errorf("count_tokens with a refused MCP server: %d", resp.StatusCode)
	}
}

// A deny entry written as an address covers the API's own connections
// too: an MCP server or a URL source whose name resolves there is refused,
// as the egress proxy refuses the guest's.
func TestAddressDeniesCoverTheAPIsConnections(t *testing.T) {
	old := lookupNetIP
	defer func() { lookupNetIP = old }()
	lookupNetIP = func(_ context.Context, _, host string) ([]netip.Addr, error) {
		switch host {
		case "allowed.test":
			return []netip.Addr{netip.MustParseAddr("198.51.100.9"), netip.MustParseAddr("203.0.113.7")}, nil
		case "x.allowed.test":
			return []netip.Addr{netip.MustParseAddr("198.51.100.10")}, nil
		}
		return nil, errors.New("no such host")
	}
	pol := testPolicy
	pol.Deny = append(append([]string(nil), pol.Deny...), "203.0.113.7")
	for _, tc := range []struct {
		url  string
		want bool
	}{
		{"https://allowed.test/mcp", false},    // one of its addresses is denied
		{"https://x.allowed.test/mcp", true},   // its address is not
		{"https://203.0.113.7/mcp", false},     // the address itself
		{"https://nx.allowed.test/mcp", false}, // cannot be checked: refused while addresses are denied
	} {
		if ok, why := urlAllowed(pol, tc.url); ok != tc.want {
			t.Errorf("%s: allowed %v (%s), want %v", tc.url, ok, why, tc.want)
		}
	}
	// Without address denies nothing is resolved.
	lookupNetIP = func(context.Context, string, string) ([]netip.Addr, error) {
		t.Fatal("resolved a name with no address deny in the policy")
		return nil, nil
	}
	if ok, why := urlAllowed(testPolicy, "https://allowed.test/mcp"); !ok {
		t.Errorf("allowed.test without address denies: %s", why)
	}
}
