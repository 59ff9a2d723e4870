package kvm

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/hashicorp/terraform-plugin-framework-timeouts/resource/timeouts"
	"github.com/hashicorp/terraform-plugin-framework-validators/int64validator"
	"github.com/hashicorp/terraform-plugin-framework-validators/listvalidator"
	"github.com/hashicorp/terraform-plugin-framework-validators/mapvalidator"
	"github.com/hashicorp/terraform-plugin-framework-validators/stringvalidator"
	"github.com/hashicorp/terraform-plugin-framework/attr"
	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/booldefault"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/int64default"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/planmodifier"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/stringdefault"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/stringplanmodifier"
	"github.com/hashicorp/terraform-plugin-framework/schema/validator"
	"github.com/hashicorp/terraform-plugin-framework/types"
	"github.com/hashicorp/terraform-plugin-log/tflog"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

var (
	_ resource.ResourceWithConfigure      = &VMResource{}
	_ resource.ResourceWithImportState    = &VMResource{}
	_ resource.ResourceWithModifyPlan     = &VMResource{}
	_ resource.ResourceWithValidateConfig = &VMResource{}
)

// Default timeouts; a restart waits up to shutdown_timeout on top of them.
const (
	vmCreateTimeout = 10 * time.Minute
	vmReadTimeout   = 2 * time.Minute
	vmUpdateTimeout = 20 * time.Minute
	vmDeleteTimeout = 10 * time.Minute
)

// VMResource manages a libvirt domain on one host (kvm_vm).
type VMResource struct{ fleet *Fleet }

// NewVMResource is the kvm_vm factory.
func NewVMResource() resource.Resource { return &VMResource{} }

func (r *VMResource) Metadata(_ context.Context, req resource.MetadataRequest, resp *resource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_vm"
	// Mutable: a migration moves the VM to another host in place.
	resp.ResourceBehavior.MutableIdentity = true
}

