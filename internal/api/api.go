// Package api holds the wire types shared by the provider and kvm-hostd.
//
// It is the only package both sides import: JSON shapes, error codes and the
// name rules that each side validates before doing any work.
package api

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"
)

// Version is the API version prefix served by kvm-hostd.
const Version = "v1"

// Header names used between the client and kvm-hostd.
const (
	HeaderRequestID      = "X-Request-Id"
	HeaderIdempotencyKey = "Idempotency-Key"
	HeaderOwner          = "X-Kvm-Owner"
)

// Error codes carried in Error.Code. Each maps to exactly one HTTP status on
// the server side (see backend/server).
const (
	CodeInvalid      = "invalid"      // 400
	CodeUnauthorized = "unauthorized" // 401
	CodeForbidden    = "forbidden"    // 403
	CodeNotFound     = "not_found"    // 404
	CodeConflict     = "conflict"     // 409: exists with another spec, in use
	CodeFull         = "full"         // 409: admission refused, host is full
	CodeMaintenance  = "maintenance"  // 409: the host is in maintenance and admits no new VMs
	CodeUnsupported  = "unsupported"  // 501: the driver cannot do this
	CodeUnavailable  = "unavailable"  // 503: libvirt or OVSDB unreachable
	CodeInternal     = "internal"     // 500
	CodeTooMany      = "rate_limited" // 429
	CodeMethod       = "method_not_allowed"
)

// SnapshotNeedsMemoryReason says, for the host's error and the provider's
// plan-time check alike, why a running VM's snapshot must include memory.
const SnapshotNeedsMemoryReason = "a snapshot of a running VM must include its memory (include_memory = true). " +
	"libvirt takes internal qcow2 snapshots, and cannot take one of a running VM's disks alone; " +
	"an external disk-only snapshot would stack a new overlay on every disk, which linked clones, disk moves " +
	"and migration do not allow. Set include_memory = true for a full checkpoint, or stop the VM (running = false) " +
	"for a snapshot of its disks"

// CodeOperationLost (404) answers a poll of an operation started before
// kvm-hostd restarted: its work was cancelled and discarded.
const CodeOperationLost = "operation_lost"

// Error is the JSON body of every non-2xx response.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	// Status is filled in by the client from the HTTP response; not sent.
	Status int `json:"-"`
}

func (e *Error) Error() string {
	if e == nil {
		return ""
	}
	return e.Code + ": " + e.Message
}

// Health is the body of GET /healthz.
type Health struct {
	Status  string `json:"status"`
	Name    string `json:"name"`
	Version string `json:"version"`
}

