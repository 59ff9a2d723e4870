package client

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// VMConsole asks for the escaped form, and escapes what a host that does
// not know escape=true (an older kvm-hostd) returns raw.
func TestVMConsoleIsEscaped(t *testing.T) {
	for _, hostEscapes := range []bool{true, false} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Query().Get("escape") != "true" || r.URL.Query().Get("bytes") != "100" {
				t.Errorf("query %q", r.URL.RawQuery)
			}
			c := api.Console{VM: "vm", Text: "ok\x1b[2J\x1b]52;c;eA==\x07"}
			if hostEscapes {
				c.Text, c.Escaped = api.EscapeTerminal([]byte(c.Text)), true
			}
			_ = json.NewEncoder(w).Encode(c)
		}))
		c, err := fastClient(t, srv.URL).VMConsole(context.Background(), "vm", 100)
		srv.Close()
		if err != nil || c.Text != `ok\x1b[2J\x1b]52;c;eA==\x07` || !c.Escaped {
			t.Fatalf("host escapes %v: %+v %v", hostEscapes, c, err)
		}
	}
}