func (r *VMResource) Schema(ctx context.Context, _ resource.SchemaRequest, resp *resource.SchemaResponse) {
	resp.Schema = schema.Schema{
		MarkdownDescription: "A virtual machine: a libvirt domain on one host of the fleet. Changes that libvirt can apply live " +
			"(memory within `max_memory_mib`, `running`, `autostart`, `description`, `tags`) are applied live; others are " +
			"applied with one graceful restart, which the plan announces with a \"VM Will Restart\" warning. The VM is only " +
			"destroyed and re-created when `name` changes (or `host` changes with `migration = \"replace\"`).\n\n" +
			"The guest's serial console is logged on its host (`/var/log/libvirt/qemu/<name>-serial.log`, kept across " +
			"restarts, rotated by virtlogd, deleted with the VM; on a new host after a migration it starts empty): " +
			"kvm-hostd's `GET /v1/vms/{name}/console` returns its tail (raw guest output; `?escape=true` escapes its " +
			"control characters), and a `wait_for_ip` that times out quotes it, escaped.\n\n" +
			"Import with `<host>/<name>`.",
		Attributes: map[string]schema.Attribute{
			"id": schema.StringAttribute{
				MarkdownDescription: "The libvirt domain UUID; stable across restarts and migration.",
				Computed:            true,
				PlanModifiers:       []planmodifier.String{stringplanmodifier.UseStateForUnknown()},
			},
			"name": schema.StringAttribute{
				MarkdownDescription: "Domain name, unique on its host. " + api.NamePatternDescription + ". Changing it re-creates the VM.",
				Required:            true,
				PlanModifiers:       []planmodifier.String{stringplanmodifier.RequiresReplace()},
				Validators:          []validator.String{vmObjectName("VM")},
			},
			"host": schema.StringAttribute{
				MarkdownDescription: "Name of the host (from the provider's `hosts`) the VM runs on, e.g. " +
					"`kvm_cluster_placement.web.assignments[\"web-1\"]`. Changing it moves the VM as `migration` says.",
				Required: true,
				PlanModifiers: []planmodifier.String{stringplanmodifier.RequiresReplaceIf(hostChangeReplaces,
					"Re-creates the VM when `migration` is `\"replace\"`.", "Re-creates the VM when `migration` is `\"replace\"`.")},
				Validators: []validator.String{stringvalidator.LengthAtLeast(1)},
			},
			"vcpu": schema.Int64Attribute{
				MarkdownDescription: "Number of virtual CPUs (1-512). Changing it restarts a running VM.",
				Required:            true,
				Validators:          []validator.Int64{int64validator.Between(api.MinVCPU, api.MaxVCPU)},
			},
			"memory_mib": schema.Int64Attribute{
				MarkdownDescription: "Memory in MiB (at least 16). Changes up to `max_memory_mib` are applied live through the balloon.",
				Required:            true,
				Validators:          []validator.Int64{int64validator.Between(api.MinMemoryMiB, api.MaxMemoryMiBLimit)},
			},
			"max_memory_mib": schema.Int64Attribute{
				MarkdownDescription: "Balloon ceiling in MiB: the memory the VM boots with, within which `memory_mib` can change live. " +
					"Must be at least `memory_mib`; defaults to `memory_mib`. Changing it restarts a running VM.",
				Optional:   true,
				Computed:   true,
				Validators: []validator.Int64{int64validator.Between(api.MinMemoryMiB, api.MaxMemoryMiBLimit)},
			},
			"cpu": schema.SingleNestedAttribute{
				MarkdownDescription: "CPU model, topology and pinning. Changing it restarts a running VM, except `emulator_pinning`, which is applied live.",
				Optional:            true,
				Attributes: map[string]schema.Attribute{
					"mode": schema.StringAttribute{
						MarkdownDescription: "CPU mode: `host-passthrough`, `host-model`, `maximum` or `custom`. On a host running TCG " +
							"(`domain_type` = `qemu` in `kvm_host`) the host runs `maximum` for the host modes. Default: the host's " +
							"`cpu_mode`, what its startup probe found working. A mode QEMU cannot start fails with what the probe found.",
						Optional:   true,
						Validators: []validator.String{stringvalidator.OneOf(api.CPUModes...)},
					},
					"sockets": schema.Int64Attribute{
						MarkdownDescription: "CPU sockets. `sockets` × `cores` × `threads` must equal `vcpu`; unset ones count as 1 when any is set.",
						Optional:            true, Computed: true,
						Validators: []validator.Int64{int64validator.AtLeast(1)},
					},
					"cores": schema.Int64Attribute{
						MarkdownDescription: "Cores per socket.",
						Optional:            true, Computed: true,
						Validators: []validator.Int64{int64validator.AtLeast(1)},
					},
					"threads": schema.Int64Attribute{
						MarkdownDescription: "Threads per core.",
						Optional:            true, Computed: true,
						Validators: []validator.Int64{int64validator.AtLeast(1)},
					},
					"emulator_pinning": emulatorPinningAttribute(),
					"pinning": schema.ListAttribute{
						MarkdownDescription: "Host-CPU set per vCPU, one entry per vCPU in order, e.g. `[\"0\", \"1\"]` or `[\"0-3\", \"^2\"]`.",
						Optional:            true,
						ElementType:         types.StringType,
						Validators: []validator.List{
							listvalidator.SizeAtLeast(1),
							listvalidator.ValueStringsAre(cpuSet()),
						},
					},
				},
			},
			"disks": schema.ListNestedAttribute{
				MarkdownDescription: "Volumes attached to the VM, in boot order (the first is the boot disk). Each must be a `kvm_disk` " +
					"on the same host. Changing the list restarts a running VM. Deleting the VM leaves its disks in place.",
				Optional: true,
				NestedObject: schema.NestedAttributeObject{Attributes: map[string]schema.Attribute{
					"disk_id": schema.StringAttribute{
						MarkdownDescription: "ID of a `kvm_disk` (`<host>/<pool>/<name>`), e.g. `kvm_disk.root.id`.",
						Required:            true,
						Validators:          []validator.String{diskIDFormat("Invalid Disk ID", " (use the id of a kvm_disk, e.g. kvm_disk.root.id)")},
					},
					"bus": schema.StringAttribute{
						MarkdownDescription: "Disk bus: `virtio` (default), `sata`, `scsi` or `ide`.",
						Optional:            true, Computed: true,
						Default:    stringdefault.StaticString(vmDefaultBus),
						Validators: []validator.String{stringvalidator.OneOf(api.Buses...)},
					},
				}},
			},
			"network_interfaces": schema.ListNestedAttribute{
				MarkdownDescription: "Network interfaces in order, each on a `kvm_network` realized on the VM's host. Interfaces " +
					"added at the end of a running VM's list are hot-plugged (on QEMU); any other change restarts a running VM.",
				Optional: true,
				NestedObject: schema.NestedAttributeObject{Attributes: map[string]schema.Attribute{
					"network": schema.StringAttribute{
						MarkdownDescription: "Name of the `kvm_network` (e.g. `kvm_network.lan.name`).",
						Required:            true,
						Validators:          []validator.String{vmObjectName("network")},
					},
					"mac": schema.StringAttribute{
						MarkdownDescription: "MAC address, e.g. `52:54:00:12:34:56`. Generated by libvirt when unset and kept stable afterwards.",
						Optional:            true, Computed: true,
						Validators: []validator.String{macAddress()},
					},
					"model": schema.StringAttribute{
						MarkdownDescription: "NIC model: `virtio` (default), `e1000`, `e1000e` or `rtl8139`.",
						Optional:            true, Computed: true,
						Default:    stringdefault.StaticString(vmDefaultNICModel),
						Validators: []validator.String{stringvalidator.OneOf(api.NICModels...)},
					},
					"ipv4_address": schema.StringAttribute{
						MarkdownDescription: "Static IPv4 address (no prefix length) inside the network's `subnet.cidr`, e.g. " +
							"`10.20.0.10`; not the network's gateway, its network or broadcast address, or a host's DHCP server " +
							"address, and not used by another VM on the same network. The host delivers it to the guest through a " +
							"generated cloud-init network-config (when `cloud_init` is set without `network_config`; see " +
							"`cloud_init`) and, on a network with `dhcp = true`, as a DHCP reservation. A change takes effect " +
							"at the guest's next boot. Checked at plan time against the network and the other VMs of every " +
							"configured host that can be reached; two new VMs in one apply are only caught by the host at apply, " +
							"and only when they land on the same host.",
						Optional:   true,
						Validators: []validator.String{ipv4Address()},
					},
					"addresses": schema.ListAttribute{
						MarkdownDescription: "The IPv4 and IPv6 addresses the guest reports on this interface, in its order: from its qemu-guest-agent " +
							"(`guest_agent`), else from the host's DHCP leases. The guest is not trusted: the host drops loopback, " +
							"link-local (incl. IPv6 `fe80::/10`), multicast, unspecified and broadcast addresses, the network's gateway and " +
							"DHCP server addresses and addresses it reserves for other VMs, and keeps at most 64. Empty while the guest " +
							"reports none (stopped, still booting, no agent). Updated on every refresh; such changes are not a diff.",
						Computed:    true,
						ElementType: types.StringType,
					},
				}},
			},
			"cloud_init": schema.SingleNestedAttribute{
				MarkdownDescription: "cloud-init data; the host builds a NoCloud seed ISO from it and attaches it as a CD-ROM. " +
					"Content changes take effect at the guest's next boot.",
				Optional: true,
				Attributes: map[string]schema.Attribute{
					"user_data": schema.StringAttribute{
						MarkdownDescription: "`user-data` (e.g. a `#cloud-config` document). Sensitive: the host writes it only into " +
							"the seed ISO (readable by QEMU only) and keeps just its SHA-256 to detect changes; it is never returned " +
							"by the host's API. After an import it reads as a marker with that hash until it is set again.",
						Optional:  true,
						Sensitive: true,
					},
					"user_data_wo": cloudInitUserDataWOAttribute(), "user_data_wo_version": cloudInitUserDataWOVersionAttribute(),
					"meta_data": schema.StringAttribute{
						MarkdownDescription: "`meta-data` (instance-id, local-hostname). Default: `instance-id` is the VM's name " +
							"(with a generated network-config: the name and a hash of that config, so that a changed " +
							"`ipv4_address` gets a new instance-id and cloud-init applies it at the next boot; with your own " +
							"meta-data, change its instance-id yourself for that).",
						Optional: true,
					},
					"network_config": schema.StringAttribute{
						MarkdownDescription: "`network-config` (cloud-init network configuration v1 or v2). When unset and a " +
							"network interface has an `ipv4_address`, the host generates one (version 2): each interface matched by " +
							"MAC and named `eth0`, `eth1`, ... in order; those with an `ipv4_address` get it with the subnet's prefix " +
							"length, its `dns_servers`, and the first one whose subnet has a `gateway` the default route; the others " +
							"use DHCP. Without `cloud_init` there is no seed and a static address reaches the guest only as a DHCP " +
							"reservation (networks with `dhcp = true`).",
						Optional: true,
					},
				},
			},
			"running": schema.BoolAttribute{
				MarkdownDescription: "Whether the VM should be running. Default `true`. Setting it to `false` shuts the VM down " +
					"gracefully (up to `shutdown_timeout`, then powers it off). A one-off start, stop or reboot that leaves this " +
					"setting alone is the `kvm_vm_power` action (Terraform ≥ 1.14); this attribute is the way without actions (OpenTofu).",
				Optional: true, Computed: true,
				Default: booldefault.StaticBool(true),
			},
			"autostart": schema.BoolAttribute{
				MarkdownDescription: "Whether libvirt starts the VM when the host boots. Default `false`.",
				Optional:            true, Computed: true,
				Default: booldefault.StaticBool(false),
			},
			"description": schema.StringAttribute{
				MarkdownDescription: "Free text stored in the domain's `<description>` (at most 4096 bytes).",
				Optional:            true,
				Validators:          []validator.String{description()},
			},
			"tags": schema.MapAttribute{
				MarkdownDescription: "Key/value labels stored in the domain's metadata.",
				Optional:            true,
				ElementType:         types.StringType,
				Validators:          []validator.Map{mapvalidator.KeysAre(tagKey())},
			},
			"shutdown_timeout": schema.Int64Attribute{
				MarkdownDescription: "Seconds of graceful ACPI shutdown before the VM is powered off, on stop, restart and delete " +
					"(0-3600). Default `60`.",
				Optional: true, Computed: true,
				Default:    int64default.StaticInt64(vmDefaultShutdownTimeout),
				Validators: []validator.Int64{int64validator.Between(0, api.MaxShutdownTimeoutSec)},
			},
			"migration": schema.StringAttribute{
				MarkdownDescription: "How a change of `host` is carried out: `live` (default), `offline` or `replace` (destroy and " +
					"re-create on the new host). `live` moves a running VM without stopping it (on a TCG host, one without a usable " +
					"`/dev/kvm`, the guest is paused while its memory is copied, because TCG cannot copy a running guest's memory " +
					"safely); `offline` shuts it down gracefully " +
					"(`shutdown_timeout`), moves it and starts it again if `running`. Either way the UUID stays, the disks move with " +
					"it (change their `kvm_disk` `host` too), and the target host needs `migration_uri`, room for the VM, its networks, " +
					"and for linked clones the same base volume. A cloud-init seed ISO is copied to the same path on the new host, a " +
					"UEFI VM's NVRAM too, and a TPM's state moves with QEMU's; the new host needs `ovmf` and `swtpm` for them. " +
					"On failure the VM stays on its old host.",
				Optional: true, Computed: true,
				Default:    stringdefault.StaticString(vmDefaultMigration),
				Validators: []validator.String{stringvalidator.OneOf(vmMigrations...)},
			},
			"state": schema.StringAttribute{
				MarkdownDescription: "The domain state libvirt reports: `running`, `shutoff`, `paused`, `crashed` or `other`.",
				Computed:            true,
			},
			"pci_devices": vmPCIDevicesAttribute(),
			"guest_agent": schema.BoolAttribute{
				MarkdownDescription: "Whether the VM gets the qemu-guest-agent channel (a virtio-serial port " +
					"`org.qemu.guest_agent.0`), through which the host reads the guest's addresses (`ipv4_address`, " +
					"`network_interfaces[*].addresses`); the guest must run qemu-guest-agent. Default `true`. Changing it " +
					"restarts a running VM. VMs created by provider versions without it have no channel and read back `false`, " +
					"so the first plan after an upgrade adds it (one restart).",
				Optional: true, Computed: true,
				Default: booldefault.StaticBool(true),
			},
			"wait_for_ip": schema.SingleNestedAttribute{
				MarkdownDescription: "Makes create and update (never plan or refresh) wait, once the VM runs, until every network " +
					"interface reports an IPv4 address, so that `ipv4_address` and `addresses` are known to what depends on the " +
					"VM. Needs `guest_agent = true`. On timeout the apply fails naming the interfaces without an address and " +
					"quoting the end of the VM's serial console, its control characters escaped.",
				Optional: true,
				Attributes: map[string]schema.Attribute{
					"timeout": schema.StringAttribute{
						MarkdownDescription: "How long to wait, as a duration like `\"90s\"` or `\"5m\"`. Default `\"5m\"`.",
						Optional:            true,
						Validators:          []validator.String{waitDuration()},
					},
				},
			},
			"ipv4_address": schema.StringAttribute{
				MarkdownDescription: "The first IPv4 address the guest reports on its first network interface (see " +
					"`network_interfaces[*].addresses`), preferring one inside the network's `subnet`; null while it reports none.",
				Computed: true,
			},
		},
		Blocks: map[string]schema.Block{
			"timeouts": timeouts.Block(ctx, timeouts.Opts{Create: true, Read: true, Update: true, Delete: true}),
		},
	}
	maps.Copy(resp.Schema.Attributes, vmMemoryAttributes())
	addDeviceAttributes(resp.Schema.Attributes)
	maps.Copy(resp.Schema.Attributes, vmFirmwareAttributes())
}

