package hypervisor

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"io"
	"sort"
	"strings"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/kvmfleet/terraform-provider-kvm/backend/service"
	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// Our <metadata> element: <kvm:instance xmlns:kvm="metaNS">.
const (
	metaNS     = "https://kvmfleet.dev/xmlns/kvm-hostd/1"
	metaPrefix = "kvm"
	metaLocal  = "instance"
)

// instanceMeta holds what libvirt does not model but GetVM must return.
type instanceMeta struct {
	Owner           string      `xml:"owner,omitempty"`
	RequestID       string      `xml:"request-id,omitempty"`
	ShutdownTimeout *int64      `xml:"shutdown-timeout,omitempty"`
	CPUMode         string      `xml:"cpu-mode,omitempty"` // as requested; TCG may run another
	Tags            []metaTag   `xml:"tags>tag"`
	Disks           []metaDisk  `xml:"disks>disk"`
	Interfaces      []metaIface `xml:"interfaces>interface"`
	CloudInit       *metaCI     `xml:"cloud-init"`
	SeedISO         string      `xml:"seed-iso,omitempty"`
	Snapshots       []metaSnap  `xml:"snapshots>snapshot"`
	NUMA            []metaNUMA  `xml:"numa>cell"`
	EmulatorPin     string      `xml:"emulator-pin,omitempty"`
	PCIDevices      []metaPCI   `xml:"pci-devices>device"`
	// Firmware, SecureBoot and TPM as asked: read back from here only
	// where the domain definition cannot say (the test driver).
	Firmware   string `xml:"firmware,omitempty"`
	SecureBoot bool   `xml:"secure-boot,omitempty"`
	TPM        string `xml:"tpm,omitempty"`
}

type metaTag struct {
	Key   string `xml:"key,attr"`
	Value string `xml:",chardata"`
}

type metaDisk struct {
	Path   string `xml:"path,attr"`
	Pool   string `xml:"pool,attr"`
	Volume string `xml:"volume,attr"`
}

type metaIface struct {
	MAC     string `xml:"mac,attr,omitempty"`
	Network string `xml:"network,attr"`
	IPv4    string `xml:"ipv4-address,attr,omitempty"`
}

// metaCI records cloud-init for read-back. user-data itself is never
// stored here (domain XML is readable by anyone with a read-only libvirt
// connection): only its hash. UserData is read from domains defined by
// older versions, and dropped at their next update.
type metaCI struct {
	UserData       string `xml:"user-data,omitempty"`
	UserDataSHA256 string `xml:"user-data-sha256,omitempty"`
	MetaData       string `xml:"meta-data"`
	NetworkConfig  string `xml:"network-config"`
}

// metaSnap records what was asked of a snapshot where libvirt's own record
// differs (a running QEMU domain can only be snapshotted with memory).
type metaSnap struct {
	Name          string `xml:"name,attr"`
	IncludeMemory bool   `xml:"include-memory,attr"`
}

// marshalMeta renders the element with our prefix, so libvirt stores it
// under our namespace (encoding/xml would otherwise emit a default xmlns).
func marshalMeta(m *instanceMeta) (string, error) {
	type wire struct {
		XMLName xml.Name `xml:"kvm:instance"`
		Xmlns   string   `xml:"xmlns:kvm,attr"`
		*instanceMeta
	}
	b, err := xml.Marshal(wire{Xmlns: metaNS, instanceMeta: m})
	if err != nil {
		return "", fmt.Errorf("encode metadata: %w", err)
	}
	return string(b), nil
}

// marshalMetaBare renders the element without namespace, as
// virDomainSetMetadata wants it (libvirt adds prefix and namespace).
func marshalMetaBare(m *instanceMeta) (string, error) {
	type wire struct {
		XMLName xml.Name `xml:"instance"`
		*instanceMeta
	}
	b, err := xml.Marshal(wire{instanceMeta: m})
	if err != nil {
		return "", fmt.Errorf("encode metadata: %w", err)
	}
	return string(b), nil
}

