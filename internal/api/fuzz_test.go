package api

import (
	"bytes"
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

// Fuzz targets for the rules kvm-hostd and the provider share. Plain
// `go test` runs the seeds; `make fuzz` runs each for a while.

func FuzzValidateName(f *testing.F) {
	for _, s := range []string{"a", "web-1", "disk_0.qcow2", "", "..", "a..b", ".x", "-x", "a/b", "a b", "a\x00b",
		"x<y", "é", strings.Repeat("x", MaxNameLength), strings.Repeat("x", MaxNameLength+1)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		err := ValidateName("vm", name)
		if err != nil {
			return
		}
		// An accepted name is safe as a file name, an XML text node, an OVS
		// bridge suffix and a URL path segment.
		if name == "" || len(name) > MaxNameLength || strings.Contains(name, "..") || strings.ContainsAny(name, "/\\<>&\"' \t\n\x00%?#") ||
			!utf8.ValidString(name) || name[0] == '.' || name[0] == '-' || name[0] == '_' {
			t.Fatalf("ValidateName accepted %q", name)
		}
		for _, r := range name {
			if r > 127 {
				t.Fatalf("ValidateName accepted non-ASCII %q", name)
			}
		}
	})
}

func FuzzParseCPUSet(f *testing.F) {
	for _, s := range []string{"0", "0-3", "0,2", "0-3,^2", "^1,0-2", "3-1", "^0", "^0-3", "", ",", "0,", "4095", "4096",
		"99999999999999999999", "0--1", " 0", "1-2-3"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		cpus, err := ParseCPUSet(s)
		if err != nil {
			if cpus != nil {
				t.Fatalf("ParseCPUSet(%q) = %v with error %v", s, cpus, err)
			}
			return
		}
		if len(cpus) == 0 || !slices.IsSorted(cpus) || cpus[0] < 0 || cpus[len(cpus)-1] > MaxCPUSetCPU {
			t.Fatalf("ParseCPUSet(%q) = %v", s, cpus)
		}
		if strings.Trim(s, "0123456789,-^") != "" {
			t.Fatalf("ParseCPUSet accepted %q with other characters", s)
		}
		// The plain list of the result is a set naming the same CPUs.
		parts := make([]string, len(cpus))
		for i, c := range cpus {
			parts[i] = strconv.Itoa(c)
		}
		again, err := ParseCPUSet(strings.Join(parts, ","))
		if err != nil || !slices.Equal(again, cpus) {
			t.Fatalf("ParseCPUSet(%q) = %v, but its list parses as %v, %v", s, cpus, again, err)
		}
	})
}

// FuzzValidateVMSpec decodes a VMSpec as kvm-hostd does and validates it:
// no panic, a CodeInvalid error or an accepted spec that stays accepted
// and unchanged when validated again.
func FuzzValidateVMSpec(f *testing.F) {
	for _, s := range []string{
		`{"vcpu":1,"memory_mib":64}`,
		`{"vcpu":2,"memory_mib":512,"max_memory_mib":1024,"cpu":{"mode":"host-model","sockets":1,"cores":2,"pinning":["0","1-3,^2"]},` +
			`"disks":[{"pool":"default","volume":"root","bus":"sata"}],"interfaces":[{"network":"lan","mac":"52:54:00:AA:bb:01","model":"e1000"}],` +
			`"tags":{"a":"b"},"description":"x","shutdown_timeout_sec":30}`,
		`{"vcpu":1,"memory_mib":64,"cpu":{"sockets":274177,"cores":67280421310721}}`,
		`{"vcpu":1,"memory_mib":64,"cpu":{"pinning":["3-1"]}}`,
		`{"vcpu":1,"memory_mib":64,"disks":[{"volume":"../etc/passwd"}]}`,
		`{"vcpu":0,"memory_mib":-1}`,
		`{"vcpu":1,"memory_mib":64,"max_memory_mib":4611686018427387904}`,
		`{"vcpu":1,"memory_mib":64,"tags":{"":"x"}}`,
		`{}`, `null`, `[]`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var spec VMSpec
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		if dec.Decode(&spec) != nil {
			return
		}
		if err := ValidateVMSpec(&spec); err != nil {
			if !IsCode(err, CodeInvalid) {
				t.Fatalf("ValidateVMSpec error %v is not %s", err, CodeInvalid)
			}
			return
		}
		once, _ := json.Marshal(spec)
		if err := ValidateVMSpec(&spec); err != nil {
			t.Fatalf("a normalized spec fails validation: %v", err)
		}
		if twice, _ := json.Marshal(spec); !bytes.Equal(once, twice) {
			t.Fatalf("normalizing twice changed the spec:\n%s\n%s", once, twice)
		}
		if spec.VCPU < MinVCPU || spec.VCPU > MaxVCPU || VMMemoryMiB(spec) > MaxMemoryMiBLimit {
			t.Fatalf("accepted out-of-range spec %s", once)
		}
		for _, d := range spec.Disks {
			if !slices.Contains(Buses, d.Bus) || d.Pool == "" {
				t.Fatalf("accepted disk %+v", d)
			}
		}
		for _, n := range spec.Interfaces {
			if !slices.Contains(NICModels, n.Model) || (n.MAC != "" && (!ValidMAC(n.MAC) || n.MAC != strings.ToLower(n.MAC))) {
				t.Fatalf("accepted interface %+v", n)
			}
		}
	})
}

// FuzzEscapeTerminal: whatever a guest prints, the escaped console is
// valid UTF-8 without a character that could control a terminal.
func FuzzEscapeTerminal(f *testing.F) {
	for _, s := range []string{"", "plain\n\ttext", "\x1b[2J\x1b[H", "\x1b]52;c;aGk=\x07", "\xc2\x9b31m", "\x9b", "\xff\xfe",
		"a\rb", "\x00\x07\x7f", "\u202e", "\xe2\x80", `\x1b`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		out := EscapeTerminal(b)
		if !utf8.ValidString(out) {
			t.Fatalf("EscapeTerminal(%q) = %q: not valid UTF-8", b, out)
		}
		for i := 0; i < len(out); i++ {
			if c := out[i]; (c < 0x20 && c != '\n' && c != '\t') || c == 0x7f {
				t.Fatalf("EscapeTerminal(%q) = %q: byte %#x", b, out, c)
			}
		}
		for _, r := range out {
			if r >= 0x80 && r <= 0x9f {
				t.Fatalf("EscapeTerminal(%q) = %q: C1 %U", b, out, r)
			}
		}
		if again := EscapeTerminal([]byte(out)); again != out {
			t.Fatalf("escaping %q again gave %q", out, again)
		}
		// Newlines are kept: quoted output has as many lines as the input.
		if bytes.Count(b, []byte("\n")) != strings.Count(out, "\n") {
			t.Fatalf("EscapeTerminal(%q) = %q: lines changed", b, out)
		}
	})
}
