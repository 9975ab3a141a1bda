// Package termsafe is the one sanitizer for text that came from a guest
// (or a registry) on its way to a person: a terminal, an error message, a
// desktop notification. Nothing a guest wrote reaches a host terminal raw:
// control bytes, escape sequences, C1 controls, bidirectional overrides
// and invalid UTF-8 are shown as visible escapes, so text can neither move
// the cursor, erase what fleet printed, set a window title, nor reorder a
// line on screen.
package termsafe

import (
	"fmt"
	"io"
	"strings"
	"unicode/utf8"
)

// Text cleans s for one line or more of terminal output: newlines and
// tabs stay, every other control is escaped.
func Text(s string) string { return clean(s, true) }

// Line cleans s for a single line: newlines and carriage returns are
// escaped too, so a guest string cannot start a line of its own (a
// forged "warning:" under fleet's).
func Line(s string) string { return clean(s, false) }

// Bytes is Text for a byte slice.
func Bytes(b []byte) string { return clean(string(b), true) }

// Markup cleans s as Line does and escapes the characters that
// notification daemons read as markup (notify-send bodies are a subset
// of HTML), so a guest string cannot style or link a notification.
func Markup(s string) string {
	s = Line(s)
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&quot;", "'", "&#39;").Replace(s)
}

// Safe reports whether s would come out of Text unchanged.
func Safe(s string) bool {
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && n <= 1 || unsafe(r, true) {
			return false
		}
		i += n
	}
	return true
}

func clean(s string, multiline bool) string {
	if multiline && Safe(s) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n <= 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case !unsafe(r, multiline):
			b.WriteString(s[i : i+n])
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r == 0x1b:
			b.WriteString(`\e`)
		case r < 0x100:
			fmt.Fprintf(&b, `\x%02x`, r)
		default:
			fmt.Fprintf(&b, `\u%04x`, r)
		}
		i += n
	}
	return b.String()
}

// unsafe reports whether r could change what a terminal shows beyond
// printing itself.
func unsafe(r rune, multiline bool) bool {
	switch {
	case r == '\n' || r == '\t':
		return !multiline
	case r < 0x20 || r == 0x7f: // C0 controls (ESC, BEL, BS, CR...) and DEL
		return true
	case r >= 0x80 && r <= 0x9f: // C1 controls: CSI, OSC, DCS as single code points
		return true
	case r == 0x061c || r == 0x200e || r == 0x200f: // bidi marks
		return true
	case r >= 0x202a && r <= 0x202e: // bidi embeddings and overrides
		return true
	case r >= 0x2066 && r <= 0x2069: // bidi isolates
		return true
	case r == 0x2028 || r == 0x2029: // line and paragraph separators
		return true
	case r == 0xfeff || r == 0xfff9 || r == 0xfffa || r == 0xfffb: // BOM, interlinear annotations
		return true
	}
	return false
}

// Writer cleans a stream as Text does before it reaches w. A multi-byte
// character split across writes is held until it is whole.
type Writer struct {
	w       io.Writer
	pending []byte
}

// NewWriter returns a Writer onto w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// Write implements io.Writer; it reports len(p) when the cleaned bytes
// were all written.
func (c *Writer) Write(p []byte) (int, error) {
	buf := append(c.pending, p...)
	// Hold back an incomplete trailing character (at most 3 bytes).
	cut := len(buf)
	for k := 1; k <= 3 && k <= len(buf); k++ {
		b := buf[len(buf)-k]
		if b < 0x80 {
			break
		}
		if utf8.RuneStart(b) {
			if !utf8.FullRune(buf[len(buf)-k:]) {
				cut = len(buf) - k
			}
			break
		}
	}
	c.pending = append([]byte(nil), buf[cut:]...)
	if _, err := io.WriteString(c.w, clean(string(buf[:cut]), true)); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Flush writes out a held partial character (escaped: it never completed).
func (c *Writer) Flush() error {
	if len(c.pending) == 0 {
		return nil
	}
	_, err := io.WriteString(c.w, clean(string(c.pending), true))
	c.pending = nil
	return err
}

// JSON makes encoded JSON safe to show: every rune a terminal would act
// on that encoding/json leaves as it is (DEL, C1 controls, bidirectional
// overrides, line separators) becomes a \u escape. The result is the same
// JSON value, so `fleet ls --json | jq` reads what it always did.
func JSON(b []byte) []byte {
	var out []byte
	for i := 0; i < len(b); {
		r, n := utf8.DecodeRune(b[i:])
		if r >= 0x7f && !(r == utf8.RuneError && n <= 1) && unsafe(r, true) {
			if out == nil {
				out = append(make([]byte, 0, len(b)+16), b[:i]...)
			}
			out = fmt.Appendf(out, `\u%04x`, r)
		} else if out != nil {
			out = append(out, b[i:i+n]...)
		}
		i += n
	}
	if out == nil {
		return b
	}
	return out
}
