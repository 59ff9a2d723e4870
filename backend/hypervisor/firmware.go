package hypervisor

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// Firmware, Secure Boot and the TPM.
//
// UEFI VMs use libvirt's firmware auto-selection (<os firmware='efi'> with
// <firmware><feature/></firmware>): libvirt picks the OVMF build from the
// firmware descriptors the ovmf package installs (/usr/share/qemu/firmware)
// and creates the VM's NVRAM from that build's variable template at first
// start. kvm-hostd never names firmware files, so an OVMF update on the host
// is picked up by the next cold start.
//
// Machine type: BIOS VMs keep libvirt's default (i440fx), as they always
// had, so an upgrade changes nothing for them. Every UEFI VM is q35: Secure
// Boot needs SMM, which OVMF only supports on q35, and keeping q35 for UEFI
// without Secure Boot too means toggling secure_boot never changes the
// machine (only bios <-> efi does, and then the devices get new addresses:
// see mergeDomain).

// tpmModel is the TPM's interface: CRB, the TPM 2.0 interface Windows 11
// and Linux's tpm_crb driver expect on x86.
const tpmModel = "tpm-crb"

// efiMachine is the machine of UEFI VMs; libvirt expands it to the newest
// versioned q35 machine of the host's QEMU (pc-q35-7.2), which then stays.
const efiMachine = "q35"

// nvramDir is where libvirt's QEMU driver keeps per-VM NVRAM files
// (qemu.conf nvram_dir), named <domain>_VARS.fd.
const nvramDir = "/var/lib/libvirt/qemu/nvram"

// yesNo spells a bool as libvirt does.
func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// applyFirmware adds firmware, Secure Boot and the TPM of spec to x and
// records them in m, from which the test driver (which keeps no firmware
// auto-selection of its own) reads them back.
func applyFirmware(x *libvirtxml.Domain, spec *api.VMSpec, virtType string, m *instanceMeta) {
	m.Firmware, m.SecureBoot, m.TPM = "", false, ""
	if spec.Firmware == api.FirmwareEFI {
		m.Firmware, m.SecureBoot = api.FirmwareEFI, spec.SecureBoot
		x.OS.Firmware = "efi"
		// Both features spelled out: unasked, auto-selection takes the
		// first descriptor that matches, which on Debian is the
		// Secure-Boot-with-Microsoft-keys build.
		on := yesNo(spec.SecureBoot)
		x.OS.FirmwareInfo = &libvirtxml.DomainOSFirmwareInfo{Features: []libvirtxml.DomainOSFirmwareFeature{
			{Enabled: on, Name: "enrolled-keys"}, {Enabled: on, Name: "secure-boot"}}}
		if virtType != domainTest {
			x.OS.Type.Machine = efiMachine
		}
		if spec.SecureBoot {
			// Secure Boot is only secure if the guest OS cannot write
			// the variable store behind the firmware's back: the flash
			// is then accessible in SMM only.
			x.OS.Loader = &libvirtxml.DomainLoader{Secure: "yes"}
			x.Features.SMM = &libvirtxml.DomainFeatureSMM{State: "on"}
		}
	}
	if spec.TPM != nil {
		m.TPM = spec.TPM.Version
		x.Devices.TPMs = []libvirtxml.DomainTPM{tpmDevice(spec.TPM.Version)}
	}
}

func tpmDevice(version string) libvirtxml.DomainTPM {
	return libvirtxml.DomainTPM{Model: tpmModel,
		Backend: &libvirtxml.DomainTPMBackend{Emulator: &libvirtxml.DomainTPMBackendEmulator{Version: version}}}
}

// readFirmware reads firmware, Secure Boot and the TPM back into s: from
// the domain definition, else (the test driver drops what it does not
// model) from our metadata.
func readFirmware(x *libvirtxml.Domain, m *instanceMeta, s *api.VMSpec) {
	s.Firmware = api.FirmwareBIOS
	if o := x.OS; o != nil && (o.Firmware == "efi" || o.Loader != nil && o.Loader.Type == "pflash") {
		s.Firmware = api.FirmwareEFI
		if o.FirmwareInfo != nil {
			for _, f := range o.FirmwareInfo.Features {
				if f.Name == "secure-boot" {
					s.SecureBoot = f.Enabled == "yes"
				}
			}
		} else {
			s.SecureBoot = m.SecureBoot
		}
	} else if m.Firmware == api.FirmwareEFI {
		s.Firmware, s.SecureBoot = api.FirmwareEFI, m.SecureBoot
	}
	if x.Devices != nil {
		for _, t := range x.Devices.TPMs {
			if t.Backend != nil && t.Backend.Emulator != nil {
				v := t.Backend.Emulator.Version
				if v == "" {
					v = api.TPMVersion20 // libvirt's default for an emulated CRB TPM
				}
				s.TPM = &api.TPM{Version: v}
				return
			}
		}
	}
	if m.TPM != "" && (x.Devices == nil || len(x.Devices.TPMs) == 0) {
		s.TPM = &api.TPM{Version: m.TPM}
	}
}

