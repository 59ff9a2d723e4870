package kvm

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/terraform-plugin-framework-timeouts/resource/timeouts"
	"github.com/hashicorp/terraform-plugin-framework/attr"
	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/types"
	"github.com/hashicorp/terraform-plugin-framework/types/basetypes"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// Defaults of kvm_vm: the provider's own, and the host's (internal/api).
const (
	vmDefaultShutdownTimeout = 60
	vmDefaultMigration       = api.DefaultMigrationMode
	vmDefaultBus             = api.DefaultBus
	vmDefaultNICModel        = api.DefaultNICModel
	vmDefaultWaitForIP       = 5 * time.Minute
)

// vmModel is the Terraform state of a kvm_vm.
type vmModel struct {
	ID                types.String   `tfsdk:"id"`
	Name              types.String   `tfsdk:"name"`
	Host              types.String   `tfsdk:"host"`
	VCPU              types.Int64    `tfsdk:"vcpu"`
	MemoryMiB         types.Int64    `tfsdk:"memory_mib"`
	MaxMemoryMiB      types.Int64    `tfsdk:"max_memory_mib"`
	CPU               types.Object   `tfsdk:"cpu"`
	Disks             types.List     `tfsdk:"disks"`
	NetworkInterfaces types.List     `tfsdk:"network_interfaces"`
	CloudInit         types.Object   `tfsdk:"cloud_init"`
	Running           types.Bool     `tfsdk:"running"`
	Autostart         types.Bool     `tfsdk:"autostart"`
	Description       types.String   `tfsdk:"description"`
	Tags              types.Map      `tfsdk:"tags"`
	ShutdownTimeout   types.Int64    `tfsdk:"shutdown_timeout"`
	Migration         types.String   `tfsdk:"migration"`
	State             types.String   `tfsdk:"state"`
	GuestAgent        types.Bool     `tfsdk:"guest_agent"`
	WaitForIP         types.Object   `tfsdk:"wait_for_ip"`
	IPv4Address       types.String   `tfsdk:"ipv4_address"`
	Hugepages         types.Bool     `tfsdk:"hugepages"`
	NUMA              types.List     `tfsdk:"numa"`
	PCIDevices        types.List     `tfsdk:"pci_devices"`
	Timeouts          timeouts.Value `tfsdk:"timeouts"`
	vmDevicesModel
	vmFirmwareModel
}

type vmWaitForIPModel struct {
	Timeout types.String `tfsdk:"timeout"`
}

type vmCPUModel struct {
	Mode    types.String `tfsdk:"mode"`
	Sockets types.Int64  `tfsdk:"sockets"`
	Cores   types.Int64  `tfsdk:"cores"`
	Threads types.Int64  `tfsdk:"threads"`
	Pinning types.List   `tfsdk:"pinning"`
	// EmulatorPinning is applied live (vm_memory.go).
	EmulatorPinning types.String `tfsdk:"emulator_pinning"`
}

type vmDiskModel struct {
	DiskID types.String `tfsdk:"disk_id"`
	Bus    types.String `tfsdk:"bus"`
	vmDiskDevicesModel
}

type vmNICModel struct {
	Network     types.String `tfsdk:"network"`
	MAC         types.String `tfsdk:"mac"`
	Model       types.String `tfsdk:"model"`
	IPv4Address types.String `tfsdk:"ipv4_address"`
	Addresses   types.List   `tfsdk:"addresses"`
	vmNICDevicesModel
}

type vmCloudInitModel struct {
	UserData      types.String `tfsdk:"user_data"`
	MetaData      types.String `tfsdk:"meta_data"`
	NetworkConfig types.String `tfsdk:"network_config"`
	// Write-only user data (vm_cloudinit_wo.go).
	UserDataWO        types.String `tfsdk:"user_data_wo"`
	UserDataWOVersion types.Int64  `tfsdk:"user_data_wo_version"`
}

