// Package termsafetest holds what the tests of every place that shows
// guest text throw at it, and the check of what came out.
package termsafetest

import (
	"fmt"
	"unicode/utf8"
)

// Hostile is what a guest uses against a terminal: erase the line, set
// the window title, a C1 CSI (as a character and as a bare byte), a
// right-to-left override, a carriage return that overwrites the line.
var Hostile = []string{"\x1b[2K", "\x1b]0;owned\x07", "\u009b2J", "\x9b2J", "\u202e", "\rwarning: forged"}

// RawControl reports the first byte or character in s that a terminal
// would act on rather than print.
func RawControl(s string) (string, bool) {
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n <= 1,
			r < 0x20 && r != '\n' && r != '\t', r == 0x7f,
			r >= 0x80 && r <= 0x9f,
			r >= 0x202a && r <= 0x202e, r >= 0x2066 && r <= 0x2069:
			return fmt.Sprintf("%q at %d", s[i:i+n], i), true
		}
		i += n
	}
	return "", false
}
