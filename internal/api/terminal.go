package api

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// A guest's serial console is written by the guest: whatever it prints
// reaches anyone who looks at it. Shown raw on a terminal, escape
// sequences can rewrite the screen (ESC [2J), hide or fake lines (CR,
// cursor movement), set the window title, write the clipboard (OSC 52)
// or, on some terminals, answer back as if typed. EscapeTerminal is the
// one place such text is made safe to display; everything that shows
// console output (kvm-hostd's escaped console, the provider's errors)
// goes through it.

// EscapeTerminal returns b as valid UTF-8 text in which no character can
// control a terminal: every control character except newline and tab
// (C0 including ESC and CR, DEL, and C1 U+0080–U+009F) is written as
// visible text: `\x1b`, `\x0d`, `\x7f`, `\u009b`. Bidirectional
// formatting characters and the Unicode line and paragraph separators
// are escaped the same way (`\u202e`), as they reorder or break lines
// the reader sees. Bytes that are not valid UTF-8 are dropped: they have
// no meaning as text, and a terminal might read them as C1 controls.
//
// A backslash is kept as it is, so the result is for reading, not a
// reversible encoding: a guest that prints `\x1b` literally looks the
// same as one that printed ESC. Escaping escaped text changes nothing.
func EscapeTerminal(b []byte) string {
	var sb strings.Builder
	sb.Grow(len(b))
	for len(b) > 0 {
		r, n := utf8.DecodeRune(b)
		switch {
		case r == utf8.RuneError && n <= 1:
			// invalid UTF-8: dropped
		case r == '\n' || r == '\t':
			sb.WriteRune(r)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&sb, `\x%02x`, r)
		case r >= 0x80 && r <= 0x9f, isBidiOrSeparator(r):
			fmt.Fprintf(&sb, `\u%04x`, r)
		default:
			sb.Write(b[:n])
		}
		b = b[n:]
	}
	return sb.String()
}

// isBidiOrSeparator is a character that reorders or splits the visible
// text without being a control character: the bidirectional embeddings,
// overrides, isolates and marks, and U+2028/U+2029.
func isBidiOrSeparator(r rune) bool {
	return r == 0x061c || r == 0x200e || r == 0x200f || (r >= 0x2028 && r <= 0x202e) || (r >= 0x2066 && r <= 0x2069)
}

// QuoteLines escapes text (see EscapeTerminal) and starts every line with
// prefix, so quoted guest output cannot pass for the message around it
// (a fake "Error:" line) and its end is plain to see.
func QuoteLines(text, prefix string) string {
	lines := strings.Split(strings.TrimRight(EscapeTerminal([]byte(text)), "\n"), "\n")
	for i := range lines {
		lines[i] = prefix + lines[i]
	}
	return strings.Join(lines, "\n")
}
