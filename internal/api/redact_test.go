package api

import (
	"strings"
	"testing"
)

func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"https://user:pw@images.example/a.qcow2?X-Amz-Signature=abc#frag": "https://images.example/a.qcow2",
		"http://10.0.0.1:7701/v1/pools/default/volumes/d/content?token=x": "http://10.0.0.1:7701/v1/pools/default/volumes/d/content",
		"qemu+tcp://10.0.0.12/system":                                     "qemu+tcp://10.0.0.12/system",
		"http://h/%zz":                                                    "(invalid URL)",
	} {
		if got := RedactURL(in); got != want {
			t.Errorf("RedactURL(%q) = %q, want %q", in, got, want)
		}
		for _, secret := range []string{"pw", "abc", "token=x", "frag"} {
			if strings.Contains(RedactURL(in), secret) {
				t.Errorf("RedactURL(%q) keeps %q", in, secret)
			}
		}
	}
}
