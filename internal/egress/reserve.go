package egress

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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
	start, end int64
}

// maxNesting bounds how deep a request body may nest; a real one nests a
// few levels.
const maxNesting = 128

var errDuplicateKey = errors.New("a JSON object names a member twice")

// parseRequest reads a request body strictly: one JSON object, no member
// named twice anywhere (parsers differ on which one wins), nothing after
// it. Member names match exactly, as the API matches them.
func parseRequest(body []byte) (*apiRequest, error) {
	r := &apiRequest{body: body}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, errors.New("the body is not a JSON object")
	}
	seen := map[string]bool{}
	for dec.More() {
		kt, err := dec.Token()
		if err != nil {
			return nil, err
		}
		key := kt.(string)
		if seen[key] {
			return nil, fmt.Errorf("%w (%s)", errDuplicateKey, printable(key))
		}
		seen[key] = true
		start := dec.InputOffset()
		switch key {
		case "tools", "mcp_servers", "thinking", "model", "max_tokens", "container":
			v, err := decodeValue(dec, 1)
			if err != nil {
				return nil, err
			}
			r.take(key, v)
		default:
			if err := r.walk(dec, 1); err != nil {
				return nil, err
			}
		}
		r.fields = append(r.fields, rawField{key, start, dec.InputOffset()})
	}
	if _, err := dec.Token(); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("the body has more after its JSON object")
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

// count reads a token count: a non-negative number, capped; anything else
// is 0 (not given).
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

// walk reads one value without keeping it, noting the blocks that matter:
// URL sources the API would fetch, images and documents, one-hour cache.
func (r *apiRequest) walk(dec *json.Decoder, depth int) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	return r.walkFrom(dec, tok, depth)
}

func (r *apiRequest) walkFrom(dec *json.Decoder, tok json.Token, depth int) error {
	d, ok := tok.(json.Delim)
	if !ok {
		return nil
	}
	if depth > maxNesting {
		return fmt.Errorf("the body nests deeper than %d levels", maxNesting)
	}
	if d == '[' {
		for dec.More() {
			if err := r.walk(dec, depth+1); err != nil {
				return err
			}
		}
		_, err := dec.Token()
		return err
	}
	keys := map[string]bool{}
	var typ, url, ttl string
	for dec.More() {
		kt, err := dec.Token()
		if err != nil {
			return err
		}
		k := kt.(string)
		if keys[k] {
			return fmt.Errorf("%w (%s)", errDuplicateKey, printable(k))
		}
		keys[k] = true
		vt, err := dec.Token()
		if err != nil {
			return err
		}
		if s, ok := vt.(string); ok {
			switch k {
			case "type":
				typ = s
			case "url":
				url = s
			case "ttl":
				ttl = s
			}
		}
		if err := r.walkFrom(dec, vt, depth+1); err != nil {
			return err
		}
	}
	switch {
	case typ == "url" && keys["url"]:
		r.URLs = append(r.URLs, url)
	case typ == "image":
		r.Images++
	case typ == "document":
		r.Documents++
	}
	if ttl == "1h" {
		r.LongCache = true
	}
	_, err := dec.Token()
	return err
}

// decodeValue decodes one value whole, refusing a member named twice.
func decodeValue(dec *json.Decoder, depth int) (any, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	return decodeFrom(dec, tok, depth)
}

func decodeFrom(dec *json.Decoder, tok json.Token, depth int) (any, error) {
	d, ok := tok.(json.Delim)
	if !ok {
		return tok, nil
	}
	if depth > maxNesting {
		return nil, fmt.Errorf("the body nests deeper than %d levels", maxNesting)
	}
	if d == '[' {
		out := []any{}
		for dec.More() {
			v, err := decodeValue(dec, depth+1)
			if err != nil {
				return nil, err
			}
			out = append(out, v)
		}
		_, err := dec.Token()
		return out, err
	}
	out := map[string]any{}
	for dec.More() {
		kt, err := dec.Token()
		if err != nil {
			return nil, err
		}
		k := kt.(string)
		if _, dup := out[k]; dup {
			return nil, fmt.Errorf("%w (%s)", errDuplicateKey, printable(k))
		}
		if out[k], err = decodeValue(dec, depth+1); err != nil {
			return nil, err
		}
	}
	_, err := dec.Token()
	return out, err
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
		b.Write(bytes.TrimLeft(r.body[f.start:f.end], " \t\r\n:"))
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