// Host is the inventory of one kvm-hostd host (GET /v1/host).
type Host struct {
	Name               string            `json:"name"`
	CPUs               int64             `json:"cpus"`
	MemoryMiB          int64             `json:"memory_mib"`
	FreeMemoryMiB      int64             `json:"free_memory_mib"`
	AllocatedVCPU      int64             `json:"allocated_vcpu"`
	AllocatedMemoryMiB int64             `json:"allocated_memory_mib"`
	CPUOvercommit      float64           `json:"cpu_overcommit"`
	MemoryOvercommit   float64           `json:"memory_overcommit"`
	Labels             map[string]string `json:"labels"`
	TunnelIP           string            `json:"tunnel_ip"`
	VMCount            int64             `json:"vm_count"`
	Version            string            `json:"version"`
	Healthy            bool              `json:"healthy"`
	// DomainType is what kvm-hostd's startup probe found the host can
	// actually run guests with: "kvm" or "qemu" (TCG); "test" on libvirt's
	// test driver, which runs none.
	DomainType string `json:"domain_type"`
	// CPUMode is the CPU mode VMs get when they name none, as the probe
	// found working: "host-passthrough", or "qemu64" (no <cpu> element,
	// QEMU's default model); empty on the test driver.
	CPUMode string `json:"cpu_mode"`
	// CPUDisabled lists the CPU features the probe found CPUMode needs
	// disabled to start (arch-capabilities on some nested-virtualization
	// hosts).
	CPUDisabled []string `json:"cpu_disabled_features,omitempty"`
	// Probe says why the probe chose DomainType and CPUMode, with the
	// times it measured.
	Probe string `json:"probe,omitempty"`
	// HypervisorType is the same as DomainType, for older clients.
	HypervisorType string `json:"hypervisor_type,omitempty"`
	LibvirtURI     string `json:"libvirt_uri,omitempty"`
	// MigrationURI is the libvirt URI other hosts use to reach this host's
	// libvirtd as a migration target (kvm-hostd --migration-uri, e.g.
	// qemu+tcp://10.0.0.12/system). Empty: the host cannot receive VMs.
	MigrationURI string `json:"migration_uri,omitempty"`
	// Message explains Healthy=false.
	Message string `json:"message,omitempty"`
	// Maintenance: the operator is draining the host (kvm-hostd
	// --maintenance or PUT /v1/host/maintenance). It admits no new VMs,
	// arriving migrations included, and placement moves keys off it.
	Maintenance bool `json:"maintenance"`
	// MaintenanceReason is the operator's note for Maintenance, if any.
	MaintenanceReason string `json:"maintenance_reason,omitempty"`
	// Hugepages are the host's huge pages of the default size, for VMs
	// with hugepages = true (admission checks Free).
	Hugepages *HostHugepages `json:"hugepages,omitempty"`
	// PCIDevices are the host PCI devices the operator named for
	// passthrough (kvm-hostd --pci-device NAME=ADDRESS), as libvirt's node
	// devices describe them.
	PCIDevices []HostPCIDevice `json:"pci_devices,omitempty"`
	// Keys names the disk-encryption master keys the host holds
	// (kvm-hostd --key-dir: NAME.key). Names only: a key value never
	// leaves the host.
	Keys []string `json:"keys,omitempty"`
	// Pools are the storage pools the host serves: "default" (kvm-hostd
	// --pool-dir) and each --pool, as libvirt reports them.
	Pools []HostPool `json:"pools,omitempty"`
}

// HostPool is one storage pool a host serves.
type HostPool struct {
	Name string `json:"name"`
	// Type is libvirt's pool type: dir, rbd, netfs, ...
	Type string `json:"type"`
	// Shared: every host that serves a pool of this name sees the same
	// volumes (rbd and netfs by nature; a dir pool marked with
	// --shared-pool), so a VM migrates without copying its disks there.
	Shared      bool  `json:"shared"`
	CapacityMiB int64 `json:"capacity_mib"`
	FreeMiB     int64 `json:"free_mib"`
}

// SharedPoolTypes are the libvirt pool types whose volumes every host
// serving the pool sees by nature.
var SharedPoolTypes = []string{"rbd", "netfs", "gluster", "sheepdog", "iscsi-direct"}

// Pool returns the pool of that name, or nil.
func (h *Host) Pool(name string) *HostPool {
	for i := range h.Pools {
		if h.Pools[i].Name == name {
			return &h.Pools[i]
		}
	}
	return nil
}

// HostHugepages counts the host's huge pages of one size.
type HostHugepages struct {
	SizeKiB int64 `json:"size_kib"`
	Total   int64 `json:"total"`
	Free    int64 `json:"free"`
}

// HostPCIDevice is a PCI device the operator named for passthrough.
type HostPCIDevice struct {
	// Name is the operator's name for it (e.g. gpu0); VMs ask for it.
	Name string `json:"name"`
	// Address is its PCI address, domain:bus:slot.function
	// (0000:01:00.0).
	Address string `json:"address"`
	// Vendor and Product are the names libvirt knows for the device's
	// IDs; VendorID and ProductID the IDs (0x10de).
	Vendor    string `json:"vendor,omitempty"`
	VendorID  string `json:"vendor_id,omitempty"`
	Product   string `json:"product,omitempty"`
	ProductID string `json:"product_id,omitempty"`
	// Driver is the host driver bound to it now (vfio-pci once assigned).
	Driver string `json:"driver,omitempty"`
	// IOMMUGroup is the device's IOMMU group, -1 when it has none (no
	// IOMMU enabled: the device cannot be passed through).
	IOMMUGroup int64 `json:"iommu_group"`
	// UsedBy names the VM defined with it, empty when free.
	UsedBy string `json:"used_by,omitempty"`
	// Present is false when libvirt does not know the address (the
	// operator named a device this host does not have).
	Present bool `json:"present"`
}

