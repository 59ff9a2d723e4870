package hypervisor

import (
	"context"
	"strings"
	"testing"

	"libvirt.org/go/libvirtxml"

	"github.com/kvmfleet/terraform-provider-kvm/backend/service"
	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

func TestFirmwareXML(t *testing.T) {
	for _, tc := range []struct {
		name string
		spec api.VMSpec
		// what the XML must say
		firmware, machine, loaderSecure, smm string
		features                             string
		tpm                                  bool
	}{
		{name: "bios", spec: api.VMSpec{}},
		{name: "efi", spec: api.VMSpec{Firmware: api.FirmwareEFI}, firmware: "efi", machine: "q35",
			features: "enrolled-keys=no,secure-boot=no"},
		{name: "secure boot and tpm", spec: api.VMSpec{Firmware: api.FirmwareEFI, SecureBoot: true, TPM: &api.TPM{Version: "2.0"}},
			firmware: "efi", machine: "q35", loaderSecure: "yes", smm: "on", features: "enrolled-keys=yes,secure-boot=yes", tpm: true},
		{name: "bios with tpm", spec: api.VMSpec{TPM: &api.TPM{Version: "2.0"}}, tpm: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := tc.spec
			spec.VCPU, spec.MemoryMiB = 1, 64
			x := builtDomain(t, spec, domainParams{name: "vm", virtType: "qemu", meta: &instanceMeta{}, probe: probeNoKVM})
			if x.OS.Firmware != tc.firmware || x.OS.Type.Machine != tc.machine || fwFeatures(x.OS) != tc.features {
				t.Fatalf("os: firmware %q machine %q features %q", x.OS.Firmware, x.OS.Type.Machine, fwFeatures(x.OS))
			}
			// Never a raw firmware path: libvirt's auto-selection picks it.
			if l := x.OS.Loader; l != nil && (l.Path != "" || l.Secure != tc.loaderSecure) || l == nil && tc.loaderSecure != "" {
				t.Fatalf("loader: %+v", l)
			}
			if x.OS.NVRam != nil {
				t.Fatalf("nvram: %+v", x.OS.NVRam)
			}
			smm := ""
			if x.Features.SMM != nil {
				smm = x.Features.SMM.State
			}
			if smm != tc.smm {
				t.Fatalf("smm %q, want %q", smm, tc.smm)
			}
			if got := len(x.Devices.TPMs) == 1; got != tc.tpm {
				t.Fatalf("tpm devices: %+v", x.Devices.TPMs)
			}
			if tc.tpm {
				tp := x.Devices.TPMs[0]
				if tp.Model != "tpm-crb" || tp.Backend == nil || tp.Backend.Emulator == nil || tp.Backend.Emulator.Version != "2.0" {
					t.Fatalf("tpm: %+v", tp)
				}
			}
			// And back: what was asked, without the metadata's help.
			x.Metadata = nil
			got, _ := specOf(x, nil)
			want := orBIOS(tc.spec.Firmware)
			if got.Firmware != want || got.SecureBoot != tc.spec.SecureBoot || (got.TPM == nil) != (tc.spec.TPM == nil) ||
				got.TPM != nil && got.TPM.Version != tc.spec.TPM.Version {
				t.Fatalf("read back firmware %q secure_boot %v tpm %+v", got.Firmware, got.SecureBoot, got.TPM)
			}
		})
	}
}

// A domain libvirt completed after a start (loader and NVRAM paths filled
// in by auto-selection) reads back the same.
func TestFirmwareReadBackCompleted(t *testing.T) {
	doc := `<domain type='qemu'><name>vm</name><os firmware='efi'>
  <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>
  <firmware><feature enabled='yes' name='enrolled-keys'/><feature enabled='yes' name='secure-boot'/></firmware>
  <loader readonly='yes' secure='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.ms.fd</loader>
  <nvram template='/usr/share/OVMF/OVMF_VARS_4M.ms.fd'>/var/lib/libvirt/qemu/nvram/vm_VARS.fd</nvram>
</os><devices><tpm model='tpm-crb'><backend type='emulator' version='2.0'/><alias name='tpm0'/></tpm></devices></domain>`
	var x libvirtxml.Domain
	if err := x.Unmarshal(doc); err != nil {
		t.Fatal(err)
	}
	s, _ := specOf(&x, nil)
	if s.Firmware != api.FirmwareEFI || !s.SecureBoot || s.TPM == nil || s.TPM.Version != "2.0" {
		t.Fatalf("read back %q %v %+v", s.Firmware, s.SecureBoot, s.TPM)
	}
	if p := nvramPath(&x); p != "/var/lib/libvirt/qemu/nvram/vm_VARS.fd" {
		t.Fatalf("nvram path %q", p)
	}
	x.OS.NVRam = nil
	if p := nvramPath(&x); p != nvramDir+"/vm_VARS.fd" {
		t.Fatalf("default nvram path %q", p)
	}
}