// parseMeta finds our element in a domain's <metadata> inner XML.
func parseMeta(inner string) *instanceMeta {
	m := &instanceMeta{}
	dec := xml.NewDecoder(strings.NewReader(inner))
	for {
		tok, err := dec.Token()
		if err != nil {
			if err != io.EOF {
				return m
			}
			return m
		}
		if se, ok := tok.(xml.StartElement); ok {
			if se.Name.Space == metaNS && se.Name.Local == metaLocal {
				_ = dec.DecodeElement(m, &se)
				return m
			}
			_ = dec.Skip()
		}
	}
}

func metaOf(x *libvirtxml.Domain) *instanceMeta {
	if x.Metadata == nil {
		return &instanceMeta{}
	}
	return parseMeta(x.Metadata.XML)
}

// setMeta replaces our element in x's metadata, keeping foreign elements.
func setMeta(x *libvirtxml.Domain, m *instanceMeta) error {
	s, err := marshalMeta(m)
	if err != nil {
		return err
	}
	var keep bytes.Buffer
	if x.Metadata != nil {
		dec := xml.NewDecoder(strings.NewReader(x.Metadata.XML))
		for {
			off := dec.InputOffset()
			tok, err := dec.Token()
			if err != nil {
				break
			}
			if se, ok := tok.(xml.StartElement); ok {
				if err := dec.Skip(); err != nil {
					break
				}
				if se.Name.Space != metaNS {
					keep.WriteString(x.Metadata.XML[off:dec.InputOffset()])
				}
			}
		}
	}
	x.Metadata = &libvirtxml.DomainMetadata{XML: keep.String() + s}
	return nil
}

func domXML(d *libvirt.Domain, flags libvirt.DomainXMLFlags) (*libvirtxml.Domain, error) {
	doc, err := d.GetXMLDesc(flags)
	if err != nil {
		return nil, err
	}
	x := &libvirtxml.Domain{}
	if err := x.Unmarshal(doc); err != nil {
		return nil, fmt.Errorf("parse domain XML: %w", err)
	}
	return x, nil
}

// diskList returns the data disks (not the cloud-init seed CD-ROM).
func diskList(x *libvirtxml.Domain) []libvirtxml.DomainDisk {
	if x.Devices == nil {
		return nil
	}
	var out []libvirtxml.DomainDisk
	for _, d := range x.Devices.Disks {
		if d.Device == "" || d.Device == "disk" {
			out = append(out, d)
		}
	}
	return out
}

func diskPath(d *libvirtxml.DomainDisk) string {
	if d.Source != nil && d.Source.File != nil {
		return d.Source.File.File
	}
	if d.Source != nil && d.Source.Network != nil && d.Source.Network.Protocol == "rbd" {
		return d.Source.Network.Name // an rbd volume's libvirt path, "pool/image"
	}
	return ""
}

// resolvedDisk is a VMDisk with what libvirt needs to attach it.
type resolvedDisk struct {
	api.VMDisk
	Path   string
	Format string
	IOTune *api.IOTune
	// Backing is the volume's backing chain, outermost first (empty for
	// a volume that is not a linked clone).
	Backing []backingFile
	// EncryptionKey names the master key of a LUKS volume ("": plain).
	EncryptionKey string
	// Network is the source of a volume that is not a file (an rbd image).
	Network *libvirtxml.DomainDiskSource
}

// backingFile is one image in a backing chain.
type backingFile struct {
	Path   string
	Format string
}

// backingStoreXML spells out a backing chain, terminated by an empty
// <backingStore/>: with the chain explicit, QEMU opens exactly these files
// and never follows a backing file named inside an image.
func backingStoreXML(chain []backingFile) *libvirtxml.DomainDiskBackingStore {
	bs := &libvirtxml.DomainDiskBackingStore{}
	for i := len(chain) - 1; i >= 0; i-- {
		bs = &libvirtxml.DomainDiskBackingStore{
			Format:       &libvirtxml.DomainDiskFormat{Type: chain[i].Format},
			Source:       &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: chain[i].Path}},
			BackingStore: bs,
		}
	}
	return bs
}

