package api

import "testing"

func TestValidateMigrationURI(t *testing.T) {
	ok := []string{
		"qemu+tcp://10.0.0.12/system",
		"qemu+tls://host-b.example/system",
		"qemu+tls://host-b.example:16514/system?no_verify=1",
		"qemu+tcp://[fd00::2]/system",
	}
	for _, s := range ok {
		if err := ValidateMigrationURI(s); err != nil {
			t.Errorf("%q refused: %v", s, err)
		}
	}
	bad := []string{
		"",
		"qemu+ext:///system?command=/tmp/x",
		"qemu+ext://h/system?command=/tmp/evil",
		"qemu+ssh://root@h/system?keyfile=/tmp/k&command=/tmp/x",
		"qemu+ssh://h/system",
		"qemu+libssh2://h/system?known_hosts=/x",
		"qemu+libssh://h/system",
		"qemu+unix:///system?socket=/run/other.sock",
		"qemu:///system",
		"qemu://h/system",
		"test:///default",
		"qemu+tcp:///system",
		"qemu+tcp://h/session",
		"qemu+tcp://h/system?command=/bin/sh",
		"qemu+tcp://h/system?socket=/x",
		"qemu+tcp://h/system?pkipath=/etc",
		"qemu+tcp://user@h/system",
		"qemu+tcp://h/system#frag",
		"qemu+tcp://h/system\n",
		"qemu+tcp:h/system",
		"QEMU+EXT://h/system?command=x",
		"qemu+tcp://h/system?no_verify=1&Command=/x",
		"qemu+tcp://h/" + string(make([]byte, 600)),
	}
	for _, s := range bad {
		if err := ValidateMigrationURI(s); err == nil {
			t.Errorf("%q accepted", s)
		}
	}
}