// Going bios -> efi changes the machine: the redefined domain carries no
// i440fx address or controller; toggling secure_boot keeps the versioned
// machine libvirt recorded and every address.
func TestMergeFirmwareMachineChange(t *testing.T) {
	base := api.VMSpec{VCPU: 1, MemoryMiB: 64, Interfaces: []api.VMInterface{{Network: "n", Bridge: "br", MAC: "52:54:00:00:00:01"}}}
	p := func() domainParams {
		return domainParams{name: "vm", virtType: "qemu", meta: &instanceMeta{}, probe: probeNoKVM}
	}
	cur := builtDomain(t, base, p())
	// As libvirt completes an i440fx definition.
	cur.OS.Type.Machine = "pc-i440fx-7.2"
	pci := &libvirtxml.DomainAddress{PCI: &libvirtxml.DomainAddressPCI{}}
	cur.Devices.Interfaces[0].Address = pci
	cur.Devices.Interfaces[0].VirtualPort.Params.OpenVSwitch.InterfaceID = "keep-me"
	cur.Devices.Controllers = append(cur.Devices.Controllers, libvirtxml.DomainController{Type: "pci", Model: "pci-root"},
		libvirtxml.DomainController{Type: "usb", Model: "piix3-uhci", Address: pci})

	efi := base
	efi.Firmware = api.FirmwareEFI
	n := mergeDomain(cur, builtDomain(t, efi, p()))
	if n.OS.Firmware != "efi" || n.OS.Type.Machine != "q35" {
		t.Fatalf("os: %+v %+v", n.OS, n.OS.Type)
	}
	if len(n.Devices.Controllers) != 0 || n.Devices.Interfaces[0].Address != nil {
		t.Fatalf("i440fx devices kept: %+v, %+v", n.Devices.Controllers, n.Devices.Interfaces[0].Address)
	}
	if id := n.Devices.Interfaces[0].VirtualPort.Params.OpenVSwitch.InterfaceID; id != "keep-me" {
		t.Fatalf("OVS interface id %q", id)
	}

	// On q35 now (as libvirt recorded it); Secure Boot and a TPM added.
	cur = n
	cur.OS.Type.Machine = "pc-q35-7.2"
	cur.Devices.Interfaces[0].Address = pci
	sb := efi
	sb.SecureBoot, sb.TPM = true, &api.TPM{Version: "2.0"}
	n = mergeDomain(cur, builtDomain(t, sb, p()))
	if n.OS.Type.Machine != "pc-q35-7.2" || n.OS.Loader == nil || n.OS.Loader.Secure != "yes" || n.Features.SMM == nil ||
		n.Features.ACPI == nil || fwFeatures(n.OS) != "enrolled-keys=yes,secure-boot=yes" {
		t.Fatalf("secure boot: %+v %+v", n.OS, n.Features)
	}
	if n.Devices.Interfaces[0].Address != pci || len(n.Devices.TPMs) != 1 {
		t.Fatalf("devices: %+v", n.Devices)
	}

	// And back to BIOS: i440fx again, no SMM, no firmware features.
	n = mergeDomain(n, builtDomain(t, base, p()))
	if n.OS.Firmware != "" || n.OS.FirmwareInfo != nil || n.OS.Loader != nil || n.OS.Type.Machine != "" || n.Features.SMM != nil ||
		len(n.Devices.TPMs) != 0 || n.Devices.Interfaces[0].Address != nil {
		t.Fatalf("back to bios: %+v %+v %+v", n.OS, n.Features, n.Devices)
	}
}

