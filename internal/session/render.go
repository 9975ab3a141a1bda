package session

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/agentfleet/agentfleet/internal/termsafe"
)

// event is the part of a Claude Code stream-json line that rendering and
// status read.
type event struct {
	Type    string `json:"type"`
	Subtype string `json:"subtype"`
	Model   string `json:"model"`
	Message struct {
		Content []struct {
			Type    string          `json:"type"`
			Text    string          `json:"text"`
			Name    string          `json:"name"`
			Input   json.RawMessage `json:"input"`
			Content json.RawMessage `json:"content"`
			IsError bool            `json:"is_error"`
		} `json:"content"`
	} `json:"message"`
	IsError      bool    `json:"is_error"`
	Result       string  `json:"result"`
	NumTurns     int     `json:"num_turns"`
	TotalCostUSD float64 `json:"total_cost_usd"`
	DurationMS   int64   `json:"duration_ms"`
}

func parseEvent(line []byte) (event, bool) {
	var ev event
	if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &ev) != nil || ev.Type == "" {
		return event{}, false
	}
	return ev, true
}

// Render turns one log line into what a person reads: Claude's text, its
// tool calls in one line each, and the final result; a line that is not
// stream-json (setup output, another agent, an error) is shown as it is.
// It returns "" for events not worth a line. What it returns is safe
// for a terminal (termsafe.Text): the line is the guest's.
func Render(line string) string { return termsafe.Text(render(line)) }

func render(line string) string {
	ev, ok := parseEvent([]byte(line))
	if !ok {
		return line
	}
	switch ev.Type {
	case "system":
		if ev.Subtype == "init" {
			return "● session started" + map[bool]string{true: " (" + ev.Model + ")", false: ""}[ev.Model != ""]
		}
		return ""
	case "assistant":
		var out []string
		for _, c := range ev.Message.Content {
			switch c.Type {
			case "text":
				if t := strings.TrimSpace(c.Text); t != "" {
					out = append(out, t)
				}
			case "tool_use":
				out = append(out, "→ "+c.Name+" "+summarizeInput(c.Input))
			}
		}
		return strings.Join(out, "\n")
	case "user":
		for _, c := range ev.Message.Content {
			if c.Type == "tool_result" && c.IsError {
				return "  ✗ tool error: " + clip(rawText(c.Content), 200)
			}
		}
		return ""
	case "result":
		cost := ""
		if ev.TotalCostUSD > 0 {
			cost = fmt.Sprintf(", $%.4f", ev.TotalCostUSD)
		}
		if ev.IsError || ev.Subtype != "success" {
			return fmt.Sprintf("✗ failed after %d turn(s)%s: %s", ev.NumTurns, cost, clip(firstNonEmpty(ev.Result, ev.Subtype), 400))
		}
		return fmt.Sprintf("✓ done in %d turn(s)%s", ev.NumTurns, cost)
	}
	return ""
}

// summarizeInput shows a tool call's most telling argument.
func summarizeInput(raw json.RawMessage) string {
	var in map[string]any
	if json.Unmarshal(raw, &in) != nil {
		return ""
	}
	for _, k := range []string{"command", "file_path", "path", "pattern", "url", "description"} {
		if v, ok := in[k].(string); ok && v != "" {
			return clip(strings.ReplaceAll(v, "\n", " "), 120)
		}
	}
	return ""
}

func rawText(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	return string(raw)
}

func clip(s string, n int) string {
	s = strings.TrimSpace(s)
	if len([]rune(s)) <= n {
		return s
	}
	return string([]rune(s)[:n]) + "…"
}

func firstNonEmpty(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
