package main

import (
	"net"
	"os/exec"
	"strconv"
	"testing"
	"time"
)

// The raw commands against a real swtpm (TCP server mode, as the swtpm
// package installs it), when there is one.
func TestNVAgainstSwtpm(t *testing.T) {
	bin, err := exec.LookPath("swtpm")
	if err != nil {
		t.Skip("no swtpm")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	dir := t.TempDir()
	cmd := exec.Command(bin, "socket", "--tpm2", "--tpmstate", "dir="+dir, "--flags", "not-need-init,startup-clear",
		"--server", "type=tcp,port="+strconv.Itoa(port), "--ctrl", "type=tcp,port="+strconv.Itoa(port+1))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	var c net.Conn
	for deadline := time.Now().Add(10 * time.Second); ; {
		if c, err = net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(port)); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	tp := &tpm{rw: c}
	defer tp.Close()
	for _, v := range []string{"first value, a longer one", "second"} {
		if err := tp.nvWrite([]byte(v)); err != nil {
			t.Fatal(err)
		}
		got, err := tp.nvRead()
		if err != nil {
			t.Fatal(err)
		}
		if want := append([]byte(v), make([]byte, nvSize-len(v))...); string(got) != string(want) {
			t.Fatalf("read %q, want %q", got, v)
		}
	}
}