func TestFirmwareCapsErrors(t *testing.T) {
	full := &libvirtxml.DomainCaps{
		OS: &libvirtxml.DomainCapsOS{Enums: []libvirtxml.DomainCapsEnum{{Name: "firmware", Values: []string{"efi"}}},
			Loader: &libvirtxml.DomainCapsOSLoader{Enums: []libvirtxml.DomainCapsEnum{{Name: "secure", Values: []string{"yes", "no"}}}}},
		Devices: &libvirtxml.DomainCapsDevices{TPM: &libvirtxml.DomainCapsDevice{Supported: "yes", Enums: []libvirtxml.DomainCapsEnum{
			{Name: "backendModel", Values: []string{"passthrough", "emulator"}}, {Name: "backendVersion", Values: []string{"1.2", "2.0"}}}}},
	}
	// As libvirt 9.0 reports a host without ovmf and without swtpm.
	bare := &libvirtxml.DomainCaps{
		OS: &libvirtxml.DomainCapsOS{Supported: "yes"},
		Devices: &libvirtxml.DomainCapsDevices{TPM: &libvirtxml.DomainCapsDevice{Supported: "yes", Enums: []libvirtxml.DomainCapsEnum{
			{Name: "backendModel", Values: []string{"passthrough"}}}}},
	}
	all := &api.VMSpec{Firmware: api.FirmwareEFI, SecureBoot: true, TPM: &api.TPM{Version: "2.0"}}
	if err := firmwareCapsErr(full, all); err != nil {
		t.Fatal(err)
	}
	err := firmwareCapsErr(bare, &api.VMSpec{Firmware: api.FirmwareEFI})
	if !api.IsCode(err, api.CodeConflict) || !strings.Contains(err.Error(), "install the ovmf package") {
		t.Fatalf("no ovmf: %v", err)
	}
	err = firmwareCapsErr(bare, &api.VMSpec{TPM: &api.TPM{Version: "2.0"}})
	if !api.IsCode(err, api.CodeConflict) || !strings.Contains(err.Error(), "swtpm-tools") {
		t.Fatalf("no swtpm: %v", err)
	}
	if err := firmwareCapsErr(bare, &api.VMSpec{}); err != nil {
		t.Fatal(err)
	}
}

// On the test driver, which has no firmware auto-selection, firmware,
// Secure Boot and the TPM round-trip, and an update switches them in place
// (same UUID).
func TestTestDriverFirmware(t *testing.T) {
	ctx := context.Background()
	l := openTest(t)
	name := uniq("fw")
	spec := api.VMSpec{VCPU: 1, MemoryMiB: 64, Firmware: api.FirmwareEFI, SecureBoot: true, TPM: &api.TPM{Version: "2.0"}}
	vm, err := l.CreateVM(ctx, name, spec, service.VMMeta{})
	if err != nil {
		t.Fatal(err)
	}
	if vm.Firmware != api.FirmwareEFI || !vm.SecureBoot || vm.TPM == nil || vm.TPM.Version != "2.0" {
		t.Fatalf("created: %q %v %+v", vm.Firmware, vm.SecureBoot, vm.TPM)
	}
	uuid := vm.UUID
	for _, want := range []api.VMSpec{
		{VCPU: 1, MemoryMiB: 64, Firmware: api.FirmwareEFI},
		{VCPU: 1, MemoryMiB: 64},
		{VCPU: 1, MemoryMiB: 64, TPM: &api.TPM{Version: "2.0"}},
		{VCPU: 1, MemoryMiB: 64, Firmware: api.FirmwareEFI, SecureBoot: true},
	} {
		if _, err := l.UpdateVM(ctx, name, want); err != nil {
			t.Fatal(err)
		}
		got, err := l.GetVM(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if got.UUID != uuid || got.Firmware != orBIOS(want.Firmware) || got.SecureBoot != want.SecureBoot || (got.TPM == nil) != (want.TPM == nil) {
			t.Fatalf("after update to %q/%v/%+v: %s %q %v %+v", want.Firmware, want.SecureBoot, want.TPM, got.UUID, got.Firmware, got.SecureBoot, got.TPM)
		}
		if ch := api.HardwareChanges(got.VMSpec, want); len(ch) > 0 {
			t.Fatalf("read back differs in %v", ch)
		}
	}
	if err := l.DeleteVM(ctx, name, 0); err != nil {
		t.Fatal(err)
	}
}

// A UEFI VM's snapshot is refused up front, with the reason.
func TestTestDriverSnapshotOfUEFIRefused(t *testing.T) {
	ctx := context.Background()
	l := openTest(t)
	name := uniq("fwsnap")
	if _, err := l.CreateVM(ctx, name, api.VMSpec{VCPU: 1, MemoryMiB: 64, Firmware: api.FirmwareEFI}, service.VMMeta{}); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.DeleteVM(ctx, name, 0) }()
	_, err := l.CreateSnapshot(ctx, name, "s", api.SnapshotSpec{})
	if !api.IsCode(err, api.CodeUnsupported) || !strings.Contains(err.Error(), "UEFI") {
		t.Fatalf("snapshot of a UEFI VM: %v", err)
	}
}