// isQ35 reports whether a domain's machine is a q35 one (q35, pc-q35-7.2).
func isQ35(x *libvirtxml.Domain) bool {
	return x.OS != nil && x.OS.Type != nil && strings.Contains(x.OS.Type.Machine, "q35")
}

// mergeFirmware applies want's firmware, Secure Boot and TPM onto n (a copy
// of cur). It reports whether the machine type changed, in which case the
// caller must let libvirt address every device anew: PCI addresses and
// controllers of an i440fx machine mean nothing on q35 and vice versa.
func mergeFirmware(n, cur, want *libvirtxml.Domain) (machineChanged bool) {
	same := cur.OS != nil && want.OS != nil && cur.OS.Firmware == want.OS.Firmware &&
		fwFeatures(cur.OS) == fwFeatures(want.OS)
	if !same && want.OS != nil {
		o := *want.OS
		if o.Type != nil && cur.OS != nil && cur.OS.Type != nil {
			t := *o.Type
			// Keep the versioned machine libvirt recorded, unless the
			// family changes.
			if isQ35(cur) == (want.OS.Type.Machine == efiMachine) {
				t.Machine = cur.OS.Type.Machine
			} else {
				machineChanged = true
			}
			o.Type = &t
		}
		n.OS = &o
	}
	var feat libvirtxml.DomainFeatureList
	if cur.Features != nil {
		feat = *cur.Features
	}
	feat.SMM = nil
	if want.Features != nil {
		feat.SMM = want.Features.SMM
	}
	n.Features = &feat
	return machineChanged
}

// fwFeatures spells the firmware features of an <os> for comparison.
func fwFeatures(o *libvirtxml.DomainOS) string {
	if o == nil || o.FirmwareInfo == nil {
		return ""
	}
	var fs []string
	for _, f := range o.FirmwareInfo.Features {
		fs = append(fs, f.Name+"="+f.Enabled)
	}
	slices.Sort(fs)
	return strings.Join(fs, ",")
}

// mergeTPM keeps the TPM libvirt completed (alias) while the same one is
// wanted.
func mergeTPM(cur, want []libvirtxml.DomainTPM) []libvirtxml.DomainTPM {
	if len(want) == 0 {
		return nil
	}
	if len(cur) == 1 && cur[0].Model == want[0].Model && cur[0].Backend != nil && cur[0].Backend.Emulator != nil &&
		cur[0].Backend.Emulator.Version == want[0].Backend.Emulator.Version {
		return cur
	}
	return want
}

// checkFirmwareCaps refuses, before anything is defined, firmware or a TPM
// the host's libvirt and QEMU cannot provide, saying what to install:
// libvirt's domain capabilities list "efi" only with an OVMF firmware
// descriptor present, and the emulator TPM backend only with swtpm
// installed. The test driver boots nothing and is not asked.
func (l *Libvirt) checkFirmwareCaps(c *libvirt.Connect, spec *api.VMSpec) error {
	if l.test || (spec.Firmware != api.FirmwareEFI && spec.TPM == nil) {
		return nil
	}
	machine := ""
	if spec.Firmware == api.FirmwareEFI {
		machine = efiMachine
	}
	doc, err := c.GetDomainCapabilities("", "x86_64", machine, l.virtType, 0)
	if err != nil {
		return wrap(err, "domain capabilities")
	}
	var caps libvirtxml.DomainCaps
	if err := caps.Unmarshal(doc); err != nil {
		return fmt.Errorf("parse domain capabilities: %w", err)
	}
	return firmwareCapsErr(&caps, spec)
}