// hostChangeReplaces makes a host change re-create the VM only when the
// user asked for that with migration = "replace".
func hostChangeReplaces(ctx context.Context, req planmodifier.StringRequest, resp *stringplanmodifier.RequiresReplaceIfFuncResponse) {
	var migration types.String
	resp.Diagnostics.Append(req.Plan.GetAttribute(ctx, path.Root("migration"), &migration)...)
	resp.RequiresReplace = migration.ValueString() == "replace"
}

func (r *VMResource) Configure(_ context.Context, req resource.ConfigureRequest, resp *resource.ConfigureResponse) {
	r.fleet = fleetFrom(req.ProviderData, &resp.Diagnostics)
}

// ValidateConfig checks what spans attributes, so that mistakes fail the
// plan with the attribute named instead of a 400 from the host at apply.
func (r *VMResource) ValidateConfig(ctx context.Context, req resource.ValidateConfigRequest, resp *resource.ValidateConfigResponse) {
	var cfg vmModel
	resp.Diagnostics.Append(req.Config.Get(ctx, &cfg)...)
	if resp.Diagnostics.HasError() {
		return
	}
	known := func(v types.Int64) bool { return !v.IsNull() && !v.IsUnknown() }
	if known(cfg.MaxMemoryMiB) && known(cfg.MemoryMiB) {
		if err := api.CheckMemory(cfg.MemoryMiB.ValueInt64(), cfg.MaxMemoryMiB.ValueInt64()); err != nil {
			resp.Diagnostics.AddAttributeError(path.Root("max_memory_mib"), "Invalid Memory Ceiling", err.Error()+".")
		}
	}

	cpu, d := cfg.cpuOf(ctx)
	resp.Diagnostics.Append(d...)
	if cpu != nil {
		if cpu.Mode.IsNull() && cpu.Sockets.IsNull() && cpu.Cores.IsNull() && cpu.Threads.IsNull() && cpu.Pinning.IsNull() && cpu.EmulatorPinning.IsNull() {
			resp.Diagnostics.AddAttributeError(path.Root("cpu"), "Empty CPU Settings",
				"cpu must set at least one of mode, sockets, cores, threads, pinning or emulator_pinning; remove it to use the host's defaults.")
		}
		if known(cfg.VCPU) && !cpu.Sockets.IsUnknown() && !cpu.Cores.IsUnknown() && !cpu.Threads.IsUnknown() {
			// Unset (null) parts are 0 here, which counts as 1.
			if err := api.CheckCPUTopology(cpu.Sockets.ValueInt64(), cpu.Cores.ValueInt64(), cpu.Threads.ValueInt64(), cfg.VCPU.ValueInt64()); err != nil {
				resp.Diagnostics.AddAttributeError(path.Root("cpu"), "Invalid CPU Topology", err.Error()+".")
			}
		}
		if !cpu.Pinning.IsNull() && !cpu.Pinning.IsUnknown() && known(cfg.VCPU) {
			if err := api.CheckPinning(len(cpu.Pinning.Elements()), cfg.VCPU.ValueInt64()); err != nil {
				resp.Diagnostics.AddAttributeError(path.Root("cpu").AtName("pinning"), "Invalid CPU Pinning", err.Error()+".")
			}
		}
	}

	validateMemoryConfig(ctx, cfg, &resp.Diagnostics)

	validateFirmware(cfg, resp)
	if !cfg.WaitForIP.IsNull() && !cfg.GuestAgent.IsNull() && !cfg.GuestAgent.IsUnknown() && !cfg.GuestAgent.ValueBool() {
		resp.Diagnostics.AddAttributeError(path.Root("wait_for_ip"), "wait_for_ip Needs the Guest Agent",
			"wait_for_ip reads the guest's addresses through its qemu-guest-agent: set guest_agent = true (the default) or remove wait_for_ip.")
	}
	nics, d := cfg.nicsOf(ctx)
	resp.Diagnostics.Append(d...)
	seenIP := map[string]int{}
	for i, n := range nics {
		ip := knownString(n.IPv4Address)
		if ip == "" || api.ValidateIPv4Syntax(ip) != nil {
			continue
		}
		if j, dup := seenIP[ip]; dup {
			resp.Diagnostics.AddAttributeError(path.Root("network_interfaces").AtListIndex(i).AtName("ipv4_address"), "Duplicate IPv4 Address",
				fmt.Sprintf("%s is already the ipv4_address of network_interfaces[%d].", ip, j))
		}
		seenIP[ip] = i
	}

	validateDevices(ctx, cfg, &resp.Diagnostics)
	disks, d := cfg.disksOf(ctx)
	resp.Diagnostics.Append(d...)
	seen := map[string]int{}
	for i, dm := range disks {
		if dm.DiskID.IsNull() || dm.DiskID.IsUnknown() {
			continue
		}
		id := dm.DiskID.ValueString()
		host, _, _, err := ParseDiskID(id)
		if err != nil {
			continue // the attribute validator reports it
		}
		p := path.Root("disks").AtListIndex(i).AtName("disk_id")
		if !cfg.Host.IsNull() && !cfg.Host.IsUnknown() && host != cfg.Host.ValueString() {
			resp.Diagnostics.AddAttributeError(p, "Disk on Another Host",
				fmt.Sprintf("disk %s is on host %q but the VM is on host %q; a VM can only attach disks of its own host.", id, host, cfg.Host.ValueString()))
		}
		if j, dup := seen[id]; dup {
			resp.Diagnostics.AddAttributeError(p, "Disk Attached Twice", fmt.Sprintf("disk %s is already disks[%d].", id, j))
		}
		seen[id] = i
	}
}

