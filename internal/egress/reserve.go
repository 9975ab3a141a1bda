package egress

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
)

// apiRequest is what the credential proxy reads of a Messages API body
// (a message call or a token count): enough to price its worst case and to
// find every part that makes the API reach the network.
type apiRequest struct {
	body   []byte
	fields []rawField // the top-level members, in order

	Model          string
	MaxTokens      int64 // 0: not given
	ThinkingBudget int64
	Tools          []any // each decoded strictly; nil without
	MCPServers     []any
	Container      bool // a code execution container is named
	Images         int  // image blocks anywhere
	Documents      int  // document blocks anywhere
	URLs           []string
	LongCache      bool   // a cache_control asks for the one-hour cache
	Malformed      string // why a member that is checked is not in its shape

	toolsChanged bool
}

type rawField struct {
	key        string
	start, end int64 // the value's bytes
}

// maxNesting bounds how deep a request body may nest; a real one nests a
// few levels.
const maxNesting = 128

var errDuplicateKey = errors.New("a JSON object names a member twice")

// parseRequest reads a request body strictly: one valid JSON object, no
// member named twice anywhere (parsers differ on which one wins). Member
// names match exactly, as the API matches them. One pass over the bytes
// notes what matters in every object (see scan); only the small
// top-level members are decoded.
func parseRequest(body []byte) (*apiRequest, error) {
	if !json.Valid(body) {
		return nil, errors.New("the body is not valid JSON")
	}
	r := &apiRequest{body: body}
	if err := r.scan(); err != nil {
		return nil, err
	}
	for _, f := range r.fields {
		switch f.key {
		case "tools", "mcp_servers", "thinking", "model", "max_tokens", "container":
			dec := json.NewDecoder(bytes.NewReader(body[f.start:f.end]))
			dec.UseNumber()
			var v any
			if err := dec.Decode(&v); err != nil {
				return nil, fmt.Errorf("reading %s: %w", printable(f.key), err)
			}
			r.take(f.key, v)
		}
	}
	return r, nil
}

func (r *apiRequest) take(key string, v any) {
	switch key {
	case "model":
		r.Model, _ = v.(string)
	case "max_tokens":
		r.MaxTokens = count(v)
	case "thinking":
		if m, ok := v.(map[string]any); ok {
			r.ThinkingBudget = count(m["budget_tokens"])
		}
	case "tools", "mcp_servers":
		l, ok := v.([]any)
		if !ok && v != nil {
			r.Malformed = key + " is not a list"
		}
		if key == "tools" {
			r.Tools = l
		} else {
			r.MCPServers = l
		}
	case "container":
		r.Container = v != nil
	}
}

// count reads a token count: a positive number, capped; anything else is
// 0 (not given).
func count(v any) int64 {
	n, ok := v.(json.Number)
	if !ok {
		return 0
	}
	f, err := n.Float64()
	if err != nil || math.IsNaN(f) || f <= 0 {
		return 0
	}
	return int64(math.Ceil(min(f, 1e12)))
}

// scanFrame is one object or array open during scan.
type scanFrame struct {
	obj       bool
	keys      map[string]bool
	key       string // the member being read
	expectKey bool
	typ, url  string
	hasURL    bool
	ttl       string
}

// scan walks the (valid) body once: it refuses a member named twice,
// records the top-level members' value ranges, and notes in every object
// what the API would act on: URL sources it would fetch, image and
// document blocks, the one-hour cache.
func (r *apiRequest) scan() error {
	b := r.body
	var stack []*scanFrame
	valueStart := -1 // of the top-level member being read
	endMember := func(i int) {
		if valueStart >= 0 && len(r.fields) > 0 {
			f := &r.fields[len(r.fields)-1]
			f.start, f.end = int64(valueStart), int64(len(bytes.TrimRight(b[:i], " \t\r\n")))
		}
		valueStart = -1
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		switch c {
		case '{', '[':
			if len(stack) == 1 && valueStart < 0 {
				valueStart = i
			}
			if len(stack) >= maxNesting {
				return fmt.Errorf("the body nests deeper than %d levels", maxNesting)
			}
			stack = append(stack, &scanFrame{obj: c == '{', expectKey: c == '{'})
		case '}', ']':
			top := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			if len(stack) == 0 {
				if !top.obj {
					return errors.New("the body is not a JSON object")
				}
				endMember(i)
				if len(bytes.TrimSpace(b[i+1:])) > 0 {
					return errors.New("the body has more after its JSON object")
				}
				return nil
			}
			if top.obj {
				switch {
				case top.typ == "url" && top.hasURL:
					r.URLs = append(r.URLs, top.url)
				case top.typ == "image":
					r.Images++
				case top.typ == "document":
					r.Documents++
				}
				if top.ttl == "1h" {
					r.LongCache = true
				}
			}
		case ',':
			top := stack[len(stack)-1]
			if len(stack) == 1 {
				endMember(i)
			}
			top.expectKey = top.obj
		case '"':
			j := i + 1
			escaped := false
			for ; b[j] != '"'; j++ {
				if b[j] == '\\' {
					escaped = true
					j++
				}
			}
			raw := b[i : j+1]
			if len(stack) == 0 {
				return errors.New("the body is not a JSON object")
			}
			top := stack[len(stack)-1]
			switch {
			case top.obj && top.expectKey:
				k := unquote(raw, escaped)
				if top.keys == nil {
					top.keys = map[string]bool{}
				}
				if top.keys[k] {
					return fmt.Errorf("%w (%s)", errDuplicateKey, printable(k))
				}
				top.keys[k], top.key, top.expectKey = true, k, false
				if len(stack) == 1 {
					r.fields = append(r.fields, rawField{key: k})
				}
			case top.obj:
				if len(stack) == 1 && valueStart < 0 {
					valueStart = i
				}
				switch top.key {
				case "type":
					top.typ = unquote(raw, escaped)
				case "url":
					top.url, top.hasURL = unquote(raw, escaped), true
				case "ttl":
					top.ttl = unquote(raw, escaped)
				}
			}
			i = j
		case ' ', '\t', '\r', '\n', ':':
		default:
			// A number, true, false or null.
			if len(stack) == 0 {
				return errors.New("the body is not a JSON object")
			}
			if len(stack) == 1 && valueStart < 0 {
				valueStart = i
			}
		}
	}
	return errors.New("the body is not a JSON object")
}