// IOTune limits for a disk; zero means unlimited.
type IOTune struct {
	ReadBytesSec  int64 `json:"read_bytes_sec,omitempty"`
	WriteBytesSec int64 `json:"write_bytes_sec,omitempty"`
	ReadIOPSSec   int64 `json:"read_iops_sec,omitempty"`
	WriteIOPSSec  int64 `json:"write_iops_sec,omitempty"`
}

// IsZero reports whether no limit is set.
func (t *IOTune) IsZero() bool {
	return t == nil || (t.ReadBytesSec == 0 && t.WriteBytesSec == 0 && t.ReadIOPSSec == 0 && t.WriteIOPSSec == 0)
}

// Volume formats.
const (
	FormatQCOW2 = "qcow2"
	FormatRaw   = "raw"
)

// VolumeSpec is the body of PUT /v1/pools/{pool}/volumes/{name}.
type VolumeSpec struct {
	SizeMiB int64  `json:"size_mib,omitempty"`
	Format  string `json:"format,omitempty"`
	// BaseVolume names a volume in the same pool to use as qcow2 backing
	// store (linked clone).
	BaseVolume string `json:"base_volume,omitempty"`
	// SourceURL is fetched by the host itself (http/https).
	SourceURL      string  `json:"source_url,omitempty"`
	SourceChecksum string  `json:"source_checksum,omitempty"` // "sha256:<hex>"
	IOTune         *IOTune `json:"iotune,omitempty"`
	// Encryption makes a LUKS-encrypted qcow2 whose key the host derives
	// from the named master key.
	Encryption *VolumeEncryption `json:"encryption,omitempty"`
	// Recreate, when the volume already exists with the same format and
	// base, deletes and re-creates it empty. Only a volume that no VM
	// attaches and no volume is backed by can be recreated. Used to give a
	// (retried) live migration the fresh overlay libvirt requires on the
	// target of an incremental storage copy.
	Recreate bool `json:"recreate,omitempty"`
}

// VolumeCopyRequest is the body of POST /v1/pools/{pool}/volumes/{name}/copy:
// the receiving host creates the volume from Spec (as PUT does; for a linked
// clone its base must already be in the pool) and then fills it, as an
// operation, with the bytes it GETs from ContentURL: another host's
// /v1/pools/{pool}/volumes/{name}/content. If the copy fails, the
// half-written volume is deleted.
type VolumeCopyRequest struct {
	ContentURL string `json:"content_url"`
	// Token is sent to ContentURL as a bearer token. It is used for this
	// copy only: never stored, logged or returned.
	Token string `json:"token,omitempty"`
	// Spec describes the volume as it is on the source host. A SourceURL in
	// it is recorded with the copy (where the image originally came from),
	// not fetched; Recreate is not allowed.
	Spec VolumeSpec `json:"spec"`
}

// VolumeUpdate is the body of PATCH /v1/pools/{pool}/volumes/{name}.
// Nil fields are left alone.
type VolumeUpdate struct {
	SizeMiB *int64  `json:"size_mib,omitempty"`
	IOTune  *IOTune `json:"iotune,omitempty"`
}

// Volume is a storage volume as read back from libvirt.
type Volume struct {
	Name           string  `json:"name"`
	Pool           string  `json:"pool"`
	Path           string  `json:"path"`
	Format         string  `json:"format"`
	SizeMiB        int64   `json:"size_mib"`
	AllocatedMiB   int64   `json:"allocated_mib"`
	BaseVolume     string  `json:"base_volume,omitempty"`
	SourceURL      string  `json:"source_url,omitempty"`
	SourceChecksum string  `json:"source_checksum,omitempty"`
	IOTune         *IOTune `json:"iotune,omitempty"`
	// Encryption is set on a LUKS-encrypted volume.
	Encryption *VolumeEncryption `json:"encryption,omitempty"`
	// UsedBy lists domains that attach this volume.
	UsedBy []string `json:"used_by,omitempty"`
	// Children lists volumes that use this one as backing store.
	Children []string `json:"children,omitempty"`
	// Operation is set while a download is running; poll it.
	Operation *Operation `json:"operation,omitempty"`
}

