package server

import (
	"bufio"
	"bytes"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// openAPIPaths reads the `paths:` section of openapi.yaml as text (there is
// no YAML dependency): a path is a line indented by two spaces ending in
// ":", its methods are the following lines indented by four spaces.
func openAPIPaths(t *testing.T, doc []byte) map[string][]string {
	t.Helper()
	pathLine := regexp.MustCompile(`^  (/[^\s:]*):\s*$`)
	methodLine := regexp.MustCompile(`^    (get|put|post|patch|delete|head|options|trace):\s*$`)
	paths := map[string][]string{}
	in, seen := false, false
	cur := ""
	sc := bufio.NewScanner(bytes.NewReader(doc))
	for sc.Scan() {
		line := sc.Text()
		if strings.TrimSpace(line) == "" || strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		if !strings.HasPrefix(line, " ") {
			in = strings.TrimRight(line, " ") == "paths:"
			seen = seen || in
			cur = ""
			continue
		}
		if !in {
			continue
		}
		if m := pathLine.FindStringSubmatch(line); m != nil {
			cur = m[1]
			if _, dup := paths[cur]; dup {
				t.Errorf("openapi.yaml: path %s appears twice", cur)
			}
			paths[cur] = nil
			continue
		}
		if m := methodLine.FindStringSubmatch(line); m != nil && cur != "" {
			paths[cur] = append(paths[cur], strings.ToUpper(m[1]))
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if !seen {
		t.Fatal("openapi.yaml has no top-level paths: section")
	}
	return paths
}

func TestOpenAPICoversRoutes(t *testing.T) {
	doc, err := os.ReadFile("openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(doc, OpenAPI) {
		t.Fatal("embedded OpenAPI differs from openapi.yaml")
	}
	if !bytes.HasPrefix(doc, []byte("openapi: 3.0.")) {
		t.Fatal("openapi.yaml does not start with an OpenAPI 3.0 version line")
	}
	src, err := os.ReadFile("server.go")
	if err != nil {
		t.Fatal(err)
	}
	routes := regexp.MustCompile(`v1\("(GET|PUT|PATCH|DELETE|POST) ([^"]+)"`).FindAllStringSubmatch(string(src), -1)
	if len(routes) == 0 {
		t.Fatal("found no v1(...) routes in server.go")
	}
	paths := openAPIPaths(t, doc)

	want := map[string][]string{"/healthz": {"GET"}, "/metrics": {"GET"}}
	for _, r := range routes {
		p := "/v1" + r[2]
		want[p] = append(want[p], r[1])
	}
	for p, methods := range want {
		got, ok := paths[p]
		if !ok {
			t.Errorf("openapi.yaml: path %s is missing", p)
			continue
		}
		for _, m := range methods {
			if !slices.Contains(got, m) {
				t.Errorf("openapi.yaml: %s %s is missing", m, p)
			}
		}
	}
	// Nothing documented that the server does not route.
	for p, methods := range paths {
		for _, m := range methods {
			if !slices.Contains(want[p], m) {
				t.Errorf("openapi.yaml documents %s %s, which server.go does not register", m, p)
			}
		}
	}
}

func TestOpenAPISecurity(t *testing.T) {
	doc := string(OpenAPI)
	for _, s := range []string{
		"bearerAuth:", "scheme: bearer", "- bearerAuth: []",
		"name: X-Request-Id", "name: Idempotency-Key", "name: X-Kvm-Owner",
	} {
		if !strings.Contains(doc, s) {
			t.Errorf("openapi.yaml lacks %q", s)
		}
	}
}