func (r *VMResource) ModifyPlan(ctx context.Context, req resource.ModifyPlanRequest, resp *resource.ModifyPlanResponse) {
	if req.Plan.Raw.IsNull() {
		return // destroy
	}
	if vmPlanUnchanged(ctx, r.fleet, req, resp) {
		return
	}
	var plan, cfg vmModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	resp.Diagnostics.Append(req.Config.Get(ctx, &cfg)...)
	var state *vmModel
	if !req.State.Raw.IsNull() {
		state = &vmModel{}
		resp.Diagnostics.Append(req.State.Get(ctx, state)...)
	}
	if resp.Diagnostics.HasError() {
		return
	}

	if r.fleet != nil && !plan.Host.IsUnknown() && !plan.Host.IsNull() {
		if _, err := r.fleet.Host(plan.Host.ValueString()); err != nil {
			resp.Diagnostics.AddAttributeError(path.Root("host"), "Unknown Host", err.Error())
			return
		}
	}
	if state == nil || !state.Host.Equal(plan.Host) {
		checkNotEvacuated(r.fleet, plan.Host, &resp.Diagnostics)
	}
	// Disk IDs from kvm_disk are usually known only now, not at validation.
	if disks, d := plan.disksOf(ctx); !plan.Host.IsUnknown() {
		resp.Diagnostics.Append(d...)
		for i, dm := range disks {
			if dm.DiskID.IsUnknown() {
				continue
			}
			if host, _, _, err := ParseDiskID(dm.DiskID.ValueString()); err == nil && host != plan.Host.ValueString() {
				resp.Diagnostics.AddAttributeError(path.Root("disks").AtListIndex(i).AtName("disk_id"), "Disk on Another Host",
					fmt.Sprintf("disk %s is on host %q but VM %s is on host %q; a VM can only attach disks of its own host.",
						dm.DiskID.ValueString(), host, plan.Name.ValueString(), plan.Host.ValueString()))
			}
		}
		if resp.Diagnostics.HasError() {
			return
		}
	}
	r.checkStaticIPv4(ctx, plan, state, &resp.Diagnostics)
	checkPCIMigration(ctx, plan, state, &resp.Diagnostics)
	if !resp.Diagnostics.HasError() {
		r.warnMigrationStorage(ctx, plan, state, &resp.Diagnostics)
	}
	if resp.Diagnostics.HasError() {
		return
	}
	if state != nil && !plan.Name.Equal(state.Name) {
		return // replaced: everything is new
	}
	// Whether anything is planned to change at all: an empty plan must
	// stay empty.
	changing := state == nil || !req.Plan.Raw.Equal(req.State.Raw)

	// max_memory_mib defaults to memory_mib, which is what the host stores.
	if cfg.MaxMemoryMiB.IsNull() && plan.MaxMemoryMiB.IsUnknown() && !plan.MemoryMiB.IsUnknown() {
		mem := plan.MemoryMiB.ValueInt64()
		if state != nil && !state.MaxMemoryMiB.IsNull() && state.MaxMemoryMiB.ValueInt64() >= mem {
			plan.MaxMemoryMiB = state.MaxMemoryMiB
		} else {
			plan.MaxMemoryMiB = types.Int64Value(mem)
		}
	}

	// cpu topology: the host stores 1 for unset parts when any is set.
	if cpu, d := plan.cpuOf(ctx); cpu != nil {
		resp.Diagnostics.Append(d...)
		ccfg, _ := cfg.cpuOf(ctx)
		anySet := ccfg != nil && (!ccfg.Sockets.IsNull() || !ccfg.Cores.IsNull() || !ccfg.Threads.IsNull())
		for _, v := range []*types.Int64{&cpu.Sockets, &cpu.Cores, &cpu.Threads} {
			if v.IsUnknown() {
				if anySet {
					*v = types.Int64Value(1)
				} else {
					*v = types.Int64Null()
				}
			}
		}
		obj, d := types.ObjectValueFrom(ctx, vmCPUAttrTypes, cpu)
		resp.Diagnostics.Append(d...)
		plan.CPU = obj
	}

	// MACs: an interface at the same position on the same network keeps
	// the MAC libvirt generated (the host does the same).
	if nics, d := plan.nicsOf(ctx); len(nics) > 0 {
		resp.Diagnostics.Append(d...)
		var prior []vmNICModel
		if state != nil {
			prior, _ = state.nicsOf(ctx)
		}
		for i := range nics {
			if nics[i].MAC.IsUnknown() && i < len(prior) && prior[i].Network.Equal(nics[i].Network) && !prior[i].MAC.IsNull() {
				nics[i].MAC = prior[i].MAC
			}
		}
		l, d := types.ListValueFrom(ctx, types.ObjectType{AttrTypes: vmNICAttrTypes}, nics)
		resp.Diagnostics.Append(d...)
		plan.NetworkInterfaces = l
		// What the guest reports changes outside Terraform (refresh picks
		// it up); an update leaves it known, as it is, unless the update
		// changes what the guest sees on its NICs or waits for addresses.
		keep := state != nil && !vmAddressesChange(ctx, *state, plan)
		for i := range nics {
			switch {
			case !changing:
			case keep && i < len(prior) && !prior[i].Addresses.IsNull() && !prior[i].Addresses.IsUnknown():
				nics[i].Addresses = prior[i].Addresses
			default:
				nics[i].Addresses = types.ListUnknown(types.StringType)
			}
		}
		l, d = types.ListValueFrom(ctx, types.ObjectType{AttrTypes: vmNICAttrTypes}, nics)
		resp.Diagnostics.Append(d...)
		plan.NetworkInterfaces = l
	}

	if changing && state != nil && plan.IPv4Address.IsUnknown() && !vmAddressesChange(ctx, *state, plan) {
		plan.IPv4Address = state.IPv4Address
	}

	if state != nil {
		restartFor := vmRestartAttributes(ctx, *state, plan)
		hostMoves := !plan.Host.IsUnknown() && !plan.Host.Equal(state.Host)
		runningChanges := !plan.Running.Equal(state.Running)
		if plan.State.IsUnknown() && !runningChanges && len(restartFor) == 0 && !hostMoves {
			plan.State = state.State
		}
		wasRunning := state.Running.ValueBool() || state.State.ValueString() == api.StateRunning
		if wasRunning && plan.Running.ValueBool() && len(restartFor) > 0 && !hostMoves {
			resp.Diagnostics.AddWarning("VM Will Restart",
				fmt.Sprintf("VM %s on host %s will be restarted once (graceful shutdown up to shutdown_timeout, then started again) "+
					"to apply changes to: %s. It will not be destroyed.", plan.Name.ValueString(), state.Host.ValueString(), strings.Join(restartFor, ", ")))
		}
	}
	keepGraphicsAddress(ctx, state, &plan, &resp.Diagnostics)
	resp.Diagnostics.Append(resp.Plan.Set(ctx, &plan)...)
}