// Operation states.
const (
	OpRunning   = "running"
	OpSucceeded = "succeeded"
	OpFailed    = "failed"
)

// Operation is long-running work (image download, migration) that the
// client polls at GET /v1/operations/{id}.
type Operation struct {
	ID        string    `json:"id"`
	Kind      string    `json:"kind"`
	Target    string    `json:"target"`
	State     string    `json:"state"`
	Progress  float64   `json:"progress"` // 0..1
	Message   string    `json:"message,omitempty"`
	Error     *Error    `json:"error,omitempty"`
	StartedAt time.Time `json:"started_at"`
	EndedAt   time.Time `json:"ended_at,omitzero"`
}

// CPU is the vCPU model and topology of a VM.
type CPU struct {
	Mode    string   `json:"mode,omitempty"` // host-passthrough | host-model | custom (maximum under TCG)
	Sockets int64    `json:"sockets,omitempty"`
	Cores   int64    `json:"cores,omitempty"`
	Threads int64    `json:"threads,omitempty"`
	Pinning []string `json:"pinning,omitempty"` // host CPU set per vCPU, e.g. "0-1"
	// EmulatorPinning is the host CPU set of QEMU's emulator threads
	// (e.g. "0"); empty means unpinned. Applied live.
	EmulatorPinning string `json:"emulator_pinning,omitempty"`
}

// VMDisk attaches a volume to a VM.
type VMDisk struct {
	Pool   string `json:"pool"`
	Volume string `json:"volume"`
	Bus    string `json:"bus,omitempty"` // virtio (default) | sata | scsi | ide
	// Target is the guest device name (vda, sdb, ...), read back.
	Target string `json:"target,omitempty"`
	// Cache is the host cache mode: none (default) | writeback |
	// directsync | unsafe.
	Cache string `json:"cache,omitempty"`
	// IO is QEMU's I/O mode: native | threads | io_uring; empty means
	// QEMU's default.
	IO string `json:"io,omitempty"`
	// Discard passes the guest's TRIM/UNMAP to the volume: unmap |
	// ignore; empty means DefaultDiskDiscard (unmap, what every qcow2
	// disk got before the attribute existed). A disk defined without a
	// mode reads back as libvirt's default, ignore.
	Discard string `json:"discard,omitempty"`
}

// VMInterface attaches a VM to a kvm_network (an OVS bridge).
type VMInterface struct {
	Network string `json:"network"`
	MAC     string `json:"mac,omitempty"`
	Model   string `json:"model,omitempty"` // virtio (default)
	// Bridge and Port are read back: the OVS bridge and the tap device.
	Bridge string `json:"bridge,omitempty"`
	Port   string `json:"port,omitempty"`
	VLAN   int64  `json:"vlan,omitempty"`
	// Queues is the number of virtio-net queue pairs (multiqueue); 0 or 1
	// means one.
	Queues int64 `json:"queues,omitempty"`
	// IPv4Address is a static address (no prefix length) inside the
	// network's subnet. The host delivers it through a generated cloud-init
	// network-config (unless CloudInit.NetworkConfig is given) and, on a
	// network with DHCP, as a reservation for this NIC's MAC.
	IPv4Address string `json:"ipv4_address,omitempty"`
	// Addresses are the IPs the guest reports on this NIC (guest agent,
	// else the host's DHCP leases); read back only, empty when none. The
	// host filters them (the guest is untrusted): no zones, loopback,
	// link-local, multicast, unspecified or broadcast addresses, nor
	// addresses reserved on the network for its gateway, DHCP servers or
	// other VMs; at most 64, rendered by the host.
	Addresses []string `json:"addresses,omitempty"`
	// Subnet is the network's subnet, resolved by kvm-hostd for a NIC with
	// an IPv4Address (to render its network-config); never on the wire.
	Subnet *Subnet `json:"-"`
	// MTU is the network's MTU, resolved by kvm-hostd: the NIC announces
	// it to the guest (virtio), so guests on an overlay fit its tunnels.
	MTU int64 `json:"-"`
	// NoChecksumOffload is set by kvm-hostd when the network's bridge uses
	// Open vSwitch's userspace datapath, which forwards frames from the
	// tap as they are: a guest must then checksum its own packets.
	NoChecksumOffload bool `json:"-"`
}

