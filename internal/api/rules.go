package api

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math"
	"net"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The rules in this file are enforced by kvm-hostd on every request and
// checked by the provider at plan time, from this one copy, so a value the
// plan accepts is one the host accepts.

// Value sets of a VM. CPUModes are the modes a user may ask for; the host
// may pick its own default when none is given.
var (
	Buses     = []string{"virtio", "sata", "scsi", "ide"}
	NICModels = []string{"virtio", "e1000", "e1000e", "rtl8139"}
	CPUModes  = []string{"host-passthrough", "host-model", "maximum", "custom"}
	// MigrationModes are the modes of POST /v1/vms/{name}/migrate.
	MigrationModes = []string{"live", "offline"}
)

// Defaults kvm-hostd fills in.
const (
	DefaultPool          = "default"
	DefaultBus           = "virtio"
	DefaultNICModel      = "virtio"
	DefaultMigrationMode = "live"
)

// Bounds of a VM.
const (
	MinVCPU               = 1
	MaxVCPU               = 512
	MinMemoryMiB          = 16
	MaxMemoryMiBLimit     = 16 << 20 // 16 TiB, for memory_mib and max_memory_mib
	MaxShutdownTimeoutSec = 3600
	MaxDescriptionLength  = 4096
	MaxTagKeyLength       = 128
)

// Bounds of volumes and networks.
const (
	MaxVolumeMiB = 64 << 20 // 64 TiB, so a typo cannot exhaust a pool
	MinVLAN      = 1
	MaxVLAN      = 4094
	MinVNI       = 1
	MaxVNI       = 1<<24 - 1
	MinMTU       = 576
	MaxMTU       = 9216
)

// MaxCPUSetCPU is the highest host CPU number a CPU set may name (libvirt's
// bitmap limit is larger; no host of ours has this many CPUs).
const MaxCPUSetCPU = 4095

func invalidf(format string, args ...any) *Error { return Errorf(CodeInvalid, format, args...) }

// Seconds converts a count of seconds a client sent into a duration, after
// checking it is within min..max. The check must come first:
// time.Duration(n) * time.Second wraps around for n above 9223372036
// (about 292 years), so an unchecked 9223372037 turns into a negative or
// tiny duration and a bound like "ttl > max" no longer holds.
func Seconds(field string, n, min, max int64) (time.Duration, error) {
	if n < min || n > max {
		return 0, invalidf("%s %d is out of range (%d..%d seconds)", field, n, min, max)
	}
	return time.Duration(n) * time.Second, nil
}

var macPattern = regexp.MustCompile(`^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$`)

// ValidMAC reports whether s is a MAC address like 52:54:00:12:34:56 (either
// case).
func ValidMAC(s string) bool { return macPattern.MatchString(s) }

// ParseCPUSet parses a libvirt host CPU set such as "0", "0-3", "0,2" or
// "0-3,^2" and returns the CPUs it names, in ascending order. A range must
// not run backwards, CPU numbers are at most MaxCPUSetCPU, and the set must
// name at least one CPU.
func ParseCPUSet(s string) ([]int, error) {
	bad := func(why string) ([]int, error) {
		return nil, fmt.Errorf("%q is not a host CPU set like \"0\", \"0-3\" or \"0,2\": %s", s, why)
	}
	if s == "" {
		return bad("it is empty")
	}
	in := map[int]bool{}
	var excl []int
	for _, part := range strings.Split(s, ",") {
		neg := strings.HasPrefix(part, "^")
		part = strings.TrimPrefix(part, "^")
		lo, hi, isRange := strings.Cut(part, "-")
		if neg && isRange {
			return bad("an exclusion (^) names one CPU")
		}
		a, err := cpuNumber(lo)
		if err != nil {
			return bad(err.Error())
		}
		b := a
		if isRange {
			if b, err = cpuNumber(hi); err != nil {
				return bad(err.Error())
			}
			if b < a {
				return bad(fmt.Sprintf("range %d-%d runs backwards", a, b))
			}
		}
		if neg {
			excl = append(excl, a)
			continue
		}
		for c := a; c <= b; c++ {
			in[c] = true
		}
	}
	for _, c := range excl {
		delete(in, c)
	}
	if len(in) == 0 {
		return bad("it names no CPU")
	}
	out := make([]int, 0, len(in))
	for c := range in {
		out = append(out, c)
	}
	slices.Sort(out)
	return out, nil
}