func firmwareCapsErr(caps *libvirtxml.DomainCaps, spec *api.VMSpec) error {
	if spec.Firmware == api.FirmwareEFI {
		var firmware, secure []string
		if caps.OS != nil {
			firmware = enumValues(caps.OS.Enums, "firmware")
			if caps.OS.Loader != nil {
				secure = enumValues(caps.OS.Loader.Enums, "secure")
			}
		}
		if !slices.Contains(firmware, "efi") {
			return api.Errorf(api.CodeConflict, "this host cannot boot UEFI (firmware = \"efi\"): libvirt finds no UEFI firmware "+
				"descriptor for q35 machines; install the ovmf package on the host (and restart libvirtd)")
		}
		if spec.SecureBoot && !slices.Contains(secure, "yes") {
			return api.Errorf(api.CodeConflict, "this host cannot boot with Secure Boot: its QEMU offers no SMM-protected "+
				"firmware; install the ovmf package on the host (and restart libvirtd)")
		}
	}
	if spec.TPM != nil {
		var backends, versions []string
		if caps.Devices != nil && caps.Devices.TPM != nil && caps.Devices.TPM.Supported == "yes" {
			backends = enumValues(caps.Devices.TPM.Enums, "backendModel")
			versions = enumValues(caps.Devices.TPM.Enums, "backendVersion")
		}
		if !slices.Contains(backends, "emulator") {
			return api.Errorf(api.CodeConflict, "this host cannot emulate a TPM: libvirt finds no swtpm; install the swtpm and "+
				"swtpm-tools packages on the host")
		}
		// libvirt 9.0 lists versions only from swtpm's own capabilities.
		if len(versions) > 0 && !slices.Contains(versions, spec.TPM.Version) {
			return api.Errorf(api.CodeConflict, "this host's swtpm cannot emulate TPM %s (it offers %s)", spec.TPM.Version, strings.Join(versions, ", "))
		}
	}
	return nil
}

func enumValues(enums []libvirtxml.DomainCapsEnum, name string) []string {
	for _, e := range enums {
		if e.Name == name {
			return e.Values
		}
	}
	return nil
}

// nvramPath is the NVRAM file of a UEFI domain, "" for BIOS: the path
// libvirt recorded, else the one it picks at first start.
func nvramPath(x *libvirtxml.Domain) string {
	if x == nil || x.OS == nil {
		return ""
	}
	if x.OS.NVRam != nil && x.OS.NVRam.NVRam != "" {
		return x.OS.NVRam.NVRam
	}
	if x.OS.Firmware != "efi" {
		return ""
	}
	return filepath.Join(nvramDir, x.Name+"_VARS.fd")
}

// removeNVRAM deletes the NVRAM file of a domain definition (libvirt makes
// a new one from the template at the next start).
func (l *Libvirt) removeNVRAM(x *libvirtxml.Domain) {
	p := nvramPath(x)
	if l.test || p == "" {
		return
	}
	if err := os.Remove(p); err != nil && !os.IsNotExist(err) {
		l.log.Warn("remove NVRAM", "path", p, "err", err)
	}
}

// copyNVRAMTo copies the NVRAM file at path to the same path on the libvirt
// at uri, for a migration: libvirt 9.0 migrates the firmware's variable
// store only as QEMU's flash contents in guest memory, never the file, so
// the target would otherwise start from the template and, at the VM's next
// cold start there, have lost every variable the guest set (boot entries,
// Secure Boot keys). NVRAM is not a pool volume: the upload goes through a
// transient directory pool on the target's NVRAM directory, which leaves
// the directory as it was when destroyed. A missing source file (the VM
// never ran) is nothing to copy. It returns what it sent.
func copyNVRAMTo(uri, path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, nil
		}
		return nil, err
	}
	return data, uploadNVRAM(uri, path, data, true)
}

// recopyNVRAM sends the source's NVRAM file again, in place, if it changed
// since sent: the guest wrote a variable while it migrated.
func recopyNVRAM(uri, path string, sent []byte) error {
	data, err := os.ReadFile(path)
	if err != nil || bytes.Equal(data, sent) {
		return nil
	}
	return uploadNVRAM(uri, path, data, false)
}

// deleteNVRAMOn removes the copy copyNVRAMTo made on the libvirt at uri,
// after a migration that failed: a VM created there later under the same
// name would otherwise boot with this one's variables.
func deleteNVRAMOn(uri, path string) error {
	c, err := libvirt.NewConnect(uri)
	if err != nil {
		return err
	}
	defer c.Close()
	if d, err := c.LookupDomainByName(strings.TrimSuffix(filepath.Base(path), "_VARS.fd")); err == nil {
		d.Free()
		return nil // the domain arrived after all: the file is its own
	}
	return withNVRAMPool(c, filepath.Dir(path), func(p *libvirt.StoragePool) error {
		v, err := p.LookupStorageVolByName(filepath.Base(path))
		if err != nil {
			return nil
		}
		defer v.Free()
		return v.Delete(0)
	})
}