var (
	vmCPUAttrTypes = map[string]attr.Type{
		"mode": types.StringType, "sockets": types.Int64Type, "cores": types.Int64Type, "threads": types.Int64Type,
		"pinning": types.ListType{ElemType: types.StringType}, "emulator_pinning": types.StringType,
	}
	vmDiskAttrTypes = map[string]attr.Type{"disk_id": types.StringType, "bus": types.StringType,
		"cache": types.StringType, "io": types.StringType, "discard": types.StringType}
	vmNICAttrTypes = map[string]attr.Type{"network": types.StringType, "mac": types.StringType, "model": types.StringType,
		"ipv4_address": types.StringType, "addresses": types.ListType{ElemType: types.StringType}, "queues": types.Int64Type}
	vmWaitForIPAttrTypes = map[string]attr.Type{"timeout": types.StringType}
	vmCloudInitAttrTypes = map[string]attr.Type{"user_data": types.StringType, "meta_data": types.StringType, "network_config": types.StringType,
		"user_data_wo": types.StringType, "user_data_wo_version": types.Int64Type}
)

// knownString returns the value of a known, non-null string, else "".
func knownString(v types.String) string {
	if v.IsNull() || v.IsUnknown() {
		return ""
	}
	return v.ValueString()
}

func knownInt64(v types.Int64) int64 {
	if v.IsNull() || v.IsUnknown() {
		return 0
	}
	return v.ValueInt64()
}

// cpuOf, disksOf, nicsOf and cloudInitOf unpack the nested values; a null
// or unknown value gives nil.
func (m *vmModel) cpuOf(ctx context.Context) (*vmCPUModel, diag.Diagnostics) {
	if m.CPU.IsNull() || m.CPU.IsUnknown() {
		return nil, nil
	}
	var c vmCPUModel
	diags := m.CPU.As(ctx, &c, basetypes.ObjectAsOptions{UnhandledUnknownAsEmpty: true})
	return &c, diags
}

func (m *vmModel) disksOf(ctx context.Context) ([]vmDiskModel, diag.Diagnostics) {
	if m.Disks.IsNull() || m.Disks.IsUnknown() {
		return nil, nil
	}
	var out []vmDiskModel
	diags := m.Disks.ElementsAs(ctx, &out, false)
	return out, diags
}

func (m *vmModel) nicsOf(ctx context.Context) ([]vmNICModel, diag.Diagnostics) {
	if m.NetworkInterfaces.IsNull() || m.NetworkInterfaces.IsUnknown() {
		return nil, nil
	}
	var out []vmNICModel
	diags := m.NetworkInterfaces.ElementsAs(ctx, &out, false)
	return out, diags
}

// waitForIPOf returns the wait_for_ip timeout, and false when the VM does
// not wait.
func (m *vmModel) waitForIPOf(ctx context.Context) (time.Duration, bool) {
	if m.WaitForIP.IsNull() || m.WaitForIP.IsUnknown() {
		return 0, false
	}
	var w vmWaitForIPModel
	if d := m.WaitForIP.As(ctx, &w, basetypes.ObjectAsOptions{UnhandledUnknownAsEmpty: true}); d.HasError() {
		return 0, false
	}
	if t, err := time.ParseDuration(knownString(w.Timeout)); err == nil && t > 0 {
		return t, true
	}
	return vmDefaultWaitForIP, true
}

func (m *vmModel) cloudInitOf(ctx context.Context) (*vmCloudInitModel, diag.Diagnostics) {
	if m.CloudInit.IsNull() || m.CloudInit.IsUnknown() {
		return nil, nil
	}
	var c vmCloudInitModel
	diags := m.CloudInit.As(ctx, &c, basetypes.ObjectAsOptions{UnhandledUnknownAsEmpty: true})
	return &c, diags
}