func cpuNumber(s string) (int, error) {
	if s == "" || strings.TrimLeft(s, "0123456789") != "" {
		return 0, fmt.Errorf("%q is not a CPU number", s)
	}
	n, err := strconv.Atoi(s)
	if err != nil || n > MaxCPUSetCPU {
		return 0, fmt.Errorf("CPU %s is above %d", s, MaxCPUSetCPU)
	}
	return n, nil
}

// CheckDescription checks a VM's or snapshot's description; the bound is
// in bytes, as stored.
func CheckDescription(s string) error {
	if len(s) > MaxDescriptionLength {
		return fmt.Errorf("description is longer than %d bytes", MaxDescriptionLength)
	}
	return CheckText("description", s)
}

// CheckText refuses characters that libvirt's XML (where descriptions,
// tags and cloud-init metadata are kept) cannot hold as given: control
// characters other than tab and newline, and U+FFFE/U+FFFF, come back as
// U+FFFD, and a carriage return is dropped by XML's end-of-line handling.
// The value would not round-trip, and every plan would show a change.
func CheckText(field, s string) error {
	for i, r := range s {
		if (r < 0x20 && r != '\t' && r != '\n') || r == 0xFFFE || r == 0xFFFF {
			return fmt.Errorf("%s contains the control character %U at byte %d; only tab and newline are allowed", field, r, i)
		}
	}
	return nil
}

var uuidPattern = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// ValidUUID reports whether s is a UUID like 6b4ce879-405a-4065-8c2a-b7b116ae52c8.
func ValidUUID(s string) bool { return uuidPattern.MatchString(s) }

// ValidTagKey reports why a tag key is not acceptable, or nil.
func ValidTagKey(k string) error {
	if k == "" || len(k) > MaxTagKeyLength || strings.ContainsRune(k, 0) {
		return fmt.Errorf("tag key %q is invalid: use 1-%d bytes, no NUL", k, MaxTagKeyLength)
	}
	return nil
}

// ValidHTTPURL reports why s is not an absolute http:// or https:// URL with
// a host, or nil.
func ValidHTTPURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%q must be an http:// or https:// URL with a host", s)
	}
	return nil
}

// ParseChecksum parses "sha256:<64 hex digits>" into the algorithm and
// digest.
func ParseChecksum(s string) (algo string, sum []byte, err error) {
	algo, hexsum, ok := strings.Cut(s, ":")
	if ok && algo == "sha256" {
		if b, err := hex.DecodeString(hexsum); err == nil && len(b) == sha256.Size {
			return algo, b, nil
		}
	}
	return "", nil, fmt.Errorf("%q must look like sha256:<64 hex digits>", s)
}

// CheckMemory checks memory_mib and max_memory_mib (0: not set) together.
func CheckMemory(memoryMiB, maxMemoryMiB int64) error {
	if maxMemoryMiB != 0 && maxMemoryMiB < memoryMiB {
		return fmt.Errorf("max_memory_mib (%d) must be at least memory_mib (%d)", maxMemoryMiB, memoryMiB)
	}
	return nil
}

// CheckCPUTopology checks that sockets × cores × threads equals vcpu; unset
// parts (0) count as 1, and with none set there is nothing to check.
func CheckCPUTopology(sockets, cores, threads, vcpu int64) error {
	if sockets <= 0 && cores <= 0 && threads <= 0 {
		return nil
	}
	s, c, t := max(sockets, 1), max(cores, 1), max(threads, 1)
	// Bounded by MaxVCPU per part, so the product cannot overflow.
	if s > MaxVCPU || c > MaxVCPU || t > MaxVCPU || s*c*t != vcpu {
		return fmt.Errorf("cpu topology sockets×cores×threads = %d×%d×%d must equal vcpu (%d); unset ones count as 1", s, c, t, vcpu)
	}
	return nil
}