// busPrefix gives the device-name family of a bus.
func busPrefix(bus string) (string, error) {
	switch bus {
	case "", "virtio":
		return "vd", nil
	case "sata", "scsi", "usb":
		return "sd", nil
	case "ide":
		return "hd", nil
	}
	return "", api.Errorf(api.CodeInvalid, "disk bus %q: use virtio, sata, scsi or ide", bus)
}

func devName(prefix string, i int) string {
	// vda..vdz, vdaa..: enough for any sane VM.
	s := ""
	for n := i; ; n = n/26 - 1 {
		s = string(rune('a'+n%26)) + s
		if n < 26 {
			break
		}
	}
	return prefix + s
}

// domainParams is everything buildDomain needs besides the spec.
type domainParams struct {
	name     string
	virtType string
	disks    []resolvedDisk
	seedISO  string
	meta     *instanceMeta
	// probe is what the host's startup probe found: the CPU mode of VMs
	// that name none, and the features a mode needs disabled to start.
	probe *HostProbe
}

// buildDomain renders a VMSpec as a libvirt domain definition.
func buildDomain(spec *api.VMSpec, p domainParams) (*libvirtxml.Domain, error) {
	if spec.VCPU <= 0 {
		return nil, api.Errorf(api.CodeInvalid, "vcpu must be positive")
	}
	if spec.MemoryMiB <= 0 {
		return nil, api.Errorf(api.CodeInvalid, "memory_mib must be positive")
	}
	maxMem := spec.MaxMemoryMiB
	if maxMem == 0 {
		maxMem = spec.MemoryMiB
	}
	if maxMem < spec.MemoryMiB {
		return nil, api.Errorf(api.CodeInvalid, "max_memory_mib (%d) is below memory_mib (%d)", maxMem, spec.MemoryMiB)
	}
	x := &libvirtxml.Domain{
		Type:          p.virtType,
		Name:          p.name,
		UUID:          spec.UUID,
		Description:   spec.Description,
		Memory:        &libvirtxml.DomainMemory{Value: uint(maxMem), Unit: "MiB"},
		CurrentMemory: &libvirtxml.DomainCurrentMemory{Value: uint(spec.MemoryMiB), Unit: "MiB"},
		VCPU:          &libvirtxml.DomainVCPU{Value: uint(spec.VCPU), Placement: "static"},
		OS: &libvirtxml.DomainOS{
			Type:        &libvirtxml.DomainOSType{Type: "hvm"},
			BootDevices: []libvirtxml.DomainBootDevice{{Dev: "hd"}},
		},
		// ACPI lets the guest see hotplug and honour graceful shutdown.
		Features:   &libvirtxml.DomainFeatureList{ACPI: &libvirtxml.DomainFeature{}},
		OnPoweroff: "destroy",
		OnReboot:   "restart",
		OnCrash:    "destroy",
		Devices:    &libvirtxml.DomainDeviceList{},
	}
	if p.virtType != "test" {
		x.OS.Type.Arch = "x86_64"
		x.Features.APIC = &libvirtxml.DomainFeatureAPIC{}
	}
	m := p.meta
	m.CPUMode = ""
	// A VM that names no mode gets what the probe found runs here, with
	// the features it needs disabled. An explicit mode is honoured; it gets
	// a disabled feature only where the probe saw that make it start (on
	// MSR-crashing hosts: host-passthrough without arch-capabilities).
	mode, disable := p.probe.defaultCPU(p.virtType)
	if c := spec.CPU; c != nil {
		m.CPUMode = c.Mode
		if c.Mode != "" {
			mode, disable = c.Mode, nil
		}
		if len(c.Pinning) > int(spec.VCPU) {
			return nil, api.Errorf(api.CodeInvalid, "cpu pinning has %d entries for %d vCPUs", len(c.Pinning), spec.VCPU)
		}
		if c.Sockets > 0 || c.Cores > 0 || c.Threads > 0 {
			s, co, t := orOne(c.Sockets), orOne(c.Cores), orOne(c.Threads)
			if s*co*t != spec.VCPU {
				return nil, api.Errorf(api.CodeInvalid, "cpu topology %d sockets x %d cores x %d threads is not %d vCPUs", s, co, t, spec.VCPU)
			}
			x.CPU = &libvirtxml.DomainCPU{Topology: &libvirtxml.DomainCPUTopology{Sockets: int(s), Cores: int(co), Threads: int(t)}}
		}
		for i, set := range c.Pinning {
			if set == "" {
				continue
			}
			if x.CPUTune == nil {
				x.CPUTune = &libvirtxml.DomainCPUTune{}
			}
			x.CPUTune.VCPUPin = append(x.CPUTune.VCPUPin, libvirtxml.DomainCPUTuneVCPUPin{VCPU: uint(i), CPUSet: set})
		}
	}
	if mode != "" && mode != CPUModeQEMU64 && p.virtType != domainTest {
		// Under TCG there is no host CPU to pass through; "maximum" gives
		// the guest every feature QEMU can emulate instead.
		if p.virtType != domainKVM && (mode == "host-passthrough" || mode == "host-model") {
			mode = "maximum"
		}
		if m.CPUMode != "" {
			disable = p.probe.disabledFor(p.virtType, mode)
		}
		if x.CPU == nil {
			x.CPU = &libvirtxml.DomainCPU{}
		}
		if mode == "custom" {
			x.CPU.Mode = "custom"
			x.CPU.Match = "exact"
			x.CPU.Model = &libvirtxml.DomainCPUModel{Value: "qemu64", Fallback: "allow"}
		} else {
			x.CPU.Mode = mode
		}
		if mode == "host-passthrough" || mode == "maximum" {
			x.CPU.Check = "none"
		}
		for _, f := range disable {
			x.CPU.Features = append(x.CPU.Features, libvirtxml.DomainCPUFeature{Policy: "disable", Name: f})
		}
	}

	buildMemoryLayout(x, spec, m)

	// Disks in order; each bus family numbers its own devices.
	next := map[string]int{}
	scsi := false
	m.Disks = nil
	for _, d := range p.disks {
		prefix, err := busPrefix(d.Bus)
		if err != nil {
			return nil, err
		}
		bus := d.Bus
		if bus == "" {
			bus = "virtio"
		}
		if bus == "scsi" {
			scsi = true
		}
		dev := devName(prefix, next[prefix])
		next[prefix]++
		dd := libvirtxml.DomainDisk{
			Device: "disk",
			Driver: &libvirtxml.DomainDiskDriver{Name: "qemu", Type: d.Format},
			Source: &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: d.Path}},
			Target: &libvirtxml.DomainDiskTarget{Dev: dev, Bus: bus},
			// Format and chain are explicit: QEMU must never probe them.
			BackingStore: backingStoreXML(d.Backing),
		}
		if d.Network != nil {
			dd.Source = d.Network
		}
		if d.EncryptionKey != "" {
			// By secret UUID only: the key never enters the XML.
			dd.Source.Encryption = diskEncryptionXML(d.EncryptionKey, d.Pool, d.Volume)
		}
		if t := d.IOTune; !t.IsZero() {
			dd.IOTune = &libvirtxml.DomainDiskIOTune{ReadBytesSec: uint64(t.ReadBytesSec), WriteBytesSec: uint64(t.WriteBytesSec),
				ReadIopsSec: uint64(t.ReadIOPSSec), WriteIopsSec: uint64(t.WriteIOPSSec)}
		}
		x.Devices.Disks = append(x.Devices.Disks, dd)
		m.Disks = append(m.Disks, metaDisk{Path: d.Path, Pool: d.Pool, Volume: d.Volume})
	}
	if p.seedISO != "" {
		x.Devices.Disks = append(x.Devices.Disks, libvirtxml.DomainDisk{
			Device:       "cdrom",
			Driver:       &libvirtxml.DomainDiskDriver{Name: "qemu", Type: "raw"},
			Source:       &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: p.seedISO}},
			Target:       &libvirtxml.DomainDiskTarget{Dev: devName("sd", next["sd"]), Bus: "sata"},
			ReadOnly:     &libvirtxml.DomainDiskReadOnly{},
			BackingStore: &libvirtxml.DomainDiskBackingStore{},
		})
	}
	m.SeedISO = p.seedISO
	if scsi {
		x.Devices.Controllers = append(x.Devices.Controllers, libvirtxml.DomainController{Type: "scsi", Model: "virtio-scsi"})
	}

	m.Interfaces = nil
	for _, ifc := range spec.Interfaces {
		if ifc.Bridge == "" {
			return nil, api.Errorf(api.CodeInvalid, "interface on network %q has no bridge", ifc.Network)
		}
		model := ifc.Model
		if model == "" {
			model = "virtio"
		}
		ix := libvirtxml.DomainInterface{
			Source: &libvirtxml.DomainInterfaceSource{Bridge: &libvirtxml.DomainInterfaceSourceBridge{Bridge: ifc.Bridge}},
			VirtualPort: &libvirtxml.DomainInterfaceVirtualPort{Params: &libvirtxml.DomainInterfaceVirtualPortParams{
				OpenVSwitch: &libvirtxml.DomainInterfaceVirtualPortParamsOpenVSwitch{}}},
			Model: &libvirtxml.DomainInterfaceModel{Type: model},
		}
		if ifc.MAC != "" {
			ix.MAC = &libvirtxml.DomainInterfaceMAC{Address: strings.ToLower(ifc.MAC)}
		}
		if ifc.MTU > 0 {
			// libvirt sets the tap's MTU and virtio announces it, so
			// the guest needs no network-config for it.
			ix.MTU = &libvirtxml.DomainInterfaceMTU{Size: uint(ifc.MTU)}
		}
		if ifc.NoChecksumOffload && model == "virtio" {
			// Not offered checksum offload, the guest completes every
			// checksum itself; otherwise OVS's userspace datapath
			// passes partially checksummed frames on and every TCP
			// segment between VMs is dropped (ping still works).
			ix.Driver = &libvirtxml.DomainInterfaceDriver{Host: &libvirtxml.DomainInterfaceDriverHost{CSum: "off"}}
		}
		if ifc.VLAN > 0 {
			if ifc.VLAN > 4094 {
				return nil, api.Errorf(api.CodeInvalid, "vlan %d out of range", ifc.VLAN)
			}
			ix.VLan = &libvirtxml.DomainInterfaceVLan{Tags: []libvirtxml.DomainInterfaceVLanTag{{ID: uint(ifc.VLAN)}}}
		}
		x.Devices.Interfaces = append(x.Devices.Interfaces, ix)
		m.Interfaces = append(m.Interfaces, metaIface{MAC: strings.ToLower(ifc.MAC), Network: ifc.Network, IPv4: ifc.IPv4Address})
	}

	// Free page reporting: the guest hands the pages it frees back to
	// the host, which then reads them as zero. A migration sends zero
	// pages as a flag, so it copies what the guest uses, not every page
	// it ever touched (which matters most where the memory is copied with
	// the guest paused, under TCG: see liveMemoryCopy).
	x.Devices.MemBalloon = &libvirtxml.DomainMemBalloon{Model: "virtio", FreePageReporting: "on"}
	if spec.GuestAgentEnabled() {
		x.Devices.Channels = append(x.Devices.Channels, agentChannel())
	}
	if p.virtType != "test" {
		// A serial console for `virsh console`, logged for
		// GET /v1/vms/{name}/console; there is no <graphics>.
		port := uint(0)
		x.Devices.Serials = []libvirtxml.DomainSerial{{Source: &libvirtxml.DomainChardevSource{Pty: &libvirtxml.DomainChardevSourcePty{}},
			Target: &libvirtxml.DomainSerialTarget{Port: &port}, Log: serialLog(p.name)}}
		x.Devices.Consoles = []libvirtxml.DomainConsole{{Source: &libvirtxml.DomainChardevSource{Pty: &libvirtxml.DomainChardevSourcePty{}},
			Target: &libvirtxml.DomainConsoleTarget{Type: "serial", Port: &port}}}
	}

	if err := buildDevices(spec, p.disks, x); err != nil {
		return nil, err
	}
	applyFirmware(x, spec, p.virtType, m)

	m.Tags = nil
	keys := make([]string, 0, len(spec.Tags))
	for k := range spec.Tags {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		m.Tags = append(m.Tags, metaTag{Key: k, Value: spec.Tags[k]})
	}
	m.ShutdownTimeout = spec.ShutdownTimeoutSec
	m.CloudInit = nil
	if ci := spec.CloudInit; ci != nil {
		m.CloudInit = &metaCI{UserDataSHA256: api.UserDataHash(ci.UserData), MetaData: ci.MetaData, NetworkConfig: ci.NetworkConfig}
	}
	if err := addPCIHostdevs(x, spec, m); err != nil {
		return nil, err
	}
	if err := setMeta(x, m); err != nil {
		return nil, err
	}
	return x, nil
}

