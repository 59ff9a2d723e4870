package api

import (
	"slices"
	"strings"
	"testing"
)

func ptr[T any](v T) *T { return &v }

func TestValidateVMSpec(t *testing.T) {
	ok := VMSpec{VCPU: 2, MemoryMiB: 512, Disks: []VMDisk{{Volume: "d1"}}, Interfaces: []VMInterface{{Network: "n", MAC: "52:54:00:AA:bb:cc"}}}
	if err := ValidateVMSpec(&ok); err != nil {
		t.Fatal(err)
	}
	if ok.Disks[0].Pool != DefaultPool || ok.Disks[0].Bus != "virtio" || ok.Interfaces[0].Model != "virtio" || ok.Interfaces[0].MAC != "52:54:00:aa:bb:cc" {
		t.Fatalf("defaults not filled: %+v", ok)
	}
	bad := map[string]VMSpec{
		"vcpu":         {VCPU: 0, MemoryMiB: 64},
		"memory_mib":   {VCPU: 1, MemoryMiB: 1},
		"max_memory":   {VCPU: 1, MemoryMiB: 128, MaxMemoryMiB: 64},
		"topology":     {VCPU: 4, MemoryMiB: 64, CPU: &CPU{Sockets: 1, Cores: 3}},
		"pinning":      {VCPU: 2, MemoryMiB: 64, CPU: &CPU{Pinning: []string{"0"}}},
		"pinning set":  {VCPU: 1, MemoryMiB: 64, CPU: &CPU{Pinning: []string{"0-a"}}},
		"cpu.mode":     {VCPU: 1, MemoryMiB: 64, CPU: &CPU{Mode: "turbo"}},
		"bus":          {VCPU: 1, MemoryMiB: 64, Disks: []VMDisk{{Volume: "d", Bus: "usb"}}},
		"twice":        {VCPU: 1, MemoryMiB: 64, Disks: []VMDisk{{Volume: "d"}, {Volume: "d"}}},
		"volume name":  {VCPU: 1, MemoryMiB: 64, Disks: []VMDisk{{Volume: "../etc/passwd"}}},
		"mac":          {VCPU: 1, MemoryMiB: 64, Interfaces: []VMInterface{{Network: "n", MAC: "zz"}}},
		"network name": {VCPU: 1, MemoryMiB: 64, Interfaces: []VMInterface{{Network: "a b"}}},
		"timeout":      {VCPU: 1, MemoryMiB: 64, ShutdownTimeoutSec: ptr(int64(-1))},
	}
	for name, spec := range bad {
		if err := ValidateVMSpec(&spec); !IsCode(err, CodeInvalid) {
			t.Errorf("%s: err = %v, want invalid", name, err)
		}
	}
}

func TestValidateVolumeSpec(t *testing.T) {
	good := []VolumeSpec{
		{SizeMiB: 64},
		{BaseVolume: "base"},
		{BaseVolume: "base", Format: FormatRaw}, // an RBD clone; a dir pool's host refuses it
		{SourceURL: "https://example.com/x.qcow2", SourceChecksum: "sha256:" + strings.Repeat("ab", 32)},
	}
	for _, s := range good {
		if err := ValidateVolumeSpec(&s); err != nil {
			t.Errorf("%+v: %v", s, err)
		}
	}
	bad := []VolumeSpec{
		{},
		{SizeMiB: -1},
		{SizeMiB: 1, Format: "vmdk"},
		{BaseVolume: "base", SourceURL: "http://x/y"},
		{SourceURL: "file:///etc/passwd"},
		{SourceURL: "http://x/y", SourceChecksum: "md5:abc"},
		{SizeMiB: 1, IOTune: &IOTune{ReadIOPSSec: -5}},
	}
	for _, s := range bad {
		if err := ValidateVolumeSpec(&s); !IsCode(err, CodeInvalid) {
			t.Errorf("%+v: err = %v, want invalid", s, err)
		}
	}
}

func TestValidateNetworkSpec(t *testing.T) {
	if err := ValidateNetworkSpec("n", NetworkSpec{VLAN: 10, Overlay: "vxlan", VNI: 5, MTU: 1450,
		Peers: []NetworkPeer{{Host: "h", TunnelIP: "10.0.0.1"}}}); err != nil {
		t.Fatal(err)
	}
	for name, s := range map[string]NetworkSpec{
		"vlan 0 explicit high": {VLAN: 4095},
		"vni without overlay":  {VNI: 3},
		"overlay without vni":  {Overlay: "vxlan"},
		"vni range":            {Overlay: "geneve", VNI: 1 << 24},
		"overlay kind":         {Overlay: "gre", VNI: 1},
		"mtu":                  {MTU: 100},
		"peer ip":              {Overlay: "vxlan", VNI: 1, Peers: []NetworkPeer{{Host: "h", TunnelIP: "nope"}}},
	} {
		if err := ValidateNetworkSpec("n", s); !IsCode(err, CodeInvalid) {
			t.Errorf("%s: err = %v, want invalid", name, err)
		}
	}
}

