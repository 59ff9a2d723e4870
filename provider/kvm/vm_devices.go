package kvm

import (
	"context"
	"net"
	"strconv"

	"github.com/hashicorp/terraform-plugin-framework-validators/int64validator"
	"github.com/hashicorp/terraform-plugin-framework-validators/stringvalidator"
	"github.com/hashicorp/terraform-plugin-framework/attr"
	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/booldefault"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/int64default"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/stringdefault"
	"github.com/hashicorp/terraform-plugin-framework/schema/validator"
	"github.com/hashicorp/terraform-plugin-framework/tfsdk"
	"github.com/hashicorp/terraform-plugin-framework/types"
	"github.com/hashicorp/terraform-plugin-framework/types/basetypes"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// kvm_vm's devices: the graphical console, the virtio-rng, per-disk
// cache/io/discard and NIC multiqueue. Each is fixed when QEMU starts, so
// a change is one planned restart (api.HardwareChanges), never a re-create.

// vmDevicesModel is embedded in vmModel.
type vmDevicesModel struct {
	Graphics types.Object `tfsdk:"graphics"`
	RNG      types.Bool   `tfsdk:"rng"`
}

// vmDiskDevicesModel is embedded in vmDiskModel.
type vmDiskDevicesModel struct {
	Cache   types.String `tfsdk:"cache"`
	IO      types.String `tfsdk:"io"`
	Discard types.String `tfsdk:"discard"`
}

// vmNICDevicesModel is embedded in vmNICModel.
type vmNICDevicesModel struct {
	Queues types.Int64 `tfsdk:"queues"`
}

type vmGraphicsModel struct {
	Type              types.String `tfsdk:"type"`
	Listen            types.String `tfsdk:"listen"`
	PasswordWO        types.String `tfsdk:"password_wo"`
	PasswordWOVersion types.Int64  `tfsdk:"password_wo_version"`
	Port              types.Int64  `tfsdk:"port"`
	Address           types.String `tfsdk:"address"`
}

const (
	vmDefaultDiskCache   = api.DefaultDiskCache
	vmDefaultDiskDiscard = api.DefaultDiskDiscard
)

var vmGraphicsAttrTypes = map[string]attr.Type{
	"type": types.StringType, "listen": types.StringType, "password_wo": types.StringType,
	"password_wo_version": types.Int64Type, "port": types.Int64Type, "address": types.StringType,
}

// addDeviceAttributes puts the device attributes into kvm_vm's schema.
func addDeviceAttributes(attrs map[string]schema.Attribute) {
	attrs["graphics"] = schema.SingleNestedAttribute{
		MarkdownDescription: "A graphical console (VNC or SPICE) with a video device; none by default (the serial console " +
			"is always there). Its port is picked by libvirt when the VM starts (`port`, `address`). Adding, removing or " +
			"changing it (`type`, `listen`) restarts a running VM once; a new password (`password_wo_version`) is applied " +
			"live.",
		Optional: true,
		Attributes: map[string]schema.Attribute{
			"type": schema.StringAttribute{
				MarkdownDescription: "`vnc` or `spice`.",
				Required:            true,
				Validators:          []validator.String{stringvalidator.OneOf(api.GraphicsTypes...)},
			},
			"listen": schema.StringAttribute{
				MarkdownDescription: "IP address the console listens on. Default `" + api.DefaultGraphicsListen + "`: only the " +
					"host itself (reach it through an SSH tunnel). `0.0.0.0` exposes it on every host address: set a password.",
				Optional: true, Computed: true,
				Default:    stringdefault.StaticString(api.DefaultGraphicsListen),
				Validators: []validator.String{stringCheck{summary: "Invalid Listen Address", desc: "must be an IP address", check: api.CheckGraphicsListen}},
			},
			"password_wo": schema.StringAttribute{
				MarkdownDescription: "Console password, write-only (Terraform ≥ 1.11): sent to the host on create and on every " +
					"update, never stored in state or plan, and never returned by the host (libvirt keeps it only in the domain's " +
					"secure XML). At most 8 characters for VNC (the protocol uses no more). Unset: no password. Change " +
					"`password_wo_version` to apply a new one; that is done live, without a restart.",
				Optional: true, WriteOnly: true, Sensitive: true,
				Validators: []validator.String{stringvalidator.AlsoRequires(path.MatchRelative().AtParent().AtName("password_wo_version"))},
			},
			"password_wo_version": schema.Int64Attribute{
				MarkdownDescription: "Any number; changing it applies the current `password_wo` (live, no restart).",
				Optional:            true,
			},
			"port": schema.Int64Attribute{
				MarkdownDescription: "TCP port of the running console, read from the live domain; `-1` while the VM is not " +
					"running (or where the host assigns none, as on the embedded test driver).",
				Computed: true,
			},
			"address": schema.StringAttribute{
				MarkdownDescription: "`listen:port` of the running console (e.g. `127.0.0.1:5900`, `[::1]:5900`); null while `port` is `-1`.",
				Computed:            true,
			},
		},
	}
	attrs["rng"] = schema.BoolAttribute{
		MarkdownDescription: "Whether the VM gets a virtio-rng device fed by the host's `/dev/urandom` (`/dev/hwrng` in the guest), " +
			"so it has entropy early in boot. Default `true`. Changing it restarts a running VM. VMs created by provider versions " +
			"without it have no such device and read back `false`, so the first plan after an upgrade adds it (one restart).",
		Optional: true, Computed: true,
		Default: booldefault.StaticBool(true),
	}

	disk := attrs["disks"].(schema.ListNestedAttribute).NestedObject.Attributes
	disk["cache"] = schema.StringAttribute{
		MarkdownDescription: "Host cache mode: `none` (default: O_DIRECT, the guest's flushes reach the disk; the pool's file " +
			"system must support O_DIRECT, tmpfs does not), `writeback`, `directsync` or `unsafe` (ignores flushes: scratch " +
			"disks only). Disks of VMs created by provider versions without it run QEMU's default and read back `writeback`, so " +
			"the first plan after an upgrade changes them to `none` (one restart). Changing it restarts a running VM.",
		Optional: true, Computed: true,
		Default:    stringdefault.StaticString(vmDefaultDiskCache),
		Validators: []validator.String{stringvalidator.OneOf(api.DiskCaches...)},
	}
	disk["io"] = schema.StringAttribute{
		MarkdownDescription: "QEMU's I/O mode: `threads`, `native` (Linux AIO; needs `cache` `none` or `directsync`) or " +
			"`io_uring` (refused by a host whose QEMU or kernel cannot use it). Unset: QEMU's default (`threads`). Changing it " +
			"restarts a running VM.",
		Optional:   true,
		Validators: []validator.String{stringvalidator.OneOf(api.DiskIOModes...)},
	}
	disk["discard"] = schema.StringAttribute{
		MarkdownDescription: "What the guest's TRIM/UNMAP (`fstrim`, `discard` mounts) does: `unmap` (default) frees the blocks " +
			"in the volume, so a qcow2 volume shrinks on the host; `ignore` drops them. The guest sees discard support on " +
			"virtio, scsi and sata. Disks of VMs created by provider versions without it read back what they had (`unmap` for " +
			"qcow2 volumes, `ignore` for others, which the first plan after an upgrade changes to `unmap`: one restart). " +
			"Changing it restarts a running VM.",
		Optional: true, Computed: true,
		Default:    stringdefault.StaticString(vmDefaultDiskDiscard),
		Validators: []validator.String{stringvalidator.OneOf(api.DiskDiscards...)},
	}

	nic := attrs["network_interfaces"].(schema.ListNestedAttribute).NestedObject.Attributes
	nic["queues"] = schema.Int64Attribute{
		MarkdownDescription: "virtio-net queue pairs (multiqueue), 1 to `vcpu`; more than 1 needs `model = \"virtio\"`. The " +
			"guest spreads its traffic over them (Linux enables them all by itself). Default `1`. Changing it restarts a " +
			"running VM.",
		Optional: true, Computed: true,
		Default:    int64default.StaticInt64(1),
		Validators: []validator.Int64{int64validator.Between(1, api.MaxVCPU)},
	}
}

func (m *vmModel) graphicsOf(ctx context.Context) (*vmGraphicsModel, diag.Diagnostics) {
	if m.Graphics.IsNull() || m.Graphics.IsUnknown() {
		return nil, nil
	}
	var g vmGraphicsModel
	diags := m.Graphics.As(ctx, &g, basetypes.ObjectAsOptions{UnhandledUnknownAsEmpty: true})
	return &g, diags
}

// devicesToAPI adds the device attributes of a plan to spec, which toAPI
// built from the same plan (its disks and interfaces in the same order).
func (m *vmModel) devicesToAPI(ctx context.Context, spec *api.VMSpec) diag.Diagnostics {
	var diags diag.Diagnostics
	rng := m.RNG.IsNull() || m.RNG.IsUnknown() || m.RNG.ValueBool()
	spec.RNG = &rng
	g, d := m.graphicsOf(ctx)
	diags.Append(d...)
	if g != nil {
		spec.Graphics = &api.Graphics{Type: knownString(g.Type), Listen: knownString(g.Listen)}
		if spec.Graphics.Listen == "" {
			spec.Graphics.Listen = api.DefaultGraphicsListen
		}
	}
	disks, d := m.disksOf(ctx)
	diags.Append(d...)
	if len(disks) == len(spec.Disks) {
		for i, dm := range disks {
			spec.Disks[i].Cache = orDefaultString(knownString(dm.Cache), vmDefaultDiskCache)
			spec.Disks[i].IO = knownString(dm.IO)
			spec.Disks[i].Discard = orDefaultString(knownString(dm.Discard), vmDefaultDiskDiscard)
		}
	}
	nics, d := m.nicsOf(ctx)
	diags.Append(d...)
	if len(nics) == len(spec.Interfaces) {
		for i, n := range nics {
			if q := knownInt64(n.Queues); q > 1 {
				spec.Interfaces[i].Queues = q
			}
		}
	}
	return diags
}

func orDefaultString(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

// graphicsPasswordFromConfig puts the write-only console password, which
// only the configuration carries (never plan or state), into spec.
func graphicsPasswordFromConfig(ctx context.Context, config tfsdk.Config, spec *api.VMSpec) diag.Diagnostics {
	if spec.Graphics == nil {
		return nil
	}
	var pw types.String
	diags := config.GetAttribute(ctx, path.Root("graphics").AtName("password_wo"), &pw)
	spec.Graphics.Password = knownString(pw)
	return diags
}

// devicesFromAPI sets the device attributes of state m from vm; m's
// disks and interfaces were just built from the same vm, in its order.
func (m *vmModel) devicesFromAPI(ctx context.Context, prior vmModel, vm *api.VM) diag.Diagnostics {
	var diags diag.Diagnostics
	m.RNG = types.BoolValue(vm.RNGEnabled())
	m.Graphics = types.ObjectNull(vmGraphicsAttrTypes)
	if g := vm.Graphics; g != nil {
		version := types.Int64Null()
		if pg, _ := prior.graphicsOf(ctx); pg != nil {
			version = pg.PasswordWOVersion
		}
		port := g.Port
		if port <= 0 {
			port = -1
		}
		address := types.StringNull()
		if port > 0 {
			address = types.StringValue(net.JoinHostPort(g.Listen, strconv.FormatInt(port, 10)))
		}
		obj, d := types.ObjectValueFrom(ctx, vmGraphicsAttrTypes, vmGraphicsModel{
			Type: types.StringValue(g.Type), Listen: types.StringValue(orDefaultString(g.Listen, api.DefaultGraphicsListen)),
			PasswordWO: types.StringNull(), PasswordWOVersion: version, Port: types.Int64Value(port), Address: address,
		})
		diags.Append(d...)
		m.Graphics = obj
	}

	if disks, d := m.disksOf(ctx); len(disks) == len(vm.Disks) && len(disks) > 0 {
		diags.Append(d...)
		for i, vd := range vm.Disks {
			disks[i].Cache = types.StringValue(orDefaultString(vd.Cache, vmDefaultDiskCache))
			disks[i].IO = stringOrNull(vd.IO, types.StringNull())
			disks[i].Discard = types.StringValue(orDefaultString(vd.Discard, vmDefaultDiskDiscard))
		}
		l, d := types.ListValueFrom(ctx, types.ObjectType{AttrTypes: vmDiskAttrTypes}, disks)
		diags.Append(d...)
		m.Disks = l
	}
	if nics, d := m.nicsOf(ctx); len(nics) == len(vm.Interfaces) && len(nics) > 0 {
		diags.Append(d...)
		for i, n := range vm.Interfaces {
			nics[i].Queues = types.Int64Value(max(n.Queues, 1))
		}
		l, d := types.ListValueFrom(ctx, types.ObjectType{AttrTypes: vmNICAttrTypes}, nics)
		diags.Append(d...)
		m.NetworkInterfaces = l
	}
	return diags
}

// validateDevices checks at plan time what the host would refuse: io =
// native without O_DIRECT, more queues than vCPUs or on a NIC without
// multiqueue, a VNC password longer than the protocol uses.
func validateDevices(ctx context.Context, cfg vmModel, diags *diag.Diagnostics) {
	disks, d := cfg.disksOf(ctx)
	diags.Append(d...)
	for i, dm := range disks {
		if dm.IO.IsUnknown() || dm.Cache.IsUnknown() {
			continue
		}
		if err := api.CheckDiskIO(orDefaultString(knownString(dm.Cache), vmDefaultDiskCache), knownString(dm.IO)); err != nil {
			diags.AddAttributeError(path.Root("disks").AtListIndex(i).AtName("io"), "Invalid Disk I/O Mode", err.Error()+".")
		}
	}
	nics, d := cfg.nicsOf(ctx)
	diags.Append(d...)
	for i, n := range nics {
		if n.Queues.IsNull() || n.Queues.IsUnknown() || n.Model.IsUnknown() || cfg.VCPU.IsUnknown() {
			continue
		}
		if err := api.CheckQueues(n.Queues.ValueInt64(), knownInt64(cfg.VCPU), orDefaultString(knownString(n.Model), vmDefaultNICModel)); err != nil {
			diags.AddAttributeError(path.Root("network_interfaces").AtListIndex(i).AtName("queues"), "Invalid NIC Queues", err.Error()+".")
		}
	}
	g, d := cfg.graphicsOf(ctx)
	diags.Append(d...)
	if g != nil && !g.Type.IsUnknown() && !g.PasswordWO.IsNull() && !g.PasswordWO.IsUnknown() {
		if err := api.CheckGraphicsPassword(g.Type.ValueString(), g.PasswordWO.ValueString()); err != nil {
			diags.AddAttributeError(path.Root("graphics").AtName("password_wo"), "Invalid Console Password", err.Error()+".")
		}
	}
}

// keepGraphicsAddress keeps the console's port and address in a plan that
// neither restarts, starts, stops nor moves the VM: they stay what they
// are, instead of showing as known after apply.
func keepGraphicsAddress(ctx context.Context, state *vmModel, plan *vmModel, diags *diag.Diagnostics) {
	if state == nil {
		return
	}
	pg, _ := plan.graphicsOf(ctx)
	sg, _ := state.graphicsOf(ctx)
	if pg == nil || sg == nil || !pg.Port.IsUnknown() || !pg.Type.Equal(sg.Type) || !pg.Listen.Equal(sg.Listen) {
		return
	}
	if !plan.Running.Equal(state.Running) || !plan.Host.Equal(state.Host) || len(vmRestartAttributes(ctx, *state, *plan)) > 0 {
		return
	}
	pg.Port, pg.Address = sg.Port, sg.Address
	obj, d := types.ObjectValueFrom(ctx, vmGraphicsAttrTypes, pg)
	diags.Append(d...)
	plan.Graphics = obj
}