// vmAddressesChange reports whether an update may change the addresses a
// guest reports, so the plan shows them as known after apply: the NICs
// change, the VM starts, stops or restarts, moves, or waits for addresses.
func vmAddressesChange(ctx context.Context, state, plan vmModel) bool {
	if _, wait := plan.waitForIPOf(ctx); wait || !plan.WaitForIP.IsNull() {
		return true
	}
	if !plan.Running.Equal(state.Running) || !plan.Host.Equal(state.Host) || plan.NetworkInterfaces.IsUnknown() {
		return true
	}
	pn, _ := plan.nicsOf(ctx)
	sn, _ := state.nicsOf(ctx)
	if len(pn) != len(sn) {
		return true
	}
	for i := range pn {
		if !pn[i].Network.Equal(sn[i].Network) || !pn[i].MAC.Equal(sn[i].MAC) || !pn[i].IPv4Address.Equal(sn[i].IPv4Address) {
			return true
		}
	}
	return len(vmRestartAttributes(ctx, state, plan)) > 0
}

// vmRestartAttributes names the planned changes a running domain cannot
// take live, by the host's own rule (api.NeedsRestart). An unknown value
// counts as a change: it is known only once something it depends on is
// replaced or created.
func vmRestartAttributes(ctx context.Context, state, plan vmModel) []string {
	cur, _ := state.toAPI(ctx)
	want, _ := plan.toAPI(ctx)
	out := api.NeedsRestart(cur, want)
	for name, v := range map[string]attr.Value{
		"vcpu": plan.VCPU, "max_memory_mib": plan.MaxMemoryMiB, "cpu": plan.CPU, "disks": plan.Disks,
		"network_interfaces": plan.NetworkInterfaces, "cloud_init": plan.CloudInit, "numa": plan.NUMA, "pci_devices": plan.PCIDevices,
	} {
		if v.IsUnknown() && !slices.Contains(out, name) {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

func (r *VMResource) Create(ctx context.Context, req resource.CreateRequest, resp *resource.CreateResponse) {
	defer syncIdentity(ctx, &resp.State, req.Plan, resp.Identity, &resp.Diagnostics, vmIdentityOf)
	var plan vmModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	if resp.Diagnostics.HasError() {
		return
	}
	timeout, d := plan.Timeouts.Create(ctx, vmCreateTimeout)
	resp.Diagnostics.Append(d...)
	h := lookupHost(r.fleet, plan.Host.ValueString(), &resp.Diagnostics)
	spec, d := plan.toAPI(ctx)
	resp.Diagnostics.Append(d...)
	resp.Diagnostics.Append(graphicsPasswordFromConfig(ctx, req.Config, &spec)...)
	resp.Diagnostics.Append(cloudInitUserDataFromConfig(ctx, req.Config, &spec)...)
	if resp.Diagnostics.HasError() {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	name := plan.Name.ValueString()
	what := fmt.Sprintf("VM %s on host %s", name, h.Name)
	tflog.Debug(ctx, "creating VM", map[string]any{"host": h.Name, "name": name})
	vm, err := h.Client.PutVM(ctx, name, spec)
	if err != nil {
		switch {
		case api.IsCode(err, api.CodeFull):
			resp.Diagnostics.AddError("Host Refused VM",
				fmt.Sprintf("Host %s refused VM %s (%d vCPU, %d MiB): %s. Choose another host (kvm_cluster_placement computes one that fits) or free capacity.",
					h.Name, name, spec.VCPU, api.VMMemoryMiB(spec), apiMessage(err)))
		case api.IsCode(err, api.CodeConflict):
			addAPIError(&resp.Diagnostics, "Unable to Create VM", what+" (if the VM already exists, import it: terraform import <address> "+VMID(h.Name, name)+")", err)
		default:
			addAPIError(&resp.Diagnostics, "Unable to Create VM", what, err)
		}
		return
	}
	// The host answers the create with the VM as a GET reads it: no
	// read-back.
	if wait, ok := plan.waitForIPOf(ctx); ok && vm.Running {
		if vm = waitForIP(ctx, h, name, wait, &resp.Diagnostics); vm == nil {
			// The VM exists: keep it in state (Terraform taints it).
			if s, d := vmFromAPIOrPlan(ctx, plan, h); s != nil {
				resp.Diagnostics.Append(d...)
				resp.Diagnostics.Append(resp.State.Set(ctx, s)...)
			}
			return
		}
	}
	state, d := vmFromAPI(ctx, plan, h.Name, vm)
	resp.Diagnostics.Append(d...)
	resp.Diagnostics.Append(resp.State.Set(ctx, &state)...)
}

// apiMessage returns the host's message of an API error, else the error.
func apiMessage(err error) string {
	var e *api.Error
	if errors.As(err, &e) {
		return e.Message
	}
	return err.Error()
}

func (r *VMResource) Read(ctx context.Context, req resource.ReadRequest, resp *resource.ReadResponse) {
	defer syncIdentity(ctx, &resp.State, req.State, resp.Identity, &resp.Diagnostics, vmIdentityOf)
	var prior vmModel
	resp.Diagnostics.Append(req.State.Get(ctx, &prior)...)
	if resp.Diagnostics.HasError() {
		return
	}
	timeout, d := prior.Timeouts.Read(ctx, vmReadTimeout)
	resp.Diagnostics.Append(d...)
	h := lookupHost(r.fleet, prior.Host.ValueString(), &resp.Diagnostics)
	if resp.Diagnostics.HasError() || evacuated(ctx, h, "VM "+VMID(h.Name, prior.Name.ValueString()), func() string { return vmEvacuationLoss(ctx, r.fleet, prior) }, resp) {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	name := prior.Name.ValueString()
	vm, err := h.ReadVM(ctx, name)
	if err != nil {
		if isNotFound(err) {
			tflog.Warn(ctx, "VM is gone; removing it from state", map[string]any{"host": h.Name, "name": name})
			resp.State.RemoveResource(ctx)
			return
		}
		if hostUnreachable(err) {
			warnHostUnreachable(&resp.Diagnostics, h.Name, "VM "+VMID(h.Name, name), err)
			return
		}
		addAPIError(&resp.Diagnostics, "Unable to Read VM", fmt.Sprintf("VM %s on host %s", name, h.Name), err)
		return
	}
	vm = representableVM(vm, &resp.Diagnostics) // a domain made outside Terraform (list_resources.go)
	state, d := vmFromAPI(ctx, prior, h.Name, vm)
	resp.Diagnostics.Append(d...)
	resp.Diagnostics.Append(resp.State.Set(ctx, &state)...)
}

func (r *VMResource) Update(ctx context.Context, req resource.UpdateRequest, resp *resource.UpdateResponse) {
	defer syncIdentity(ctx, &resp.State, req.Plan, resp.Identity, &resp.Diagnostics, vmIdentityOf)
	var plan, prior vmModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	resp.Diagnostics.Append(req.State.Get(ctx, &prior)...)
	if resp.Diagnostics.HasError() {
		return
	}
	name := plan.Name.ValueString()
	timeout, d := plan.Timeouts.Update(ctx, vmUpdateTimeout)
	resp.Diagnostics.Append(d...)
	h := lookupHost(r.fleet, plan.Host.ValueString(), &resp.Diagnostics)
	spec, d := plan.toAPI(ctx)
	resp.Diagnostics.Append(d...)
	resp.Diagnostics.Append(graphicsPasswordFromConfig(ctx, req.Config, &spec)...)
	resp.Diagnostics.Append(cloudInitUserDataFromConfig(ctx, req.Config, &spec)...)
	if resp.Diagnostics.HasError() {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, timeout+time.Duration(*spec.ShutdownTimeoutSec)*time.Second)
	defer cancel()
	if !plan.Host.Equal(prior.Host) {
		// migration = "replace" plans a replacement, never an update.
		if !r.migrate(ctx, plan, prior, h, resp) {
			return
		}
	}
	what := fmt.Sprintf("VM %s on host %s", name, h.Name)
	vm, err := h.Client.UpdateVM(ctx, name, spec)
	if err != nil {
		if api.IsCode(err, api.CodeFull) {
			resp.Diagnostics.AddError("Host Refused VM",
				fmt.Sprintf("Host %s refused the new size of VM %s (%d vCPU, %d MiB): %s", h.Name, name, spec.VCPU, api.VMMemoryMiB(spec), apiMessage(err)))
			return
		}
		addAPIError(&resp.Diagnostics, "Unable to Update VM", what, err)
		return
	}
	if vm.Restarted {
		tflog.Info(ctx, "VM was restarted to apply the change", map[string]any{"host": h.Name, "name": name})
	}
	// A PATCH answer carries no guest addresses: known planned ones stay as
	// they are (refresh updates them); unknown ones are read now, after
	// waiting for them if asked to.
	if wait, ok := plan.waitForIPOf(ctx); ok && vm.Running {
		if vm = waitForIP(ctx, h, name, wait, &resp.Diagnostics); vm == nil {
			// The change was applied: record the VM as it is.
			if s, d := vmFromAPIOrPlan(ctx, plan, h); s != nil {
				resp.Diagnostics.Append(d...)
				resp.Diagnostics.Append(resp.State.Set(ctx, s)...)
			} else {
				resp.Diagnostics.Append(resp.State.Set(ctx, &prior)...)
			}
			return
		}
	} else if plannedAddressesUnknown(ctx, plan) {
		if got, err := h.Client.GetVM(ctx, name); err == nil {
			vm = got
		}
	}
	state, d := vmFromAPI(ctx, plan, h.Name, vm)
	resp.Diagnostics.Append(d...)
	keepPlannedAddresses(ctx, plan, &state, &resp.Diagnostics)
	resp.Diagnostics.Append(resp.State.Set(ctx, &state)...)
}

// plannedAddressesUnknown reports whether the plan leaves any guest address
// to be known after apply.
func plannedAddressesUnknown(ctx context.Context, plan vmModel) bool {
	if plan.IPv4Address.IsUnknown() || plan.NetworkInterfaces.IsUnknown() {
		return true
	}
	nics, _ := plan.nicsOf(ctx)
	for _, n := range nics {
		if n.Addresses.IsUnknown() {
			return true
		}
	}
	return false
}

// keepPlannedAddresses puts the addresses the plan knows into state: the
// plan promised them.
func keepPlannedAddresses(ctx context.Context, plan vmModel, state *vmModel, diags *diag.Diagnostics) {
	if !plan.IPv4Address.IsUnknown() {
		state.IPv4Address = plan.IPv4Address
	}
	pn, _ := plan.nicsOf(ctx)
	sn, _ := state.nicsOf(ctx)
	if len(pn) != len(sn) {
		return
	}
	changed := false
	for i := range sn {
		if !pn[i].Addresses.IsUnknown() && !pn[i].Addresses.IsNull() && !pn[i].Addresses.Equal(sn[i].Addresses) {
			sn[i].Addresses, changed = pn[i].Addresses, true
		}
	}
	if changed {
		l, d := types.ListValueFrom(ctx, types.ObjectType{AttrTypes: vmNICAttrTypes}, sn)
		diags.Append(d...)
		state.NetworkInterfaces = l
	}
}

// vmFromAPIOrPlan reads a VM back for the state after a failed wait.
func vmFromAPIOrPlan(ctx context.Context, plan vmModel, h *FleetHost) (*vmModel, diag.Diagnostics) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	vm, err := h.Client.GetVM(cctx, plan.Name.ValueString())
	if err != nil {
		return nil, nil
	}
	s, d := vmFromAPI(ctx, plan, h.Name, vm)
	return &s, d
}

// waitForIP polls the VM until every NIC reports an IPv4 address and
// returns it then; on timeout it adds an error naming the NICs without one
// and quoting the end of the serial console, and returns nil.
func waitForIP(ctx context.Context, h *FleetHost, name string, timeout time.Duration, diags *diag.Diagnostics) *api.VM {
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	var last *api.VM
	delay := time.Second
	for {
		vm, err := h.Client.GetVM(wctx, name)
		if err == nil {
			last = vm
			if missing := nicsWithoutIPv4(vm); len(missing) == 0 {
				tflog.Info(ctx, "VM reports IPv4 addresses", map[string]any{"host": h.Name, "name": name,
					"after": time.Since(start).Round(time.Second).String(), "ipv4_address": vm.IPv4Address})
				return vm
			}
		} else if wctx.Err() == nil && !hostUnreachable(err) && !isNotFound(err) {
			addAPIError(diags, "Unable to Read VM While Waiting for IP", fmt.Sprintf("VM %s on host %s", name, h.Name), err)
			return nil
		}
		select {
		case <-wctx.Done():
			var missing []string
			if last != nil {
				missing = nicsWithoutIPv4(last)
			}
			msg := fmt.Sprintf("VM %s on host %s: after %s, %s reported no IPv4 address (wait_for_ip). Is qemu-guest-agent "+
				"running in the guest and does the network hand out addresses (DHCP, or a static ipv4_address)?",
				name, h.Name, timeout, strings.Join(missing, ", "))
			if missing == nil {
				msg = fmt.Sprintf("VM %s on host %s could not be read within wait_for_ip's %s.", name, h.Name, timeout)
			}
			cctx, ccancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
			if c, err := h.Client.VMConsole(cctx, name, 16<<10); err == nil && strings.TrimSpace(c.Text) != "" {
				msg += "\n\nLast lines of the serial console (guest output, control characters escaped):\n" + quoteConsole(c.Text)
			}
			ccancel()
			diags.AddError("Timed Out Waiting for IP", msg)
			return nil
		case <-time.After(delay):
		}
		delay = min(delay*2, 5*time.Second)
	}
}

// nicsWithoutIPv4 names the NICs of vm that report no IPv4 address.
func nicsWithoutIPv4(vm *api.VM) []string {
	var out []string
	for i, n := range vm.Interfaces {
		has := false
		for _, a := range n.Addresses {
			if ip, err := netip.ParseAddr(a); err == nil && ip.Is4() && !ip.IsLoopback() {
				has = true
			}
		}
		if !has {
			out = append(out, fmt.Sprintf("network_interfaces[%d] (network %s, MAC %s)", i, n.Network, n.MAC))
		}
	}
	return out
}

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// How much of the console a wait_for_ip error quotes: enough to see where
// a boot stopped, little enough that a guest cannot flood the terminal.
const (
	consoleQuoteLines  = 20
	consoleQuoteBytes  = 4 << 10
	consoleQuotePrefix = "console| "
)

// quoteConsole is the end of a console tail as an error quotes it. The
// guest wrote it, so it is escaped (again: the host already escapes it,
// and escaping twice changes nothing) before it reaches the user's
// terminal, cut to consoleQuoteLines lines and consoleQuoteBytes bytes,
// and every line is prefixed so it cannot pass for provider output.
func quoteConsole(text string) string {
	s := lastLines(api.EscapeTerminal([]byte(text)), consoleQuoteLines)
	if len(s) > consoleQuoteBytes {
		s = s[len(s)-consoleQuoteBytes:]
		for len(s) > 0 && !utf8.RuneStart(s[0]) {
			s = s[1:]
		}
		s = "[...] " + s
	}
	return api.QuoteLines(s, consoleQuotePrefix)
}

func (r *VMResource) Delete(ctx context.Context, req resource.DeleteRequest, resp *resource.DeleteResponse) {
	var prior vmModel
	resp.Diagnostics.Append(req.State.Get(ctx, &prior)...)
	if resp.Diagnostics.HasError() {
		return
	}
	shutdown := time.Duration(vmDefaultShutdownTimeout) * time.Second
	if !prior.ShutdownTimeout.IsNull() && !prior.ShutdownTimeout.IsUnknown() {
		shutdown = time.Duration(prior.ShutdownTimeout.ValueInt64()) * time.Second
	}
	timeout, d := prior.Timeouts.Delete(ctx, vmDeleteTimeout)
	resp.Diagnostics.Append(d...)
	h := lookupHost(r.fleet, prior.Host.ValueString(), &resp.Diagnostics)
	if resp.Diagnostics.HasError() {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, timeout+shutdown)
	defer cancel()
	name := prior.Name.ValueString()
	if err := h.Client.DeleteVM(ctx, name, shutdown); err != nil && !isNotFound(err) {
		addAPIError(&resp.Diagnostics, "Unable to Delete VM", fmt.Sprintf("VM %s on host %s", name, h.Name), err)
	}
}

func (r *VMResource) ImportState(ctx context.Context, req resource.ImportStateRequest, resp *resource.ImportStateResponse) {
	if !importIDFromIdentity(ctx, &req, resp, "host", "name") {
		return
	}
	host, name, err := ParseVMID(req.ID)
	if err == nil {
		err = api.ValidateName("VM", name)
	}
	if err != nil {
		resp.Diagnostics.AddError("Invalid Import ID", err.Error()+` (e.g. terraform import kvm_vm.web host-a/web-1)`)
		return
	}
	resp.Diagnostics.Append(resp.State.SetAttribute(ctx, path.Root("host"), host)...)
	resp.Diagnostics.Append(resp.State.SetAttribute(ctx, path.Root("name"), name)...)
	resp.Diagnostics.Append(resp.State.SetAttribute(ctx, path.Root("migration"), vmDefaultMigration)...)
	resp.Diagnostics.Append(resp.State.SetAttribute(ctx, path.Root("timeouts"), types.ObjectNull(timeoutsAttrTypes))...)
}
