package termsafe

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestTextEscapesWhatATerminalObeys(t *testing.T) {
	cases := map[string]string{
		"plain text\nnext\tcol": "plain text\nnext\tcol",
		"\x1b[2K\x1b[1Aerased":  `\e[2K\e[1Aerased`,
		"\x1b]0;title\x07":      `\e]0;title\x07`,
		"\x1bP+q\x1b\\":         `\eP+q\e\`,
		"a\rb":                  `a\rb`,
		"bs\x08\x08":            `bs\x08\x08`,
		"del\x7f":               `del\x7f`,
		"c1 \u009b2J csi":       `c1 \x9b2J csi`,
		"osc \u009d0;x\u009c":   `osc \x9d0;x\x9c`,
		"bidi \u202egnp.exe":    `bidi \u202egnp.exe`,
		"isolate \u2066x\u2069": `isolate \u2066x\u2069`,
		"ls \u2028sep":          `ls \u2028sep`,
		"bad \xff\xfe utf8":     `bad \xff\xfe utf8`,
		"nul\x00":               `nul\x00`,
		"ünïcödé ✓ 日本":          "ünïcödé ✓ 日本",
		"truncated \xe2\x9c":    `truncated \xe2\x9c`,
		"bom \ufeff":            `bom \ufeff`,
	}
	for in, want := range cases {
		if got := Text(in); got != want {
			t.Errorf("Text(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestLineEscapesNewlines(t *testing.T) {
	if got := Line("name\nwarning: forged"); got != `name\nwarning: forged` {
		t.Fatalf("Line = %q", got)
	}
	if got := Line("a\tb"); got != `a\tb` {
		t.Fatalf("Line = %q", got)
	}
}

// Whatever the input, the output holds no byte a terminal acts on.
func FuzzTextHasNoControls(f *testing.F) {
	f.Add("\x1b[31mred\x1b[0m")
	f.Add("\u009b\u202e\xff")
	f.Fuzz(func(t *testing.T, s string) {
		for _, out := range []string{Text(s), Line(s), Markup(s)} {
			if !utf8.ValidString(out) {
				t.Fatalf("invalid UTF-8 out of %q: %q", s, out)
			}
			for _, r := range out {
				if (r < 0x20 && r != '\n' && r != '\t') || (r >= 0x7f && r <= 0x9f) || (r >= 0x202a && r <= 0x202e) || (r >= 0x2066 && r <= 0x2069) {
					t.Fatalf("control %U survived in %q (from %q)", r, out, s)
				}
			}
		}
		if strings.ContainsAny(Line(s), "\n\r") {
			t.Fatalf("Line kept a newline: %q", Line(s))
		}
	})
}

func TestMarkupEscapesTags(t *testing.T) {
	got := Markup(`<a href="x">click</a> & <b>`)
	if strings.ContainsAny(got, "<>\"") {
		t.Fatalf("Markup left markup: %q", got)
	}
	if got != "&lt;a href=&quot;x&quot;&gt;click&lt;/a&gt; &amp; &lt;b&gt;" {
		t.Fatalf("Markup = %q", got)
	}
}

func TestWriterCleansAStreamSplitAnywhere(t *testing.T) {
	in := "ok ✓ \x1b[2Jgone \u009b日本\xff end"
	want := Text(in)
	for chunk := 1; chunk <= 5; chunk++ {
		var out bytes.Buffer
		w := NewWriter(&out)
		for i := 0; i < len(in); i += chunk {
			j := min(i+chunk, len(in))
			if n, err := w.Write([]byte(in[i:j])); err != nil || n != j-i {
				t.Fatalf("Write = %d, %v", n, err)
			}
		}
		w.Flush()
		if out.String() != want {
			t.Errorf("chunks of %d: %q, want %q", chunk, out.String(), want)
		}
	}
	var out bytes.Buffer
	w := NewWriter(&out)
	w.Write([]byte("cut \xe6\x97"))
	w.Flush()
	if out.String() != `cut \xe6\x97` {
		t.Fatalf("a partial character at the end: %q", out.String())
	}
}

// JSON keeps the value and loses the terminal controls: U+009B (CSI),
// U+202E and DEL pass through encoding/json untouched.
func TestJSONEscapesWhatEncodingJSONLeaves(t *testing.T) {
	in := map[string]string{"state": "ok\u009b2J\u202eevil\x7f ✓"}
	raw, _ := json.Marshal(in)
	got := JSON(raw)
	for _, r := range string(got) {
		if r == 0x9b || r == 0x202e || r == 0x7f {
			t.Fatalf("%U survived: %q", r, got)
		}
	}
	var back map[string]string
	if err := json.Unmarshal(got, &back); err != nil || back["state"] != in["state"] {
		t.Fatalf("the value changed: %q %v", back["state"], err)
	}
	plain := []byte(`{"a":"b ✓"}`)
	if string(JSON(plain)) != string(plain) {
		t.Fatal("safe JSON was rewritten")
	}
}