// toAPI builds the full desired spec from a plan. Unknown computed values
// (a MAC libvirt will generate) are left for the host to fill.
func (m *vmModel) toAPI(ctx context.Context) (api.VMSpec, diag.Diagnostics) {
	var diags diag.Diagnostics
	spec := api.VMSpec{
		VCPU:         knownInt64(m.VCPU),
		MemoryMiB:    knownInt64(m.MemoryMiB),
		MaxMemoryMiB: knownInt64(m.MaxMemoryMiB),
		Running:      m.Running.IsNull() || m.Running.IsUnknown() || m.Running.ValueBool(),
		Autostart:    !m.Autostart.IsNull() && !m.Autostart.IsUnknown() && m.Autostart.ValueBool(),
		Description:  knownString(m.Description),
	}
	timeout := int64(vmDefaultShutdownTimeout)
	if !m.ShutdownTimeout.IsNull() && !m.ShutdownTimeout.IsUnknown() {
		timeout = m.ShutdownTimeout.ValueInt64()
	}
	spec.ShutdownTimeoutSec = &timeout

	cpu, d := m.cpuOf(ctx)
	diags.Append(d...)
	if cpu != nil {
		c := &api.CPU{Mode: knownString(cpu.Mode), Sockets: knownInt64(cpu.Sockets), Cores: knownInt64(cpu.Cores), Threads: knownInt64(cpu.Threads),
			EmulatorPinning: knownString(cpu.EmulatorPinning)}
		if !cpu.Pinning.IsNull() && !cpu.Pinning.IsUnknown() {
			diags.Append(cpu.Pinning.ElementsAs(ctx, &c.Pinning, false)...)
		}
		spec.CPU = c
	}

	disks, d := m.disksOf(ctx)
	diags.Append(d...)
	for i, dm := range disks {
		if dm.DiskID.IsUnknown() {
			// Known at apply; until then a disk of unknown identity.
			spec.Disks = append(spec.Disks, api.VMDisk{})
			continue
		}
		_, pool, volume, err := ParseDiskID(knownString(dm.DiskID))
		if err != nil {
			diags.AddError("Invalid Disk ID", fmt.Sprintf("disks[%d]: %s", i, err))
			continue
		}
		bus := knownString(dm.Bus)
		if bus == "" {
			bus = vmDefaultBus
		}
		spec.Disks = append(spec.Disks, api.VMDisk{Pool: pool, Volume: volume, Bus: bus})
	}

	nics, d := m.nicsOf(ctx)
	diags.Append(d...)
	for _, n := range nics {
		model := knownString(n.Model)
		if model == "" {
			model = vmDefaultNICModel
		}
		spec.Interfaces = append(spec.Interfaces, api.VMInterface{Network: knownString(n.Network), MAC: knownString(n.MAC), Model: model,
			IPv4Address: knownString(n.IPv4Address)})
	}
	agent := m.GuestAgent.IsNull() || m.GuestAgent.IsUnknown() || m.GuestAgent.ValueBool()
	spec.GuestAgent = &agent
	m.memoryToAPI(ctx, &spec, &diags)
	diags.Append(m.firmwareToAPI(ctx, &spec)...)

	ci, d := m.cloudInitOf(ctx)
	diags.Append(d...)
	if ci != nil {
		spec.CloudInit = &api.CloudInit{UserData: knownString(ci.UserData), MetaData: knownString(ci.MetaData), NetworkConfig: knownString(ci.NetworkConfig)}
	}

	diags.Append(pciDevicesToAPI(ctx, m.PCIDevices, &spec)...)
	if !m.Tags.IsNull() && !m.Tags.IsUnknown() {
		tags := map[string]string{}
		diags.Append(m.Tags.ElementsAs(ctx, &tags, false)...)
		if len(tags) > 0 {
			spec.Tags = tags
		}
	}
	diags.Append(m.devicesToAPI(ctx, &spec)...)
	return spec, diags
}

// stringOrNull maps the host's "" to null, unless the prior value was an
// explicit "" (so a configured empty string does not flip-flop).
// userDataFromHash reads user_data back: the host returns only its hash, so
// the prior value is kept while the hash matches it. A different hash (the
// seed was changed outside Terraform) reads as a marker that differs from
// any configuration, so the plan shows the drift; no hash is no user data.
func userDataFromHash(hash string, prior types.String) types.String {
	switch {
	case hash == "":
		return stringOrNull("", prior)
	case !prior.IsNull() && !prior.IsUnknown() && api.UserDataHash(prior.ValueString()) == hash:
		return prior
	}
	return types.StringValue(userDataDriftMarker + hash)
}

// userDataDriftMarker prefixes the hash of user data that Terraform did not
// write (after an import, or a change outside Terraform).
const userDataDriftMarker = "(user data not known to Terraform) sha256:"

func stringOrNull(v string, prior types.String) types.String {
	if v == "" {
		if !prior.IsNull() && !prior.IsUnknown() && prior.ValueString() == "" {
			return prior
		}
		return types.StringNull()
	}
	return types.StringValue(v)
}