// CheckPinning checks that pinning has one host-CPU set per vCPU.
func CheckPinning(entries int, vcpu int64) error {
	if entries > 0 && int64(entries) != vcpu {
		return fmt.Errorf("cpu.pinning has %d entries; it needs one host-CPU set per vCPU (%d)", entries, vcpu)
	}
	return nil
}

// ValidateVMSpec fills spec's defaults (pool, bus, NIC model, lower-case
// MAC) and reports the first rule it breaks as a CodeInvalid *Error.
func ValidateVMSpec(spec *VMSpec) error {
	if spec.VCPU < MinVCPU || spec.VCPU > MaxVCPU {
		return invalidf("vcpu %d is out of range (%d..%d)", spec.VCPU, MinVCPU, MaxVCPU)
	}
	if spec.MemoryMiB < MinMemoryMiB || spec.MemoryMiB > MaxMemoryMiBLimit {
		return invalidf("memory_mib %d is out of range (%d..%d)", spec.MemoryMiB, MinMemoryMiB, MaxMemoryMiBLimit)
	}
	if spec.MaxMemoryMiB > MaxMemoryMiBLimit {
		return invalidf("max_memory_mib %d is out of range (%d..%d)", spec.MaxMemoryMiB, MinMemoryMiB, MaxMemoryMiBLimit)
	}
	if err := CheckMemory(spec.MemoryMiB, spec.MaxMemoryMiB); err != nil {
		return invalidf("%s", err)
	}
	if c := spec.CPU; c != nil {
		if c.Mode != "" && !slices.Contains(CPUModes, c.Mode) {
			return invalidf("cpu.mode %q is not one of %s", c.Mode, strings.Join(CPUModes, ", "))
		}
		if c.Sockets < 0 || c.Cores < 0 || c.Threads < 0 {
			return invalidf("cpu topology values must be positive")
		}
		if err := CheckCPUTopology(c.Sockets, c.Cores, c.Threads, spec.VCPU); err != nil {
			return invalidf("%s", err)
		}
		if err := CheckPinning(len(c.Pinning), spec.VCPU); err != nil {
			return invalidf("%s", err)
		}
		for i, p := range c.Pinning {
			if _, err := ParseCPUSet(p); err != nil {
				return invalidf("cpu.pinning[%d]: %s", i, err)
			}
		}
	}
	seen := map[string]bool{}
	for i := range spec.Disks {
		d := &spec.Disks[i]
		if d.Pool == "" {
			d.Pool = DefaultPool
		}
		if err := ValidateName("pool", d.Pool); err != nil {
			return invalidf("disks[%d]: %s", i, err)
		}
		if err := ValidateName("volume", d.Volume); err != nil {
			return invalidf("disks[%d]: %s", i, err)
		}
		if d.Bus == "" {
			d.Bus = DefaultBus
		}
		if !slices.Contains(Buses, d.Bus) {
			return invalidf("disks[%d].bus %q is not one of %s", i, d.Bus, strings.Join(Buses, ", "))
		}
		k := d.Pool + "/" + d.Volume
		if seen[k] {
			return invalidf("disks[%d]: volume %s is attached twice", i, k)
		}
		seen[k] = true
	}
	for i := range spec.Interfaces {
		n := &spec.Interfaces[i]
		if err := ValidateName("network", n.Network); err != nil {
			return invalidf("network_interfaces[%d]: %s", i, err)
		}
		if n.Model == "" {
			n.Model = DefaultNICModel
		}
		if !slices.Contains(NICModels, n.Model) {
			return invalidf("network_interfaces[%d].model %q is not one of %s", i, n.Model, strings.Join(NICModels, ", "))
		}
		if n.MAC != "" {
			if !ValidMAC(n.MAC) {
				return invalidf("network_interfaces[%d].mac %q is not a MAC address like 52:54:00:12:34:56", i, n.MAC)
			}
			n.MAC = strings.ToLower(n.MAC)
		}
	}
	if err := validateMemoryLayout(spec); err != nil {
		return err
	}
	if t := spec.ShutdownTimeoutSec; t != nil && (*t < 0 || *t > MaxShutdownTimeoutSec) {
		return invalidf("shutdown_timeout %d is out of range (0..%d seconds)", *t, MaxShutdownTimeoutSec)
	}
	if err := CheckDescription(spec.Description); err != nil {
		return invalidf("%s", err)
	}
	for k, v := range spec.Tags {
		if err := ValidTagKey(k); err != nil {
			return invalidf("%s", err)
		}
		if err := CheckText(fmt.Sprintf("tag %q", k), k+v); err != nil {
			return invalidf("%s", err)
		}
	}
	if err := validateDevices(spec); err != nil {
		return err
	}
	if spec.UUID != "" && !ValidUUID(spec.UUID) {
		return invalidf("uuid %q is not a UUID like 6b4ce879-405a-4065-8c2a-b7b116ae52c8", spec.UUID)
	}
	if err := ValidatePCIDeviceNames(spec.PCIDevices); err != nil {
		return err
	}
	if err := CheckFirmware(spec.Firmware, spec.SecureBoot, spec.TPM); err != nil {
		return invalidf("%s", err)
	}
	if ci := spec.CloudInit; ci != nil {
		if err := CheckText("cloud_init.meta_data", ci.MetaData); err != nil {
			return invalidf("%s", err)
		}
		if err := CheckText("cloud_init.network_config", ci.NetworkConfig); err != nil {
			return invalidf("%s", err)
		}
	}
	return nil
}