// unquote is a JSON string's value.
func unquote(raw []byte, escaped bool) string {
	if !escaped {
		return string(raw[1 : len(raw)-1])
	}
	var s string
	json.Unmarshal(raw, &s)
	return s
}

// Body is the request to forward: the guest's bytes unchanged unless a
// tool had to be confined, and then only the tools member is rewritten.
func (r *apiRequest) Body() ([]byte, error) {
	if !r.toolsChanged {
		return r.body, nil
	}
	var b bytes.Buffer
	b.WriteByte('{')
	for i, f := range r.fields {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(f.key)
		b.Write(k)
		b.WriteByte(':')
		if f.key == "tools" {
			v, err := json.Marshal(r.Tools)
			if err != nil {
				return nil, fmt.Errorf("encoding the confined tools: %w", err)
			}
			b.Write(v)
			continue
		}
		b.Write(r.body[f.start:f.end])
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// What a reservation allows for that a request's bytes do not show. The
// input bound is the body's size in bytes: a token is never shorter than
// one byte of the text it stands for, and JSON never makes text shorter,
// so no text in the body can count as more tokens than the body has
// bytes. What the API adds or reads beyond the body gets an allowance.
const (
	// DefaultMaxTokens is the output reserved for a call that names no
	// max_tokens: the most any model writes in one call (128k with the
	// API's long-output option). The API refuses such a call, but an
	// upstream that fills in a default would not.
	DefaultMaxTokens = 128_000
	// toolPromptTokens is the system prompt the API adds to a call with
	// tools (a few hundred tokens), with room to spare.
	toolPromptTokens = 2_000
	// typedToolTokens is the definition of each of the API's own tools,
	// which the body names only by type (computer use's is the largest,
	// near 1,200).
	typedToolTokens = 1_500
	// imageTokens is one image: the API scales images to at most about
	// 1,600 tokens' worth of pixels, whatever their bytes.
	imageTokens = 5_000
	// documentTokens is one document: a PDF of up to 100 pages, each read
	// as text and as an image of up to about 3,000 tokens.
	documentTokens = 300_000
	// serverToolUses is the uses reserved for a server-side tool or MCP
	// server without max_uses: about as many turns as the API's server
	// loop takes before it pauses the call.
	serverToolUses = 10
	// serverToolTokens is the input one server-side use may bring in (a
	// page of search results, a fetched document, an MCP tool's answer)
	// when the tool names no max_content_tokens.
	serverToolTokens = 50_000
)

// reservation is the most the call may cost at prices ps: its input bound
// priced at the dearest rate an input token is billed at (fresh or cache
// write, the one-hour cache write when asked for, the long-context rates
// past longContext), max_tokens of output (or the thinking budget if
// larger), and each server tool's uses with their fees. Without server
// tools it is an upper bound; with them the per-use allowances are
// generous estimates, and the answer settles the real cost either way.
func (r *apiRequest) reservation(ps []Price) Reservation {
	in := int64(len(r.body))
	if len(r.Tools) > 0 {
		in += toolPromptTokens
	}
	var searches int64
	for _, t := range r.Tools {
		m, _ := t.(map[string]any)
		typ, _ := m["type"].(string)
		if typ == "" || typ == "custom" {
			continue
		}
		in += typedToolTokens
		uses := count(m["max_uses"])
		if uses == 0 {
			uses = serverToolUses
		}
		per := count(m["max_content_tokens"])
		if per == 0 {
			per = serverToolTokens
		}
		switch {
		case strings.HasPrefix(typ, "web_search_"):
			searches += uses
			in += uses * serverToolTokens
		case strings.HasPrefix(typ, "web_fetch_"):
			in += uses * per
		case strings.HasPrefix(typ, "code_execution_"), typ == "mcp_toolset":
			in += serverToolUses * serverToolTokens
		}
	}
	in += int64(len(r.MCPServers)) * serverToolUses * serverToolTokens
	in += int64(r.Images)*imageTokens + int64(r.Documents)*documentTokens
	out := r.MaxTokens
	if out == 0 {
		out = DefaultMaxTokens
	}
	out = max(out, r.ThinkingBudget)

	p := priceOrDearest(ps, r.Model)
	inRate, outRate := max(p.Input, p.CacheWrite), p.Output
	if r.LongCache {
		inRate = max(inRate, 2*p.Input) // the one-hour cache writes at twice the input price
	}
	if in > longContext {
		inRate, outRate = inRate*longContextInput, outRate*longContextOutput
	}
	usd := (float64(in)*inRate+float64(out)*outRate)/1e6 + float64(searches)*p.webSearchFee()
	return Reservation{Tokens: in + out, USD: usd}
}

// ReservationFor is what the credential proxy reserves for a message call
// with body at prices ps.
func ReservationFor(body []byte, ps []Price) (Reservation, error) {
	r, err := parseRequest(body)
	if err != nil {
		return Reservation{}, err
	}
	return r.reservation(ps), nil
}