// guestAgentChannel is the virtio-serial port name qemu-guest-agent opens.
const guestAgentChannel = "org.qemu.guest_agent.0"

// agentChannel is the qemu-guest-agent channel: a unix socket whose path
// libvirt picks (it then also talks to the agent itself).
func agentChannel() libvirtxml.DomainChannel {
	return libvirtxml.DomainChannel{
		Source: &libvirtxml.DomainChardevSource{UNIX: &libvirtxml.DomainChardevSourceUNIX{Mode: "bind"}},
		Target: &libvirtxml.DomainChannelTarget{VirtIO: &libvirtxml.DomainChannelTargetVirtIO{Name: guestAgentChannel}},
	}
}

// agentChannelOf finds the qemu-guest-agent channel of a domain, or nil.
func agentChannelOf(x *libvirtxml.Domain) *libvirtxml.DomainChannel {
	if x == nil || x.Devices == nil {
		return nil
	}
	for i := range x.Devices.Channels {
		c := &x.Devices.Channels[i]
		if c.Target != nil && c.Target.VirtIO != nil && c.Target.VirtIO.Name == guestAgentChannel {
			return c
		}
	}
	return nil
}

// agentConnected reports whether the live domain's agent channel is
// connected: libvirt sets state='connected' once the guest opened it.
func agentConnected(live *libvirtxml.Domain) bool {
	c := agentChannelOf(live)
	return c != nil && c.Target.VirtIO.State == "connected"
}

