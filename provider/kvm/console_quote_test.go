package kvm

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/hashicorp/terraform-plugin-framework/diag"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/client"
)

// A guest that never gets an address and fills its console with terminal
// escapes: the wait_for_ip error quotes the console escaped, each line
// prefixed, and bounded.
func TestWaitForIPTimeoutQuotesConsoleEscaped(t *testing.T) {
	hostile := strings.Repeat("noise\n", 100) + strings.Repeat("\x1b[2J", 3000) + "\n" +
		"\x1b]52;c;cm0gLXJmIH4=\x07\a\x00\xc2\x9b31m\xff\rError: fake provider message\n"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch r.URL.Path {
		case "/v1/vms/web":
			_ = json.NewEncoder(w).Encode(api.VM{Name: "web", State: api.StateRunning,
				VMSpec: api.VMSpec{Interfaces: []api.VMInterface{{Network: "lan", MAC: "52:54:00:00:00:01"}}}})
		case "/v1/vms/web/console":
			// A host that ignores escape=true: raw text must not get through either.
			_ = json.NewEncoder(w).Encode(api.Console{VM: "web", Text: hostile})
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	cl, err := client.New(client.Options{Endpoint: srv.URL, RetryMax: 1, RetryWaitMin: time.Millisecond, RetryWaitMax: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	var diags diag.Diagnostics
	if vm := waitForIP(context.Background(), &FleetHost{Name: "h", Client: cl}, "web", 500*time.Millisecond, &diags); vm != nil {
		t.Fatalf("got a VM: %+v", vm)
	}
	if len(diags) != 1 {
		t.Fatalf("diagnostics: %v", diags)
	}
	msg := diags[0].Detail()
	quoted := msg[strings.Index(msg, "control characters escaped):\n")+len("control characters escaped):\n"):]
	if !utf8.ValidString(msg) || len(quoted) > consoleQuoteBytes+consoleQuoteLines*len(consoleQuotePrefix)+16 {
		t.Fatalf("quoted %d bytes: %q", len(quoted), quoted)
	}
	for i := 0; i < len(msg); i++ {
		if c := msg[i]; (c < 0x20 && c != '\n') || c == 0x7f {
			t.Fatalf("control byte %#x in %q", c, msg)
		}
	}
	lines := strings.Split(quoted, "\n")
	for _, l := range lines {
		if !strings.HasPrefix(l, consoleQuotePrefix) {
			t.Fatalf("line without prefix %q in %q", l, quoted)
		}
	}
	// JSON carries the invalid byte as U+FFFD: printable, so kept.
	if last := lines[len(lines)-1]; last != `console| \x1b]52;c;cm0gLXJmIH4=\x07\x07\x00\u009b31m`+"\ufffd"+`\x0dError: fake provider message` {
		t.Fatalf("last line %q", last)
	}
	if !strings.HasPrefix(lines[0], "console| [...] ") {
		t.Fatalf("a cut quote does not say so: %q", lines[0])
	}
}

func TestQuoteConsoleShort(t *testing.T) {
	if got := quoteConsole("a\nb\r\n"); got != "console| a\nconsole| b\\x0d" {
		t.Fatalf("%q", got)
	}
}