// VMMemoryMiB is the memory a VM is charged against its host's capacity:
// its balloon ceiling, which is what it boots with.
func VMMemoryMiB(spec VMSpec) int64 { return max(spec.MemoryMiB, spec.MaxMemoryMiB) }

// Capacity is what a host admits of a resource it has n of, with an
// overcommit ratio (0 counts as 1). The epsilon absorbs float noise such as
// 3 × 1.1 = 3.3000000000000003 or 100 × 0.29 = 28.999999999999996.
func Capacity(n int64, overcommit float64) int64 {
	if overcommit == 0 {
		overcommit = 1
	}
	return int64(math.Floor(float64(n)*overcommit + 1e-9))
}

// ValidateVolumeSpec fills the default format and reports the first rule
// spec breaks as a CodeInvalid *Error.
func ValidateVolumeSpec(spec *VolumeSpec) error {
	switch spec.Format {
	case "":
		spec.Format = FormatQCOW2
	case FormatQCOW2, FormatRaw:
	default:
		return invalidf("format %q is not supported; use %q or %q", spec.Format, FormatQCOW2, FormatRaw)
	}
	if spec.SizeMiB < 0 || spec.SizeMiB > MaxVolumeMiB {
		return invalidf("size_mib %d is out of range (1..%d)", spec.SizeMiB, MaxVolumeMiB)
	}
	if spec.BaseVolume != "" {
		if err := ValidateName("base volume", spec.BaseVolume); err != nil {
			return invalidf("%s", err)
		}
		// The format of a linked clone depends on the pool: a qcow2
		// overlay in a directory pool, a raw RBD clone in an rbd pool.
		// The host, which knows the pool, checks it.
		if spec.SourceURL != "" {
			return invalidf("base_disk_id and source_url are mutually exclusive")
		}
	}
	if spec.SourceURL != "" {
		if err := ValidHTTPURL(spec.SourceURL); err != nil {
			return invalidf("source_url %s", err)
		}
	}
	if spec.SourceChecksum != "" {
		if _, _, err := ParseChecksum(spec.SourceChecksum); err != nil {
			return invalidf("source_checksum %s", err)
		}
		if spec.SourceURL == "" {
			return invalidf("source_checksum needs source_url")
		}
	}
	if spec.SizeMiB == 0 && spec.BaseVolume == "" && spec.SourceURL == "" {
		return invalidf("size_mib is required for an empty volume")
	}
	if err := ValidateVolumeEncryption(spec); err != nil {
		return err
	}
	return ValidateIOTune(spec.IOTune)
}