func orOne(v int64) int64 {
	if v <= 0 {
		return 1
	}
	return v
}

// memMiB converts a libvirt memory value to MiB.
func memMiB(v uint, unit string) int64 {
	return int64(toBytes(unit, uint64(v)) / mib)
}

// volumeRef finds pool and volume of a disk path: our metadata first,
// then libvirt (for disks attached out of band).
type volumeRef func(path string) (pool, volume string)

// specOf reads a VMSpec back from a domain definition.
func specOf(x *libvirtxml.Domain, ref volumeRef) (api.VMSpec, service.VMMeta) {
	m := metaOf(x)
	var s api.VMSpec
	s.UUID = x.UUID
	s.Description = x.Description
	if x.VCPU != nil {
		s.VCPU = int64(x.VCPU.Value)
	}
	if x.Memory != nil {
		s.MaxMemoryMiB = memMiB(x.Memory.Value, x.Memory.Unit)
	}
	if x.CurrentMemory != nil {
		s.MemoryMiB = memMiB(x.CurrentMemory.Value, x.CurrentMemory.Unit)
	} else {
		s.MemoryMiB = s.MaxMemoryMiB
	}
	cpu := &api.CPU{Mode: m.CPUMode}
	if x.CPU != nil && x.CPU.Topology != nil {
		t := x.CPU.Topology
		cpu.Sockets, cpu.Cores, cpu.Threads = int64(t.Sockets), int64(t.Cores), int64(t.Threads)
	}
	if x.CPUTune != nil && len(x.CPUTune.VCPUPin) > 0 {
		pins := make([]string, s.VCPU)
		last := -1
		for _, p := range x.CPUTune.VCPUPin {
			if int(p.VCPU) < len(pins) {
				pins[p.VCPU] = p.CPUSet
				last = max(last, int(p.VCPU))
			}
		}
		cpu.Pinning = pins[:last+1]
	}
	readMemoryLayout(x, m, &s, cpu)
	if cpu.Mode != "" || cpu.Sockets > 0 || cpu.Cores > 0 || cpu.Threads > 0 || len(cpu.Pinning) > 0 || cpu.EmulatorPinning != "" {
		s.CPU = cpu
	}
	byPath := map[string]metaDisk{}
	for _, d := range m.Disks {
		byPath[d.Path] = d
	}
	for _, d := range diskList(x) {
		vd := api.VMDisk{}
		if d.Target != nil {
			vd.Target, vd.Bus = d.Target.Dev, d.Target.Bus
		}
		p := diskPath(&d)
		if md, ok := byPath[p]; ok {
			vd.Pool, vd.Volume = md.Pool, md.Volume
		} else if ref != nil && p != "" {
			vd.Pool, vd.Volume = ref(p)
		}
		s.Disks = append(s.Disks, vd)
	}
	if x.Devices != nil {
		nets := map[string]metaIface{}
		for _, mi := range m.Interfaces {
			if mi.MAC != "" {
				nets[mi.MAC] = mi
			}
		}
		for i, ix := range x.Devices.Interfaces {
			vi := api.VMInterface{}
			if ix.MAC != nil {
				vi.MAC = strings.ToLower(ix.MAC.Address)
			}
			if ix.Model != nil {
				vi.Model = ix.Model.Type
			}
			if ix.Source != nil && ix.Source.Bridge != nil {
				vi.Bridge = ix.Source.Bridge.Bridge
			}
			if ix.VLan != nil && len(ix.VLan.Tags) > 0 {
				vi.VLAN = int64(ix.VLan.Tags[0].ID)
			}
			if ix.Target != nil {
				vi.Port = ix.Target.Dev
			}
			if n, ok := nets[vi.MAC]; ok {
				vi.Network, vi.IPv4Address = n.Network, n.IPv4
			} else if i < len(m.Interfaces) {
				vi.Network, vi.IPv4Address = m.Interfaces[i].Network, m.Interfaces[i].IPv4
			}
			s.Interfaces = append(s.Interfaces, vi)
		}
	}
	if m.CloudInit != nil {
		hash := m.CloudInit.UserDataSHA256
		if m.CloudInit.UserData != "" {
			hash = api.UserDataHash(m.CloudInit.UserData)
		}
		s.CloudInit = &api.CloudInit{UserDataSHA256: hash, MetaData: m.CloudInit.MetaData, NetworkConfig: m.CloudInit.NetworkConfig}
	}
	if len(m.Tags) > 0 {
		s.Tags = make(map[string]string, len(m.Tags))
		for _, t := range m.Tags {
			s.Tags[t.Key] = t.Value
		}
	}
	s.ShutdownTimeoutSec = m.ShutdownTimeout
	agent := agentChannelOf(x) != nil
	s.GuestAgent = &agent
	readPCIHostdevs(x, m, &s)
	devicesOf(x, &s)
	readFirmware(x, m, &s)
	return s, service.VMMeta{Owner: m.Owner, RequestID: m.RequestID}
}