// CloudInit is turned into a NoCloud seed ISO by the host.
//
// user_data often holds secrets (keys, passwords): the host writes it only
// into the seed ISO (mode 0600) and never stores or returns it. Reads carry
// UserDataSHA256 instead, so a client can tell whether it changed.
type CloudInit struct {
	UserData      string `json:"user_data,omitempty"`
	MetaData      string `json:"meta_data,omitempty"`
	NetworkConfig string `json:"network_config,omitempty"`
	// UserDataSHA256 is the hex SHA-256 of user_data, in responses only.
	UserDataSHA256 string `json:"user_data_sha256,omitempty"`
}

// UserDataHash is the value of CloudInit.UserDataSHA256 for user data.
func UserDataHash(userData string) string {
	if userData == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(userData))
	return hex.EncodeToString(sum[:])
}

// VMSpec is the body of PUT /v1/vms/{name} and PATCH /v1/vms/{name}.
type VMSpec struct {
	VCPU         int64             `json:"vcpu"`
	MemoryMiB    int64             `json:"memory_mib"`
	MaxMemoryMiB int64             `json:"max_memory_mib,omitempty"`
	CPU          *CPU              `json:"cpu,omitempty"`
	Disks        []VMDisk          `json:"disks,omitempty"`
	Interfaces   []VMInterface     `json:"interfaces,omitempty"`
	CloudInit    *CloudInit        `json:"cloud_init,omitempty"`
	Running      bool              `json:"running"`
	Autostart    bool              `json:"autostart"`
	Description  string            `json:"description,omitempty"`
	Tags         map[string]string `json:"tags,omitempty"`
	// ShutdownTimeoutSec bounds the graceful ACPI shutdown before power-off
	// when a restart is needed. Nil means the default (60).
	ShutdownTimeoutSec *int64 `json:"shutdown_timeout_sec,omitempty"`
	// UUID may be given to keep a domain's identity (offline move).
	UUID string `json:"uuid,omitempty"`
	// GuestAgent adds the qemu-guest-agent virtio-serial channel. Nil
	// means the default, true; reads always set it.
	GuestAgent *bool `json:"guest_agent,omitempty"`
	// Firmware is "bios" (default) or "efi" (libvirt's firmware
	// auto-selection; a per-VM NVRAM store).
	Firmware string `json:"firmware,omitempty"`
	// SecureBoot boots with Secure Boot and Microsoft's keys enrolled
	// (efi only; the machine is q35 with SMM).
	SecureBoot bool `json:"secure_boot,omitempty"`
	// TPM adds an emulated TPM (swtpm) whose state lives with the VM.
	TPM *TPM `json:"tpm,omitempty"`
	// Graphics adds a VNC or SPICE console.
	Graphics *Graphics `json:"graphics,omitempty"`
	// RNG adds a virtio-rng device fed by the host's /dev/urandom. Nil
	// means the default, true; reads always set it.
	RNG *bool `json:"rng,omitempty"`
	// Hugepages backs the guest's memory with the host's huge pages.
	Hugepages bool `json:"hugepages,omitempty"`
	// NUMA is the guest's NUMA topology; empty means one node.
	NUMA []NUMACell `json:"numa,omitempty"`
	// PCIDevices names host PCI devices (kvm-hostd --pci-device) passed
	// through to the guest.
	PCIDevices []string `json:"pci_devices,omitempty"`
	// PCIAddresses are the host addresses of PCIDevices, in the same
	// order: resolved by the host from its --pci-device names before the
	// domain is defined, and read back from it. Never on the wire.
	PCIAddresses []string `json:"-"`
}

// RNGEnabled reports the effective rng setting.
func (s VMSpec) RNGEnabled() bool { return s.RNG == nil || *s.RNG }

// Firmware kinds.
const (
	FirmwareBIOS = "bios"
	FirmwareEFI  = "efi"
)

// TPM is an emulated TPM.
type TPM struct {
	Version string `json:"version"` // "2.0"
}

