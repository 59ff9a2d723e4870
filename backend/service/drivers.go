package service

import (
	"context"
	"io"
	"time"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// Drivers report failures as *api.Error values (api.Errorf) where the code
// matters to the caller: api.CodeNotFound for a missing pool, volume, domain,
// snapshot or network; api.CodeConflict for "in use"/"exists";
// api.CodeUnsupported for what the driver cannot do (e.g. libvirt's test
// driver has no volume resize); api.CodeUnavailable when libvirt or OVSDB
// cannot be reached. Anything else is treated as internal.

// Resources is the capacity of a host and what its domains allocate.
type Resources struct {
	CPUs               int64
	MemoryMiB          int64
	FreeMemoryMiB      int64
	AllocatedVCPU      int64 // sum of vCPUs of all defined domains
	AllocatedMemoryMiB int64 // sum of max memory of all defined domains
	VMCount            int64
	DomainType         string   // "kvm", "qemu" or "test": what the startup probe chose
	CPUMode            string   // default CPU mode the probe found working
	CPUDisabled        []string // CPU features that mode needs disabled
	Probe              string   // why, for people
	// Domains is what each domain counts in AllocatedVCPU and
	// AllocatedMemoryMiB, by name.
	Domains map[string]Allocation
	// Hugepages are the host's huge pages of the default size; Free
	// excludes pages running QEMUs have reserved. Nil when unknown.
	Hugepages *api.HostHugepages
	// HugepageVMs are the defined domains backed by huge pages, by name.
	HugepageVMs map[string]HugepageUse
	// NUMANodes are the ids of the host's NUMA nodes.
	NUMANodes []int
}

// HugepageUse is what a hugepage-backed domain needs of the host's huge
// pages. A running one holds them already (they are not in Free); one that
// is defined but stopped takes them when it starts.
type HugepageUse struct {
	Pages   int64
	Running bool
}

// Allocation is what one domain (or a reservation for one) takes.
type Allocation struct {
	VCPU      int64
	MemoryMiB int64
	// HugepageMiB is the memory a hugepage-backed VM takes from the
	// host's huge pages (admission only; 0 for any other VM).
	HugepageMiB int64
}

// ImageInfo is what an image file's header says it is.
type ImageInfo struct {
	Format        string
	BackingFile   string
	BackingFormat string
	DataFile      string
}

// VMMeta is what kvm-hostd records in a domain's <metadata> besides the spec.
type VMMeta struct {
	Owner     string
	RequestID string
}

// Hypervisor is the host's libvirt, behind the smallest surface the service
// needs. Implementations must be safe for concurrent use; the service
// serialises per pool and per domain, so a driver need not.
type Hypervisor interface {
	// Ping checks the libvirt connection, re-opening it if it dropped.
	Ping(ctx context.Context) error
	Resources(ctx context.Context) (Resources, error)
	// ManagesSwitchPorts reports whether libvirt itself adds VM ports to
	// OVS bridges (real QEMU does; the test driver does not).
	ManagesSwitchPorts() bool

	// EnsurePool makes sure a directory pool named pool exists at dir and
	// is active (defined persistent, autostart).
	EnsurePool(ctx context.Context, pool, dir string) error
	// PoolInfo reads a pool's type, capacity and free space (Shared is
	// the service's to fill in); CodeNotFound when libvirt has no pool
	// of that name, an error when it is not running.
	PoolInfo(ctx context.Context, pool string) (api.HostPool, error)
	// SetSharedPools names the pools every host sees alike: migration
	// neither copies nor deletes the disks on them.
	SetSharedPools(shared map[string]bool)
	// RegisterVolumeSecret registers the libvirt secret of an existing
	// encrypted volume (none for a plain one) and returns its key name.
	RegisterVolumeSecret(ctx context.Context, pool, vol string) (string, error)

	ListVolumes(ctx context.Context, pool string) ([]api.Volume, error)
	// GetVolume reads one volume cheaply: no UsedBy or Children.
	GetVolume(ctx context.Context, pool, name string) (*api.Volume, error)
	// VolumeUsage returns the domains attaching a volume and the volumes
	// backed by it (a scan of the pool and every domain).
	VolumeUsage(ctx context.Context, pool, name string) (usedBy, children []string, err error)
	// DiskUsers maps every file a domain's disks use to those domains (a
	// scan of the domains only).
	DiskUsers(ctx context.Context) (map[string][]string, error)
	// CreateVolume creates an empty volume, or a qcow2 overlay when
	// spec.BaseVolume is set. SourceURL/SourceChecksum/IOTune are recorded
	// with the volume so that GetVolume returns them.
	CreateVolume(ctx context.Context, pool, name string, spec api.VolumeSpec) (*api.Volume, error)
	// WriteVolume replaces the contents of an existing volume with the
	// image read from r (length bytes, or -1 if unknown).
	WriteVolume(ctx context.Context, pool, name string, r io.Reader, length int64) error
	// ReadVolume streams the contents of a volume (its file as stored: a
	// qcow2 volume's qcow2 image, a raw volume's bytes) to w and returns
	// how many bytes it wrote. It never buffers the whole volume.
	ReadVolume(ctx context.Context, pool, name string, w io.Writer) (int64, error)
	// ResizeVolume grows a volume: online through the domain (blockresize)
	// when a running domain attaches it, through the volume otherwise.
	ResizeVolume(ctx context.Context, pool, name string, sizeMiB int64) error
	// SetVolumeIOTune records the limits and applies them to every domain
	// attaching the volume (live when running, and to the persistent config).
	SetVolumeIOTune(ctx context.Context, pool, name string, t *api.IOTune) error
	// AdoptVolume records spec's base, source_url and I/O limits for a
	// volume of a shared pool that this host did not create and has no
	// record of (an rbd image another host created, whose kvm_disk moved
	// here); adopted is false when there was nothing to adopt.
	AdoptVolume(ctx context.Context, pool, name string, spec api.VolumeSpec) (adopted bool, err error)
	// DeleteVolume deletes the volume; the service has already checked it
	// is unused.
	DeleteVolume(ctx context.Context, pool, name string) error
	// RecoverMigrations settles, at startup, the migrations a previous
	// run left behind (aborts running ones, finishes the cleanup of
	// finished ones).
	RecoverMigrations(ctx context.Context) error
	// RenameVolume gives a volume another name in its pool, with its
	// contents and metadata; it fails with CodeConflict if to exists.
	RenameVolume(ctx context.Context, pool, from, to string) error
	// InspectVolume reads what a volume's image really is, from its own
	// header: format, backing file and external data file.
	InspectVolume(ctx context.Context, pool, name string) (ImageInfo, error)

	// PCIDevices lists the host's PCI devices as libvirt's node devices
	// describe them (Name, UsedBy empty; Present true).
	PCIDevices(ctx context.Context) ([]api.HostPCIDevice, error)

	ListVMs(ctx context.Context) ([]api.VM, error)
	GetVM(ctx context.Context, name string) (*api.VM, error)
	// GuestAddresses asks a running domain's guest agent for its NICs'
	// addresses, by lower-case MAC; nil without a connected agent. It
	// returns when ctx ends.
	GuestAddresses(ctx context.Context, name string) (map[string][]string, error)
	// ConsoleLog returns the last max bytes of the domain's serial log and
	// whether older output was cut off; empty when the domain has none.
	ConsoleLog(ctx context.Context, name string, max int64) ([]byte, bool, error)
	// CreateVM defines the domain (and starts it if spec.Running). Disks
	// reference volumes by pool/name; Interfaces come with Bridge and VLAN
	// resolved by the service.
	CreateVM(ctx context.Context, name string, spec api.VMSpec, meta VMMeta) (*api.VM, error)
	// StartVM starts a defined domain (no-op when it runs).
	StartVM(ctx context.Context, name string) error
	// PowerVM starts, stops (gracefully) or reboots (stop, then start) a
	// domain; state is one of api.PowerStates. restarted is true when a
	// running domain was stopped and started again.
	PowerVM(ctx context.Context, name, state string) (restarted bool, err error)
	// UpdateVM changes a domain to match spec: live where libvirt can,
	// else with one graceful restart (reported by restarted).
	UpdateVM(ctx context.Context, name string, spec api.VMSpec) (restarted bool, err error)
	// SetInterfaceVLAN changes the access VLAN (0: untagged) of the
	// domain's interface with that MAC without a restart: live when it
	// runs (libvirt retags the OVS port it manages) and in its definition.
	SetInterfaceVLAN(ctx context.Context, vm, mac string, vlan int64) error
	// DeleteVM stops the domain (ACPI, then power-off after
	// shutdownTimeout) and undefines it with snapshot metadata and NVRAM.
	// Volumes are left alone; the cloud-init seed ISO is removed.
	DeleteVM(ctx context.Context, name string, shutdownTimeout time.Duration) error

	ListSnapshots(ctx context.Context, vm string) ([]api.Snapshot, error)
	GetSnapshot(ctx context.Context, vm, name string) (*api.Snapshot, error)
	CreateSnapshot(ctx context.Context, vm, name string, spec api.SnapshotSpec) (*api.Snapshot, error)
	RevertSnapshot(ctx context.Context, vm, name string) error
	DeleteSnapshot(ctx context.Context, vm, name string) error

	// MigrateVM moves a domain to another libvirt (req.TargetURI). Live
	// migration copies non-shared storage; the destination's volumes have
	// been pre-created by its own kvm-hostd. progress gets 0..1.
	MigrateVM(ctx context.Context, name string, req api.MigrateRequest, progress func(float64)) error

	Close() error
}

// Switch is the host's Open vSwitch, through OVSDB. Only rows carrying
// kvm-hostd's external_ids marker are ever changed or deleted.
type Switch interface {
	Ping(ctx context.Context) error
	// EnsureNetwork creates or converges the bridge of a network: MTU,
	// and for overlays exactly one tunnel port per peer (adding missing,
	// removing stale ones). localIP is this host's tunnel_ip.
	EnsureNetwork(ctx context.Context, name string, spec api.NetworkSpec, localIP string) (*api.Network, error)
	GetNetwork(ctx context.Context, name string) (*api.Network, error)
	ListNetworks(ctx context.Context) ([]api.Network, error)
	// DeleteNetwork removes the bridge, its tunnels and ports.
	DeleteNetwork(ctx context.Context, name string) error
	// AttachVMPorts records VM ports on bridges when libvirt does not
	// (test driver): one port per interface, with the VLAN tag and
	// external_ids attached-mac / vm-id.
	AttachVMPorts(ctx context.Context, vm string, ifaces []api.VMInterface) error
	DetachVMPorts(ctx context.Context, vm string) error
	// SyncPortSecurity converges the port-security flows of a network's
	// bridge with its VM ports (none when the network has port security
	// off). known maps a NIC's MAC to its known IPv4 address. pending
	// reports a VM port skipped until the switch numbers it.
	SyncPortSecurity(ctx context.Context, network string, known map[string]string) (pending, changed bool, err error)
	Close() error
}

// portWatcher is implemented by switches that can say when VM ports come
// and go (a domain started, a migration landed), so that port security
// follows at once instead of at the next periodic resync.
type portWatcher interface {
	WatchPorts(fn func())
}
