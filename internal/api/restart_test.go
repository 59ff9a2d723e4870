package api

import (
	"slices"
	"testing"
)

func TestHardwareChanges(t *testing.T) {
	on := true
	// cur as a read-back says it: every default spelled out.
	cur := VMSpec{VCPU: 1, MemoryMiB: 64, MaxMemoryMiB: 128, Firmware: FirmwareBIOS, RNG: &on,
		Disks:      []VMDisk{{Pool: "default", Volume: "a", Bus: "virtio", Target: "vda", Cache: "none", Discard: "unmap"}},
		Interfaces: []VMInterface{{Network: "n", MAC: "52:54:00:00:00:01", Model: "virtio", Bridge: "kvm-n"}}}
	live := cur
	live.MemoryMiB = 100
	live.MaxMemoryMiB = 128
	live.Disks = []VMDisk{{Volume: "a"}}
	live.Firmware, live.RNG = "", nil
	live.Interfaces = []VMInterface{{Network: "n", MAC: "52:54:00:00:00:01", Bridge: "kvm-n"}}
	live.Tags = map[string]string{"x": "y"}
	live.Description = "d"
	if got := HardwareChanges(cur, live); got != nil {
		t.Fatalf("memory, tags, description and defaults: %v, want none", got)
	}

	for _, c := range []struct {
		name string
		edit func(*VMSpec)
		want []string
	}{
		{"vcpu", func(s *VMSpec) { s.VCPU = 2 }, []string{"vcpu"}},
		{"ceiling", func(s *VMSpec) { s.MaxMemoryMiB = 256 }, []string{"max_memory_mib"}},
		{"ceiling defaults to memory", func(s *VMSpec) { s.MaxMemoryMiB = 0 }, []string{"max_memory_mib"}},
		{"cpu mode", func(s *VMSpec) { s.CPU = &CPU{Mode: "host-model"} }, []string{"cpu"}},
		{"bus", func(s *VMSpec) { s.Disks = []VMDisk{{Volume: "a", Bus: "sata"}} }, []string{"disks"}},
		{"disk added", func(s *VMSpec) { s.Disks = append(s.Disks, VMDisk{Volume: "b"}) }, []string{"disks"}},
		{"discard", func(s *VMSpec) { s.Disks = []VMDisk{{Volume: "a", Discard: "ignore"}} }, []string{"disks"}},
		{"cache", func(s *VMSpec) { s.Disks = []VMDisk{{Volume: "a", Cache: "writeback"}} }, []string{"disks"}},
		{"io", func(s *VMSpec) { s.Disks = []VMDisk{{Volume: "a", IO: "threads"}} }, []string{"disks"}},
		{"firmware", func(s *VMSpec) { s.Firmware = FirmwareEFI }, []string{"firmware"}},
		{"rng off", func(s *VMSpec) { off := false; s.RNG = &off }, []string{"rng"}},
		{"nic model", func(s *VMSpec) {
			s.Interfaces = []VMInterface{{Network: "n", MAC: "52:54:00:00:00:01", Bridge: "kvm-n", Model: "e1000"}}
		}, []string{"network_interfaces"}},
		{"new nic without mac", func(s *VMSpec) { s.Interfaces = []VMInterface{{Network: "n", Bridge: "kvm-n"}} }, []string{"network_interfaces"}},
		{"vlan", func(s *VMSpec) {
			s.Interfaces = []VMInterface{{Network: "n", MAC: "52:54:00:00:00:01", Bridge: "kvm-n", VLAN: 5}}
		}, []string{"network_interfaces"}},
		{"cloud-init added", func(s *VMSpec) { s.CloudInit = &CloudInit{UserData: "x"} }, []string{"cloud_init"}},
		{"guest agent off", func(s *VMSpec) { off := false; s.GuestAgent = &off }, []string{"guest_agent"}},
		{"guest agent explicitly on (the default)", func(s *VMSpec) { on := true; s.GuestAgent = &on }, nil},
		{"several", func(s *VMSpec) { s.VCPU = 4; s.CPU = &CPU{Sockets: 2, Cores: 2} }, []string{"cpu", "vcpu"}},
	} {
		want := live
		c.edit(&want)
		if got := HardwareChanges(cur, want); !slices.Equal(got, c.want) {
			t.Errorf("%s: HardwareChanges = %v, want %v", c.name, got, c.want)
		}
		if got := NeedsRestart(cur, want); !slices.Equal(got, c.want) {
			t.Errorf("%s: NeedsRestart = %v, want %v", c.name, got, c.want)
		}
	}

	// Same cloud-init presence with new content: read at the next boot.
	a, b := cur, live
	a.CloudInit, b.CloudInit = &CloudInit{UserData: "1"}, &CloudInit{UserData: "2"}
	if got := HardwareChanges(a, b); got != nil {
		t.Errorf("cloud-init content: %v, want none", got)
	}
	// Empty and nil pinning are the same.
	a.CPU, b.CPU = &CPU{Mode: "custom", Pinning: []string{}}, &CPU{Mode: "custom"}
	if got := HardwareChanges(a, b); got != nil {
		t.Errorf("empty pinning: %v, want none", got)
	}
}

func TestNeedsRestartNICsAppended(t *testing.T) {
	cur := VMSpec{VCPU: 1, MemoryMiB: 64, MaxMemoryMiB: 64,
		Interfaces: []VMInterface{{Network: "n", MAC: "52:54:00:00:00:01", Model: "virtio"}}}
	want := cur
	want.Interfaces = append(slices.Clone(cur.Interfaces), VMInterface{Network: "m"})
	if !NICsOnlyAppended(cur, want) {
		t.Fatal("an appended NIC is not seen as appended")
	}
	if got := NeedsRestart(cur, want); got != nil {
		t.Fatalf("appended NIC: NeedsRestart = %v, want none (hot-added)", got)
	}
	if got := HardwareChanges(cur, want); !slices.Equal(got, []string{"network_interfaces"}) {
		t.Fatalf("appended NIC: HardwareChanges = %v", got)
	}
	want.VCPU = 2
	if NICsOnlyAppended(cur, want) {
		t.Fatal("appended NIC with a vcpu change counts as only appended")
	}
	if got := NeedsRestart(cur, want); !slices.Equal(got, []string{"network_interfaces", "vcpu"}) {
		t.Fatalf("appended NIC and vcpu: NeedsRestart = %v", got)
	}
	removed := cur
	removed.Interfaces = nil
	if NICsOnlyAppended(cur, removed) || !slices.Equal(NeedsRestart(cur, removed), []string{"network_interfaces"}) {
		t.Fatal("a removed NIC needs a restart")
	}
}
