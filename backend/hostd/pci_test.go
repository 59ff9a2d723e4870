package hostd

import (
	"encoding/json"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/kvmfleet/terraform-provider-kvm/backend/service"
	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
)

func TestPCIDeviceFlag(t *testing.T) {
	parse := func(env string, args ...string) (*Config, error) {
		return ParseFlags(append([]string{"--name", "n"}, args...), func(k string) string {
			if k == "KVM_HOSTD_PCI_DEVICE" {
				return env
			}
			return ""
		}, io.Discard)
	}
	c, err := parse("", "--pci-device", "gpu0=0000:01:00.0", "--pci-device", "nic1=0000:3B:00.1, nic2=0000:3b:00.2")
	if err != nil {
		t.Fatal(err)
	}
	want := []service.PCIDevice{{Name: "gpu0", Address: "0000:01:00.0"}, {Name: "nic1", Address: "0000:3b:00.1"}, {Name: "nic2", Address: "0000:3b:00.2"}}
	if !slices.Equal(c.PCIDevices, want) {
		t.Fatalf("got %v, want %v", c.PCIDevices, want)
	}
	// The environment, comma-separated; the command line replaces it.
	if c, err = parse("a=0000:00:01.0,b=0000:00:02.0"); err != nil || len(c.PCIDevices) != 2 {
		t.Fatalf("from the environment: %v, %v", c.PCIDevices, err)
	}
	if c, err = parse("a=0000:00:01.0,b=0000:00:02.0", "--pci-device", "c=0000:00:03.0"); err != nil ||
		!slices.Equal(c.PCIDevices, []service.PCIDevice{{Name: "c", Address: "0000:00:03.0"}}) {
		t.Fatalf("the command line over the environment: %v, %v", c.PCIDevices, err)
	}
	for arg, msg := range map[string]string{
		"gpu0":                                "not NAME=ADDRESS",
		"=0000:01:00.0":                       "must not be empty",
		"gpu/0=0000:01:00.0":                  "is invalid",
		"gpu0=01:00.0":                        "domain:bus:slot.function",
		"gpu0=0000:01:20.0":                   "domain:bus:slot.function",
		"gpu0=0000:01:00.8":                   "domain:bus:slot.function",
		"gpu0=0000:01:00.0,gpu0=0000:02:00.0": "name gpu0 is given twice",
		"gpu0=0000:01:00.0,gpu1=0000:01:00.0": "address 0000:01:00.0 is named both gpu0 and gpu1",
	} {
		if _, err := parse("", "--pci-device", arg); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("--pci-device %s: got %v, want an error with %q", arg, err, msg)
		}
	}
	if _, err := parse("gpu0"); err == nil || !strings.Contains(err.Error(), "not NAME=ADDRESS") {
		t.Errorf("bad KVM_HOSTD_PCI_DEVICE: %v", err)
	}
}