// ValidateIOTune checks I/O limits (nil: none).
func ValidateIOTune(t *IOTune) error {
	if t != nil && (t.ReadBytesSec < 0 || t.WriteBytesSec < 0 || t.ReadIOPSSec < 0 || t.WriteIOPSSec < 0) {
		return invalidf("iotune limits must not be negative")
	}
	return nil
}

// ValidateNetworkSpec reports the first rule a network breaks as a
// CodeInvalid *Error.
func ValidateNetworkSpec(name string, spec NetworkSpec) error {
	if err := ValidateName("network", name); err != nil {
		return invalidf("%s", err)
	}
	if spec.VLAN != 0 && (spec.VLAN < MinVLAN || spec.VLAN > MaxVLAN) {
		return invalidf("vlan %d is out of range (%d..%d)", spec.VLAN, MinVLAN, MaxVLAN)
	}
	switch spec.Overlay {
	case "":
		if spec.VNI != 0 {
			return invalidf("vni needs overlay (%q or %q)", OverlayVXLAN, OverlayGeneve)
		}
	case OverlayVXLAN, OverlayGeneve:
		if spec.VNI < MinVNI || spec.VNI > MaxVNI {
			return invalidf("vni %d is out of range (%d..%d); it is required with overlay", spec.VNI, MinVNI, MaxVNI)
		}
	default:
		return invalidf("overlay %q is not %q or %q", spec.Overlay, OverlayVXLAN, OverlayGeneve)
	}
	if spec.MTU != 0 && (spec.MTU < MinMTU || spec.MTU > MaxMTU) {
		return invalidf("mtu %d is out of range (%d..%d)", spec.MTU, MinMTU, MaxMTU)
	}
	seen := map[string]bool{}
	for i, p := range spec.Peers {
		if err := ValidateName("peer host", p.Host); err != nil {
			return invalidf("peers[%d]: %s", i, err)
		}
		if seen[p.Host] {
			return invalidf("peers[%d]: host %s is listed twice", i, p.Host)
		}
		seen[p.Host] = true
		if net.ParseIP(p.TunnelIP) == nil {
			return invalidf("peers[%d]: tunnel_ip %q of host %s is not an IP address", i, p.TunnelIP, p.Host)
		}
	}
	return validateNetworkAddressing(spec)
}

// validateNetworkAddressing checks subnet, DHCP and uplink.
func validateNetworkAddressing(spec NetworkSpec) error {
	if err := ValidateSubnet(spec.Subnet); err != nil {
		return invalidf("%s", err)
	}
	switch {
	case spec.DHCP && spec.Subnet == nil:
		return invalidf("dhcp needs a subnet")
	case spec.DHCP && spec.DHCPServerIP == "":
		return invalidf("dhcp needs dhcp_server_ip, this host's server identifier (see DHCPServerIP: the top addresses of the subnet, one per host)")
	case !spec.DHCP && spec.DHCPServerIP != "":
		return invalidf("dhcp_server_ip is only meaningful with dhcp")
	case spec.DHCP:
		if err := ValidateStaticIPv4(*spec.Subnet, spec.DHCPServerIP); err != nil {
			return invalidf("dhcp_server_ip: %s", strings.TrimPrefix(err.Error(), "ipv4_address "))
		}
	}
	if spec.Uplink != "" {
		if err := ValidateUplinkName(spec.Uplink); err != nil {
			return invalidf("uplink: %s", err)
		}
	}
	return nil
}

// ValidateMigrateRequest fills the default mode and reports the first rule
// req breaks as a CodeInvalid *Error.
func ValidateMigrateRequest(req *MigrateRequest) error {
	if req.TargetURI == "" {
		return invalidf("target_uri is required")
	}
	if req.Mode == "" {
		req.Mode = DefaultMigrationMode
	}
	if !slices.Contains(MigrationModes, req.Mode) {
		return invalidf("mode %q is not %s", req.Mode, strings.Join(MigrationModes, " or "))
	}
	return nil
}
