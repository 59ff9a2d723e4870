package service

import (
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

func ptr[T any](v T) *T { return &v }

func TestNormalizeVMSpec(t *testing.T) {
	ok := api.VMSpec{VCPU: 2, MemoryMiB: 512, Disks: []api.VMDisk{{Volume: "d1"}}, Interfaces: []api.VMInterface{{Network: "n", MAC: "52:54:00:AA:bb:cc"}}}
	if err := normalizeVMSpec(&ok); err != nil {
		t.Fatal(err)
	}
	if ok.Disks[0].Pool != DefaultPool || ok.Disks[0].Bus != "virtio" || ok.Interfaces[0].Model != "virtio" || ok.Interfaces[0].MAC != "52:54:00:aa:bb:cc" {
		t.Fatalf("defaults not filled: %+v", ok)
	}
	bad := map[string]api.VMSpec{
		"vcpu":         {VCPU: 0, MemoryMiB: 64},
		"memory_mib":   {VCPU: 1, MemoryMiB: 1},
		"max_memory":   {VCPU: 1, MemoryMiB: 128, MaxMemoryMiB: 64},
		"topology":     {VCPU: 4, MemoryMiB: 64, CPU: &api.CPU{Sockets: 1, Cores: 3}},
		"pinning":      {VCPU: 2, MemoryMiB: 64, CPU: &api.CPU{Pinning: []string{"0"}}},
		"pinning set":  {VCPU: 1, MemoryMiB: 64, CPU: &api.CPU{Pinning: []string{"0-a"}}},
		"cpu.mode":     {VCPU: 1, MemoryMiB: 64, CPU: &api.CPU{Mode: "turbo"}},
		"bus":          {VCPU: 1, MemoryMiB: 64, Disks: []api.VMDisk{{Volume: "d", Bus: "usb"}}},
		"twice":        {VCPU: 1, MemoryMiB: 64, Disks: []api.VMDisk{{Volume: "d"}, {Volume: "d"}}},
		"volume name":  {VCPU: 1, MemoryMiB: 64, Disks: []api.VMDisk{{Volume: "../etc/passwd"}}},
		"mac":          {VCPU: 1, MemoryMiB: 64, Interfaces: []api.VMInterface{{Network: "n", MAC: "zz"}}},
		"network name": {VCPU: 1, MemoryMiB: 64, Interfaces: []api.VMInterface{{Network: "a b"}}},
		"timeout":      {VCPU: 1, MemoryMiB: 64, ShutdownTimeoutSec: ptr(int64(-1))},
	}
	for name, spec := range bad {
		if err := normalizeVMSpec(&spec); !api.IsCode(err, api.CodeInvalid) {
			t.Errorf("%s: err = %v, want invalid", name, err)
		}
	}
}

func TestValidateVolumeSpec(t *testing.T) {
	good := []api.VolumeSpec{
		{SizeMiB: 64},
		{BaseVolume: "base"},
		{SourceURL: "https://example.com/x.qcow2", SourceChecksum: "sha256:" + strings.Repeat("ab", 32)},
	}
	for _, s := range good {
		if err := validateVolumeSpec(&s); err != nil {
			t.Errorf("%+v: %v", s, err)
		}
	}
	bad := []api.VolumeSpec{
		{},
		{SizeMiB: -1},
		{SizeMiB: 1, Format: "vmdk"},
		{BaseVolume: "base", Format: api.FormatRaw},
		{BaseVolume: "base", SourceURL: "http://x/y"},
		{SourceURL: "file:///etc/passwd"},
		{SourceURL: "http://x/y", SourceChecksum: "md5:abc"},
		{SizeMiB: 1, IOTune: &api.IOTune{ReadIOPSSec: -5}},
	}
	for _, s := range bad {
		if err := validateVolumeSpec(&s); !api.IsCode(err, api.CodeInvalid) {
			t.Errorf("%+v: err = %v, want invalid", s, err)
		}
	}
}

func TestValidateNetworkSpec(t *testing.T) {
	if err := validateNetworkSpec("n", api.NetworkSpec{VLAN: 10, Overlay: "vxlan", VNI: 5, MTU: 1450,
		Peers: []api.NetworkPeer{{Host: "h", TunnelIP: "10.0.0.1"}}}); err != nil {
		t.Fatal(err)
	}
	for name, s := range map[string]api.NetworkSpec{
		"vlan 0 explicit high": {VLAN: 4095},
		"vni without overlay":  {VNI: 3},
		"overlay without vni":  {Overlay: "vxlan"},
		"vni range":            {Overlay: "geneve", VNI: 1 << 24},
		"overlay kind":         {Overlay: "gre", VNI: 1},
		"mtu":                  {MTU: 100},
		"peer ip":              {Overlay: "vxlan", VNI: 1, Peers: []api.NetworkPeer{{Host: "h", TunnelIP: "nope"}}},
	} {
		if err := validateNetworkSpec("n", s); !api.IsCode(err, api.CodeInvalid) {
			t.Errorf("%s: err = %v, want invalid", name, err)
		}
	}
}

func TestVMSpecDiffIgnoresHostFilledFields(t *testing.T) {
	want := api.VMSpec{VCPU: 1, MemoryMiB: 64, Disks: []api.VMDisk{{Pool: "default", Volume: "d"}}, Interfaces: []api.VMInterface{{Network: "n"}}}
	have := want
	have.MaxMemoryMiB = 64
	have.Interfaces = []api.VMInterface{{Network: "n", MAC: "52:54:00:00:00:01", Bridge: "kvm-n"}}
	if d := vmSpecDiff(want, have); d != "" {
		t.Fatalf("diff %q, want none", d)
	}
	want.VCPU = 2
	if d := vmSpecDiff(want, have); !strings.HasPrefix(d, "vcpu") {
		t.Fatalf("diff %q, want vcpu", d)
	}
}

// keyedMutex serialises one key and lets different keys run in parallel.
func TestKeyedMutex(t *testing.T) {
	var k keyedMutex
	var inside, maxInside atomic.Int32
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			unlock := k.Lock("vm/a")
			n := inside.Add(1)
			if n > maxInside.Load() {
				maxInside.Store(n)
			}
			time.Sleep(time.Millisecond)
			inside.Add(-1)
			unlock()
		}()
	}
	wg.Wait()
	if maxInside.Load() != 1 {
		t.Fatalf("%d holders of one key at once", maxInside.Load())
	}
	unlockA := k.Lock("vm/a")
	done := make(chan struct{})
	go func() { k.Lock("vm/b")(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Second):
		t.Fatal("a different key waited for vm/a")
	}
	unlockA()
	if len(k.m) != 0 {
		t.Fatalf("entries leaked: %d", len(k.m))
	}
}
