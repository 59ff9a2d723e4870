package api

import (
	"fmt"
	"net/url"
	"strings"
)

// maxMigrationURILen bounds a migration target URI.
const maxMigrationURILen = 512

// migrationSchemes are the libvirt transports a migration target may use.
// Each opens a plain network connection from libvirtd itself; the others
// start a program (ssh, libssh, ext with ?command=) or name a local socket
// (unix), which would let whoever chooses the URI run code or reach local
// daemons as the host's libvirtd.
var migrationSchemes = map[string]bool{"qemu+tcp": true, "qemu+tls": true}

// migrationParams are the only query parameters a migration URI may carry.
var migrationParams = map[string]bool{"no_verify": true}

// ValidateMigrationURI checks a libvirt URI that kvm-hostd will open to
// migrate a VM (a target host's --migration-uri). It accepts only
// qemu+tcp:// and qemu+tls:// URIs to a named host with path /system and
// no parameters beyond no_verify, so that the URI can never make libvirt
// start a program, read a key file or reach a local socket.
func ValidateMigrationURI(s string) error {
	if s == "" {
		return fmt.Errorf("a migration URI is required")
	}
	if len(s) > maxMigrationURILen {
		return fmt.Errorf("migration URI is longer than %d characters", maxMigrationURILen)
	}
	if strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return fmt.Errorf("migration URI contains control characters")
	}
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("migration URI is not a URI: %v", err)
	}
	if !migrationSchemes[strings.ToLower(u.Scheme)] {
		return fmt.Errorf("migration URI scheme %q is not allowed; use qemu+tcp:// or qemu+tls://", u.Scheme)
	}
	if u.Opaque != "" || u.Host == "" || u.Hostname() == "" {
		return fmt.Errorf("migration URI %s must name the target host, e.g. qemu+tcp://10.0.0.12/system", u.Scheme+"://…")
	}
	if u.User != nil {
		return fmt.Errorf("migration URI must not carry user information")
	}
	if u.Path != "/system" {
		return fmt.Errorf("migration URI path %q must be /system", u.Path)
	}
	if u.Fragment != "" || u.RawFragment != "" {
		return fmt.Errorf("migration URI must not have a fragment")
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return fmt.Errorf("migration URI query: %v", err)
	}
	for k := range q {
		if !migrationParams[k] {
			return fmt.Errorf("migration URI parameter %q is not allowed (allowed: no_verify)", k)
		}
	}
	return nil
}