func int64OrNull(v int64) types.Int64 {
	if v == 0 {
		return types.Int64Null()
	}
	return types.Int64Value(v)
}

// isEmptyKnown reports whether a list or map is known and empty (as
// opposed to null): `disks = []` must stay [] after a read.
func isEmptyKnownList(v types.List) bool {
	return !v.IsNull() && !v.IsUnknown() && len(v.Elements()) == 0
}
func isEmptyKnownMap(v types.Map) bool {
	return !v.IsNull() && !v.IsUnknown() && len(v.Elements()) == 0
}

// fromAPI returns the state for vm, using prior (the plan after a create
// or update, the state on a read) only to keep provider-side attributes and
// the user's spelling of equivalent values.
func vmFromAPI(ctx context.Context, prior vmModel, host string, vm *api.VM) (vmModel, diag.Diagnostics) {
	var diags diag.Diagnostics
	m := vmModel{
		ID:           types.StringValue(vm.UUID),
		Name:         types.StringValue(vm.Name),
		Host:         types.StringValue(host),
		VCPU:         types.Int64Value(vm.VCPU),
		MemoryMiB:    types.Int64Value(vm.MemoryMiB),
		MaxMemoryMiB: types.Int64Value(max(vm.MaxMemoryMiB, vm.MemoryMiB)),
		Running:      types.BoolValue(vm.Running),
		Autostart:    types.BoolValue(vm.Autostart),
		Description:  stringOrNull(vm.Description, prior.Description),
		State:        types.StringValue(vm.State),
		Migration:    prior.Migration,
		Timeouts:     prior.Timeouts,
		GuestAgent:   types.BoolValue(vm.GuestAgentEnabled()),
		WaitForIP:    prior.WaitForIP,
		IPv4Address:  stringOrNull(vm.IPv4Address, types.StringNull()),
	}
	var d diag.Diagnostics
	m.vmFirmwareModel, d = firmwareFromAPI(ctx, vm)
	diags.Append(d...)
	if m.WaitForIP.IsNull() || m.WaitForIP.IsUnknown() {
		m.WaitForIP = types.ObjectNull(vmWaitForIPAttrTypes)
	}
	if m.Migration.IsNull() || m.Migration.IsUnknown() {
		m.Migration = types.StringValue(vmDefaultMigration)
	}
	switch {
	case vm.ShutdownTimeoutSec != nil:
		m.ShutdownTimeout = types.Int64Value(*vm.ShutdownTimeoutSec)
	case !prior.ShutdownTimeout.IsNull() && !prior.ShutdownTimeout.IsUnknown():
		m.ShutdownTimeout = prior.ShutdownTimeout
	default:
		m.ShutdownTimeout = types.Int64Value(vmDefaultShutdownTimeout)
	}
	if m.Timeouts.Object.IsNull() || m.Timeouts.Object.IsUnknown() {
		m.Timeouts = timeouts.Value{Object: types.ObjectNull(timeoutsAttrTypes)}
	}

	// cpu
	m.CPU = types.ObjectNull(vmCPUAttrTypes)
	if c := vm.CPU; c != nil && (c.Mode != "" || c.Sockets > 0 || c.Cores > 0 || c.Threads > 0 || len(c.Pinning) > 0 || c.EmulatorPinning != "") {
		pinning := types.ListNull(types.StringType)
		if len(c.Pinning) > 0 {
			var d diag.Diagnostics
			pinning, d = types.ListValueFrom(ctx, types.StringType, c.Pinning)
			diags.Append(d...)
		}
		var priorMode, priorEmu types.String
		if pc, _ := prior.cpuOf(ctx); pc != nil {
			priorMode, priorEmu = pc.Mode, pc.EmulatorPinning
		}
		obj, d := types.ObjectValueFrom(ctx, vmCPUAttrTypes, vmCPUModel{
			Mode: stringOrNull(c.Mode, priorMode), Sockets: int64OrNull(c.Sockets), Cores: int64OrNull(c.Cores),
			Threads: int64OrNull(c.Threads), Pinning: pinning, EmulatorPinning: stringOrNull(c.EmulatorPinning, priorEmu),
		})
		diags.Append(d...)
		m.CPU = obj
	}

	memoryFromAPI(ctx, prior, vm, &m, &diags)

	// disks
	diskType := types.ObjectType{AttrTypes: vmDiskAttrTypes}
	if len(vm.Disks) == 0 && !isEmptyKnownList(prior.Disks) {
		m.Disks = types.ListNull(diskType)
	} else {
		disks := make([]vmDiskModel, 0, len(vm.Disks))
		for _, d := range vm.Disks {
			bus := d.Bus
			if bus == "" {
				bus = vmDefaultBus
			}
			disks = append(disks, vmDiskModel{DiskID: types.StringValue(DiskID(host, d.Pool, d.Volume)), Bus: types.StringValue(bus)})
		}
		l, d := types.ListValueFrom(ctx, diskType, disks)
		diags.Append(d...)
		m.Disks = l
	}

	// network_interfaces
	nicType := types.ObjectType{AttrTypes: vmNICAttrTypes}
	if len(vm.Interfaces) == 0 && !isEmptyKnownList(prior.NetworkInterfaces) {
		m.NetworkInterfaces = types.ListNull(nicType)
	} else {
		priorNICs, _ := prior.nicsOf(ctx)
		nics := make([]vmNICModel, 0, len(vm.Interfaces))
		for i, n := range vm.Interfaces {
			mac := types.StringValue(n.MAC)
			if n.MAC == "" {
				mac = types.StringNull()
			}
			// Keep the user's spelling of the same MAC (upper case).
			if i < len(priorNICs) && strings.EqualFold(knownString(priorNICs[i].MAC), n.MAC) && n.MAC != "" {
				mac = priorNICs[i].MAC
			}
			model := n.Model
			if model == "" {
				model = vmDefaultNICModel
			}
			var priorIP types.String
			if i < len(priorNICs) {
				priorIP = priorNICs[i].IPv4Address
			}
			addrs := n.Addresses
			if addrs == nil {
				addrs = []string{}
			}
			al, d := types.ListValueFrom(ctx, types.StringType, addrs)
			diags.Append(d...)
			nics = append(nics, vmNICModel{Network: types.StringValue(n.Network), MAC: mac, Model: types.StringValue(model),
				IPv4Address: stringOrNull(n.IPv4Address, priorIP), Addresses: al})
		}
		l, d := types.ListValueFrom(ctx, nicType, nics)
		diags.Append(d...)
		m.NetworkInterfaces = l
	}

	// cloud_init
	m.CloudInit = types.ObjectNull(vmCloudInitAttrTypes)
	if ci := vm.CloudInit; ci != nil {
		var p vmCloudInitModel
		if pc, _ := prior.cloudInitOf(ctx); pc != nil {
			p = *pc
		}
		obj, d := types.ObjectValueFrom(ctx, vmCloudInitAttrTypes, vmCloudInitModel{
			UserData:          userDataReadBack(ci.UserDataSHA256, p),
			MetaData:          stringOrNull(ci.MetaData, p.MetaData),
			NetworkConfig:     stringOrNull(ci.NetworkConfig, p.NetworkConfig),
			UserDataWO:        types.StringNull(),
			UserDataWOVersion: int64OrNullValue(p.UserDataWOVersion),
		})
		diags.Append(d...)
		m.CloudInit = obj
	}

	pci, d := pciDevicesFromAPI(ctx, prior.PCIDevices, vm.PCIDevices)
	diags.Append(d...)
	m.PCIDevices = pci

	// tags
	if len(vm.Tags) == 0 && !isEmptyKnownMap(prior.Tags) {
		m.Tags = types.MapNull(types.StringType)
	} else {
		tags := vm.Tags
		if tags == nil {
			tags = map[string]string{}
		}
		t, d := types.MapValueFrom(ctx, types.StringType, tags)
		diags.Append(d...)
		m.Tags = t
	}
	diags.Append(m.devicesFromAPI(ctx, prior, vm)...)
	return m, diags
}

// timeoutsAttrTypes is the object type of the timeouts block.
var timeoutsAttrTypes = map[string]attr.Type{
	"create": types.StringType, "read": types.StringType, "update": types.StringType, "delete": types.StringType,
}