// Graphics is a VM's graphical console.
type Graphics struct {
	Type   string `json:"type"`             // vnc | spice
	Listen string `json:"listen,omitempty"` // address; default 127.0.0.1
	// Password is write-only: accepted on PUT/PATCH, never read back.
	Password string `json:"password,omitempty"`
	// Port is read back: the TCP port the console listens on (-1 while
	// the VM is not running).
	Port int64 `json:"port,omitempty"`
}

// NUMACell is one guest NUMA node.
type NUMACell struct {
	// CPUs is the guest vCPU set of this node, e.g. "0-1".
	CPUs      string `json:"cpus"`
	MemoryMiB int64  `json:"memory_mib"`
	// HostNodes binds the node's memory to these host NUMA nodes (e.g.
	// "0"); empty means not bound.
	HostNodes string `json:"host_nodes,omitempty"`
}

// GuestAgentEnabled reports the effective guest_agent setting.
func (s VMSpec) GuestAgentEnabled() bool { return s.GuestAgent == nil || *s.GuestAgent }

// VM states as reported in VM.State.
const (
	StateRunning = "running"
	StateShutoff = "shutoff"
	StatePaused  = "paused"
	StateCrashed = "crashed"
	StateOther   = "other"
)

// VM is a domain as read back from libvirt.
type VM struct {
	Name  string `json:"name"`
	UUID  string `json:"uuid"`
	State string `json:"state"`
	VMSpec
	// Owner and RequestID are kept in the domain's <metadata>.
	Owner     string `json:"owner,omitempty"`
	RequestID string `json:"request_id,omitempty"`
	// Restarted is set on a PATCH response when the change needed a restart.
	Restarted bool `json:"restarted,omitempty"`
	// IPv4Address is the first IPv4 address of the first NIC's Addresses
	// inside its network's subnet, else the first IPv4 one; empty when the
	// guest reports none.
	IPv4Address string `json:"ipv4_address,omitempty"`
	// AddressSource says where the addresses came from: "agent", "lease"
	// or "" (none known).
	AddressSource string `json:"address_source,omitempty"`
}

// Console is the body of GET /v1/vms/{name}/console as JSON; the endpoint
// answers text/plain (the log tail itself) unless the client accepts only
// application/json. The text is what the guest wrote: untrusted, raw
// unless ?escape=true asked for it escaped for display.
type Console struct {
	VM string `json:"vm"`
	// Text is the tail of the serial log, at most the requested bytes of
	// it (escaped, it may be longer).
	Text string `json:"text"`
	// Truncated is true when older output was cut off.
	Truncated bool `json:"truncated"`
	// Escaped is true when Text went through EscapeTerminal: no control
	// characters but newline and tab, valid UTF-8.
	Escaped bool `json:"escaped"`
}

// SnapshotSpec is the body of PUT /v1/vms/{vm}/snapshots/{name}.
type SnapshotSpec struct {
	Description   string `json:"description,omitempty"`
	IncludeMemory bool   `json:"include_memory,omitempty"`
}

// Snapshot is a domain snapshot as read back from libvirt.
type Snapshot struct {
	Name          string    `json:"name"`
	VM            string    `json:"vm"`
	Description   string    `json:"description,omitempty"`
	IncludeMemory bool      `json:"include_memory"`
	CreatedAt     time.Time `json:"created_at"`
	Parent        string    `json:"parent,omitempty"`
	Current       bool      `json:"current,omitempty"`
	State         string    `json:"state,omitempty"` // domain state captured
}

// Overlay kinds for networks.
const (
	OverlayVXLAN  = "vxlan"
	OverlayGeneve = "geneve"
)

// NetworkPeer is another host of the same network, reached by tunnel.
type NetworkPeer struct {
	Host     string `json:"host"`
	TunnelIP string `json:"tunnel_ip"`
}

// Subnet is the IPv4 subnet of a network. kvm-hostd does not route it: the
// gateway is whatever router the network reaches (through an uplink).
type Subnet struct {
	CIDR       string   `json:"cidr"`
	Gateway    string   `json:"gateway,omitempty"`
	DNSServers []string `json:"dns_servers,omitempty"`
}