// withNVRAMPool runs fn with a storage pool on dir on c: the one there, or
// a transient one, destroyed afterwards (which leaves the directory as it
// is).
func withNVRAMPool(c *libvirt.Connect, dir string, fn func(*libvirt.StoragePool) error) error {
	p, err := c.LookupStoragePoolByTargetPath(dir)
	if err != nil {
		var b [4]byte
		_, _ = rand.Read(b[:])
		px := libvirtxml.StoragePool{Type: "dir", Name: "kvm-hostd-nvram-" + hex.EncodeToString(b[:]),
			Target: &libvirtxml.StoragePoolTarget{Path: dir}}
		doc, err := px.Marshal()
		if err != nil {
			return err
		}
		// Without building first: a build would set the pool's owner
		// and mode on libvirt's own directory. Only a host that never
		// ran a UEFI VM lacks it; then it is built.
		if p, err = c.StoragePoolCreateXML(doc, 0); err != nil {
			if p, err = c.StoragePoolCreateXML(doc, libvirt.STORAGE_POOL_CREATE_WITH_BUILD); err != nil {
				return fmt.Errorf("open %s on the target: %w", dir, err)
			}
		}
		defer func() { _ = p.Destroy() }()
	}
	defer p.Free()
	_ = p.Refresh(0)
	return fn(p)
}

func uploadNVRAM(uri, path string, data []byte, replace bool) error {
	c, err := libvirt.NewConnect(uri)
	if err != nil {
		return err
	}
	defer c.Close()
	return withNVRAMPool(c, filepath.Dir(path), func(p *libvirt.StoragePool) error {
		return uploadVolume(c, p, filepath.Base(path), data, replace)
	})
}

// uploadVolume writes data into volume name of p: a new one, or in place.
func uploadVolume(c *libvirt.Connect, p *libvirt.StoragePool, name string, data []byte, replace bool) error {
	v, err := p.LookupStorageVolByName(name)
	if err == nil && replace {
		_ = v.Delete(0)
		v.Free()
	}
	if err != nil || replace {
		vx := libvirtxml.StorageVolume{
			Name:     name,
			Capacity: &libvirtxml.StorageVolumeSize{Value: uint64(len(data))},
			Target:   &libvirtxml.StorageVolumeTarget{Format: &libvirtxml.StorageVolumeTargetFormat{Type: "raw"}},
		}
		doc, err := vx.Marshal()
		if err != nil {
			return err
		}
		if v, err = p.StorageVolCreateXML(doc, 0); err != nil {
			return err
		}
	}
	defer v.Free()
	st, err := c.NewStream(0)
	if err != nil {
		return err
	}
	defer st.Free()
	if err := v.Upload(st, 0, uint64(len(data)), 0); err != nil {
		return err
	}
	for sent := 0; sent < len(data); {
		n, err := st.Send(data[sent:])
		if err != nil {
			_ = st.Abort()
			return err
		}
		sent += n
	}
	return st.Finish()
}

func orBIOS(firmware string) string {
	if firmware == "" {
		return api.FirmwareBIOS
	}
	return firmware
}

// swtpmDir is where libvirt keeps the TPM state of each domain, by UUID.
const swtpmDir = "/var/lib/libvirt/swtpm"

// removeFirmwareState deletes what a deleted (or migrated away) domain x
// leaves of its firmware: the NVRAM file and the TPM state directory.
// undefine already asks libvirt to, but libvirt 9.0 knows the NVRAM path
// of a domain defined with firmware auto-selection only once it ran, and
// keeps a TPM's state when the undefine flags are not supported; the UUID
// comes from libvirt, so the path stays inside swtpmDir.
func (l *Libvirt) removeFirmwareState(x *libvirtxml.Domain) {
	if l.test || x == nil {
		return
	}
	l.removeNVRAM(x)
	if x.Devices != nil && len(x.Devices.TPMs) > 0 && api.ValidUUID(x.UUID) {
		p := filepath.Join(swtpmDir, strings.ToLower(x.UUID))
		if err := os.RemoveAll(p); err != nil {
			l.log.Warn("remove TPM state", "path", p, "err", err)
		}
	}
}