// TestValidateVMSpecTightened covers inputs the host once passed on to
// libvirt, which then failed with an internal error instead of a 400.
func TestValidateVMSpecTightened(t *testing.T) {
	for name, spec := range map[string]VMSpec{
		"backwards range":     {VCPU: 1, MemoryMiB: 64, CPU: &CPU{Pinning: []string{"3-1"}}},
		"only an exclusion":   {VCPU: 1, MemoryMiB: 64, CPU: &CPU{Pinning: []string{"^0"}}},
		"excluded range":      {VCPU: 1, MemoryMiB: 64, CPU: &CPU{Pinning: []string{"0-3,^1-2"}}},
		"huge cpu number":     {VCPU: 1, MemoryMiB: 64, CPU: &CPU{Pinning: []string{"99999999999999999999"}}},
		"huge max memory":     {VCPU: 1, MemoryMiB: 64, MaxMemoryMiB: 1 << 62},
		"overflowing product": {VCPU: 1, MemoryMiB: 64, CPU: &CPU{Sockets: 274177, Cores: 67280421310721}}, // ≡ 1 mod 2^64
		"nul in tag key":      {VCPU: 1, MemoryMiB: 64, Tags: map[string]string{"a\x00b": "x"}},
	} {
		if err := ValidateVMSpec(&spec); !IsCode(err, CodeInvalid) {
			t.Errorf("%s: err = %v, want invalid", name, err)
		}
	}
}

func TestParseCPUSet(t *testing.T) {
	good := map[string][]int{
		"0": {0}, "0-3": {0, 1, 2, 3}, "0,2": {0, 2}, "0-3,^2": {0, 1, 3}, "^1,0-2": {0, 2}, "5,5": {5}, "4095": {4095},
	}
	for s, want := range good {
		got, err := ParseCPUSet(s)
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("ParseCPUSet(%q) = %v, %v; want %v", s, got, err, want)
		}
	}
	for _, s := range []string{"", ",", "0,", ",0", "a", "0-", "-1", "3-1", "^0", "0,^0", "^0-3", "0--1", "0 ", " 0", "4096", "1-99999", "+1", "0x1"} {
		if got, err := ParseCPUSet(s); err == nil {
			t.Errorf("ParseCPUSet(%q) = %v, want an error", s, got)
		}
	}
}

func TestValidMAC(t *testing.T) {
	for _, s := range []string{"52:54:00:12:34:56", "52:54:00:AA:bb:CC"} {
		if !ValidMAC(s) {
			t.Errorf("ValidMAC(%q) = false", s)
		}
	}
	for _, s := range []string{"", "zz", "52:54:00:12:34", "52-54-00-12-34-56", "52:54:00:12:34:567", "52:54:00:12:34:56\n"} {
		if ValidMAC(s) {
			t.Errorf("ValidMAC(%q) = true", s)
		}
	}
}

func TestCapacityAndMemory(t *testing.T) {
	for _, c := range []struct {
		n    int64
		r    float64
		want int64
	}{{4, 4, 16}, {3, 1.1, 3}, {100, 0.29, 29}, {10, 0, 10}, {3, 1.5, 4}, {0, 4, 0}} {
		if got := Capacity(c.n, c.r); got != c.want {
			t.Errorf("Capacity(%d, %g) = %d, want %d", c.n, c.r, got, c.want)
		}
	}
	if got := VMMemoryMiB(VMSpec{MemoryMiB: 512, MaxMemoryMiB: 2048}); got != 2048 {
		t.Errorf("VMMemoryMiB with a ceiling = %d, want 2048", got)
	}
	if got := VMMemoryMiB(VMSpec{MemoryMiB: 512}); got != 512 {
		t.Errorf("VMMemoryMiB without a ceiling = %d, want 512", got)
	}
}

func TestValidateNetworkSpecDuplicatePeer(t *testing.T) {
	s := NetworkSpec{Overlay: OverlayVXLAN, VNI: 1, Peers: []NetworkPeer{{Host: "h", TunnelIP: "10.0.0.1"}, {Host: "h", TunnelIP: "10.0.0.2"}}}
	if err := ValidateNetworkSpec("n", s); !IsCode(err, CodeInvalid) || !strings.Contains(err.Error(), "twice") {
		t.Fatalf("err = %v, want invalid: listed twice", err)
	}
}

func TestCheckTextAndUUID(t *testing.T) {
	for _, ok := range []string{"", "plain", "tab\tand\nnewline", "<&>\"'", "é \u2028 \U0001F600", "del\x7f"} {
		if err := CheckText("f", ok); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"\x00", "a\x01", "esc\x1b[0m", "cr\r\n", "\ufffe", "\uffff"} {
		if err := CheckText("f", bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if !ValidUUID("6b4ce879-405a-4065-8c2a-b7b116ae52c8") || ValidUUID("6b4ce879405a40658c2ab7b116ae52c8") || ValidUUID("x") {
		t.Error("ValidUUID")
	}
}

func TestCheckFirmware(t *testing.T) {
	for _, ok := range []VMSpec{{}, {Firmware: FirmwareBIOS}, {Firmware: FirmwareEFI, SecureBoot: true, TPM: &TPM{Version: "2.0"}},
		{TPM: &TPM{Version: "2.0"}}} {
		if err := CheckFirmware(ok.Firmware, ok.SecureBoot, ok.TPM); err != nil {
			t.Errorf("%+v: %v", ok, err)
		}
	}
	for _, bad := range []VMSpec{{SecureBoot: true}, {Firmware: FirmwareBIOS, SecureBoot: true}, {Firmware: "uefi"},
		{TPM: &TPM{Version: "1.2"}}, {TPM: &TPM{}}} {
		spec := bad
		spec.VCPU, spec.MemoryMiB = 1, 64
		if err := ValidateVMSpec(&spec); !IsCode(err, CodeInvalid) {
			t.Errorf("%+v: %v, want invalid", bad, err)
		}
	}
}