// kvm-hostd on libvirt's test driver given PCI node devices, through its
// HTTP API: the inventory, a VM with devices, the refusals.
func TestPCIDevicesOnTestDriver(t *testing.T) {
	uri, err := harness.WriteTestDriverPCI(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	m, _ := startMain(t, "--libvirt-uri", uri, "--labels", "pci.nic1=reserved",
		"--pci-device", "gpu0=0000:01:00.0,nic1=0000:3b:00.1", "--pci-device", "ghost=0000:af:00.0")
	const tok = "s3cret-0123456789"
	host := func() api.Host {
		t.Helper()
		st, _, b := call(t, "GET", m.URL()+"/v1/host", tok, "")
		var h api.Host
		if err := json.Unmarshal(b, &h); st != 200 || err != nil {
			t.Fatalf("GET /v1/host: %d %s", st, b)
		}
		return h
	}
	h := host()
	if len(h.PCIDevices) != 3 {
		t.Fatalf("pci_devices: %+v", h.PCIDevices)
	}
	gpu, nic, ghost := h.PCIDevices[0], h.PCIDevices[1], h.PCIDevices[2]
	if gpu.Name != "gpu0" || gpu.Address != "0000:01:00.0" || gpu.Vendor != "NVIDIA Corporation" || gpu.VendorID != "0x10de" ||
		gpu.Product != "TU104GL [Tesla T4]" || gpu.IOMMUGroup != 12 || !gpu.Present || gpu.UsedBy != "" {
		t.Errorf("gpu0: %+v", gpu)
	}
	if nic.Name != "nic1" || nic.Address != "0000:3b:00.1" || !nic.Present {
		t.Errorf("nic1: %+v", nic)
	}
	if ghost.Name != "ghost" || ghost.Present || ghost.IOMMUGroup != -1 {
		t.Errorf("ghost: %+v", ghost)
	}
	// Automatic labels for present devices; the operator's own wins.
	if h.Labels["pci.gpu0"] != "true" || h.Labels["pci.nic1"] != "reserved" {
		t.Errorf("labels: %v", h.Labels)
	}
	if _, ok := h.Labels["pci.ghost"]; ok {
		t.Errorf("a device libvirt does not know got a label: %v", h.Labels)
	}

	put := func(name, body string) (int, api.Error, []byte) {
		t.Helper()
		return call(t, "PUT", m.URL()+"/v1/vms/"+name, tok, body)
	}
	st, _, b := put("vm-a", `{"vcpu":1,"memory_mib":64,"running":true,"pci_devices":["gpu0","nic1"]}`)
	if st != 201 && st != 200 {
		t.Fatalf("PUT vm-a: %d %s", st, b)
	}
	var vm api.VM
	if err := json.Unmarshal(b, &vm); err != nil || !slices.Equal(vm.PCIDevices, []string{"gpu0", "nic1"}) {
		t.Fatalf("vm-a: %s", b)
	}
	if strings.Contains(string(b), "0000:01:00.0") {
		t.Errorf("host addresses leak into the VM's JSON: %s", b)
	}
	if h := host(); h.PCIDevices[0].UsedBy != "vm-a" || h.PCIDevices[1].UsedBy != "vm-a" {
		t.Errorf("used_by: %+v", h.PCIDevices)
	}
	// A retried create is the same VM; one with other devices is not.
	if st, _, b := put("vm-a", `{"vcpu":1,"memory_mib":64,"running":true,"pci_devices":["gpu0","nic1"]}`); st != 200 {
		t.Errorf("retried PUT: %d %s", st, b)
	}
	if st, e, _ := put("vm-a", `{"vcpu":1,"memory_mib":64,"running":true,"pci_devices":["gpu0"]}`); st != 409 || !strings.Contains(e.Message, "pci_devices") {
		t.Errorf("PUT with other devices: %d %s", st, e.Message)
	}

	for _, tc := range []struct {
		body, msg string
		status    int
	}{
		{`{"vcpu":1,"memory_mib":64,"pci_devices":["gpu9"]}`, `has no PCI device named "gpu9"; it has gpu0, nic1, ghost`, 400},
		{`{"vcpu":1,"memory_mib":64,"pci_devices":["ghost"]}`, "PCI device ghost (0000:af:00.0) is not present on host host-t", 409},
		{`{"vcpu":1,"memory_mib":64,"pci_devices":["nic1"]}`, "PCI device nic1 (0000:3b:00.1) on host host-t is already used by VM vm-a", 409},
		{`{"vcpu":1,"memory_mib":64,"pci_devices":["gpu0","gpu0"]}`, "pci_devices[1]: gpu0 is already pci_devices[0]", 400},
	} {
		st, e, _ := put("vm-b", tc.body)
		if st != tc.status || !strings.Contains(e.Message, tc.msg) {
			t.Errorf("%s: %d %q, want %d with %q", tc.body, st, e.Message, tc.status, tc.msg)
		}
	}
	if st, _, _ := call(t, "GET", m.URL()+"/v1/vms/vm-b", tok, ""); st != 404 {
		t.Errorf("a refused VM was defined: %d", st)
	}

	// Dropping a device is one restart, and frees it for another VM.
	st, _, b = call(t, "PATCH", m.URL()+"/v1/vms/vm-a", tok, `{"vcpu":1,"memory_mib":64,"running":true,"pci_devices":["gpu0"]}`)
	if err := json.Unmarshal(b, &vm); st != 200 || err != nil || !vm.Restarted || !slices.Equal(vm.PCIDevices, []string{"gpu0"}) {
		t.Fatalf("PATCH vm-a: %d %s", st, b)
	}
	if st, _, b := put("vm-b", `{"vcpu":1,"memory_mib":64,"pci_devices":["nic1"]}`); st != 201 {
		t.Fatalf("PUT vm-b with the freed device: %d %s", st, b)
	}
	if st, e, _ := call(t, "PATCH", m.URL()+"/v1/vms/vm-b", tok, `{"vcpu":1,"memory_mib":64,"pci_devices":["nic1","gpu0"]}`); st != 409 ||
		!strings.Contains(e.Message, "already used by VM vm-a") {
		t.Errorf("PATCH vm-b taking vm-a's device: %d %s", st, e.Message)
	}

	// No migration, live or offline.
	st, e, _ := call(t, "POST", m.URL()+"/v1/vms/vm-a/migrate", tok, `{"target_host":"host-u","target_uri":"qemu+tcp://10.0.0.9/system","mode":"live"}`)
	if st != 409 || !strings.Contains(e.Message, "has PCI passthrough devices (pci_devices gpu0) and cannot be migrated") {
		t.Errorf("migrate: %d %s", st, e.Message)
	}
}