// NetworkSpec is the body of PUT /v1/networks/{name}.
type NetworkSpec struct {
	VLAN    int64         `json:"vlan,omitempty"`
	Overlay string        `json:"overlay,omitempty"`
	VNI     int64         `json:"vni,omitempty"`
	MTU     int64         `json:"mtu,omitempty"`
	Peers   []NetworkPeer `json:"peers,omitempty"`
	Subnet  *Subnet       `json:"subnet,omitempty"`
	// DHCP makes this host serve DHCP on the bridge, answering only its own
	// VMs' NICs (static ipv4_address reservations and, for NICs without one,
	// an address derived from the MAC). Needs Subnet.
	DHCP bool `json:"dhcp,omitempty"`
	// DHCPServerIP is this host's DHCP server identifier in the subnet,
	// chosen by the client with DHCPServerIP(); never configured on a host
	// interface (the server answers ARP for it itself).
	DHCPServerIP string `json:"dhcp_server_ip,omitempty"`
	// Uplink is this host's interface the bridge is connected to (the
	// provider sends each host its own entry of kvm_network.uplinks).
	Uplink string `json:"uplink,omitempty"`
	// PortSecurity confines every VM port of the network to its own MAC
	// and, where the NIC's address is known (static ipv4_address or DHCP
	// reservation), to that IPv4 address; DHCP server replies from VM
	// ports are dropped. Nil means the default, true.
	PortSecurity *bool `json:"port_security,omitempty"`
}

// PortSecurityEnabled reports the effective port_security setting.
func (s NetworkSpec) PortSecurityEnabled() bool { return s.PortSecurity == nil || *s.PortSecurity }

// NetworkTunnel is one tunnel port of a network bridge, read back.
type NetworkTunnel struct {
	Port     string `json:"port"`
	Peer     string `json:"peer"`
	RemoteIP string `json:"remote_ip"`
}

// Network is a network as realized on one host, read back from OVSDB.
type Network struct {
	Name         string          `json:"name"`
	Bridge       string          `json:"bridge"`
	VLAN         int64           `json:"vlan,omitempty"`
	Overlay      string          `json:"overlay,omitempty"`
	VNI          int64           `json:"vni,omitempty"`
	MTU          int64           `json:"mtu,omitempty"`
	DatapathType string          `json:"datapath_type,omitempty"`
	Tunnels      []NetworkTunnel `json:"tunnels,omitempty"`
	// Ports lists VM ports (interface names) on the bridge.
	Ports        []string `json:"ports,omitempty"`
	Subnet       *Subnet  `json:"subnet,omitempty"`
	DHCP         bool     `json:"dhcp,omitempty"`
	DHCPServerIP string   `json:"dhcp_server_ip,omitempty"`
	Uplink       string   `json:"uplink,omitempty"`
	// PortSecurity is the network's port_security setting as recorded on
	// the bridge (always present in responses).
	PortSecurity bool `json:"port_security"`
	// Leases are the DHCP bindings this host serves on the network.
	Leases []Lease `json:"leases,omitempty"`
}

// Lease is one DHCP binding a host serves: a VM NIC's MAC and its address.
type Lease struct {
	MAC string `json:"mac"`
	IP  string `json:"ip"`
	VM  string `json:"vm,omitempty"`
}

// MigrateRequest is the body of POST /v1/vms/{name}/migrate.
type MigrateRequest struct {
	// TargetHost is the name of the destination host.
	TargetHost string `json:"target_host"`
	// TargetURI is the libvirt URI the source uses to reach the target
	// (e.g. qemu+tcp://10.0.0.12/system).
	TargetURI string `json:"target_uri"`
	Mode      string `json:"mode"` // live | offline
}

// List wrappers keep top-level JSON as objects so fields can be added.
type (
	VolumeList struct {
		Volumes []Volume `json:"volumes"`
	}
	VMList struct {
		VMs []VM `json:"vms"`
	}
	SnapshotList struct {
		Snapshots []Snapshot `json:"snapshots"`
	}
	NetworkList struct {
		Networks []Network `json:"networks"`
	}
)

// Errorf builds an *Error with the given code.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// IsCode reports whether err is (or wraps) an *Error with the given code.
func IsCode(err error, code string) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == code
}

// IsNotFound reports whether err is a not-found error.
func IsNotFound(err error) bool { return IsCode(err, CodeNotFound) }
