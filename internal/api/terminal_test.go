package api

import (
	"strings"
	"testing"
)

func TestEscapeTerminal(t *testing.T) {
	for _, c := range []struct{ name, in, want string }{
		{"plain text", "login: root\n\tok", "login: root\n\tok"},
		{"CSI colour", "\x1b[31mred\x1b[0m", `\x1b[31mred\x1b[0m`},
		{"OSC 52 clipboard write", "\x1b]52;c;ZWNobyBwd25lZA==\x07", `\x1b]52;c;ZWNobyBwd25lZA==\x07`},
		{"OSC title with ST", "\x1b]0;root@host\x1b\\", `\x1b]0;root@host\x1b\`},
		{"screen clear", "\x1b[2J\x1b[H", `\x1b[2J\x1b[H`},
		{"BEL", "ding\a", `ding\x07`},
		{"NUL", "a\x00b", `a\x00b`},
		{"DEL", "a\x7fb", `a\x7fb`},
		{"C1 CSI", "\xc2\x9b2J", `\u009b2J`},
		{"C1 OSC and ST", "\xc2\x9d52;c;eA==\xc2\x9c", `\u009d52;c;eA==\u009c`},
		{"raw C1 byte is invalid UTF-8", "a\x9b2Jb", "a2Jb"},
		{"invalid UTF-8", "ok\xff\xfe\xc3(é", "ok(é"},
		{"truncated rune at the end", "abc\xe2\x82", "abc"},
		{"CR overwriting a line", "password ok\rFAILED     ", `password ok\x0dFAILED     `},
		{"CRLF", "line\r\n", "line\\x0d\n"},
		{"backspace", "abc\b\b\bxyz", `abc\x08\x08\x08xyz`},
		{"bidi override", "a\u202edcba", `a\u202edcba`},
		{"line separator", "a\u2028b", `a\u2028b`},
		{"printable unicode", "Grüße 日本 😀", "Grüße 日本 😀"},
		{"escaped text is unchanged", `\x1b[2J`, `\x1b[2J`},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := EscapeTerminal([]byte(c.in)); got != c.want {
				t.Fatalf("EscapeTerminal(%q) = %q, want %q", c.in, got, c.want)
			}
			if got := EscapeTerminal([]byte(EscapeTerminal([]byte(c.in)))); got != c.want {
				t.Fatalf("escaping twice: %q", got)
			}
		})
	}
}

func TestQuoteLines(t *testing.T) {
	got := QuoteLines("boot\n\x1b[2JError: fake\r\nlast\n", "console| ")
	want := "console| boot\nconsole| \\x1b[2JError: fake\\x0d\nconsole| last"
	if got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	if got := QuoteLines("", "| "); got != "| " {
		t.Fatalf("empty: %q", got)
	}
	if strings.Contains(QuoteLines("a\u2028Error: b", "| "), "\u2028") {
		t.Fatal("a line separator splits a quoted line")
	}
}
