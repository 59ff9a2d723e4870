package kvm

import (
	"context"

	"github.com/hashicorp/terraform-plugin-framework/attr"
	"github.com/hashicorp/terraform-plugin-framework/datasource/schema"
	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/types"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// hostModel is the inventory of one host, shared by kvm_host and kvm_hosts.
type hostModel struct {
	Name               types.String  `tfsdk:"name"`
	CPUs               types.Int64   `tfsdk:"cpus"`
	MemoryMiB          types.Int64   `tfsdk:"memory_mib"`
	FreeMemoryMiB      types.Int64   `tfsdk:"free_memory_mib"`
	AllocatedVCPU      types.Int64   `tfsdk:"allocated_vcpu"`
	AllocatedMemoryMiB types.Int64   `tfsdk:"allocated_memory_mib"`
	CPUOvercommit      types.Float64 `tfsdk:"cpu_overcommit"`
	MemoryOvercommit   types.Float64 `tfsdk:"memory_overcommit"`
	Labels             types.Map     `tfsdk:"labels"`
	TunnelIP           types.String  `tfsdk:"tunnel_ip"`
	VMCount            types.Int64   `tfsdk:"vm_count"`
	Version            types.String  `tfsdk:"version"`
	Healthy            types.Bool    `tfsdk:"healthy"`
	DomainType         types.String  `tfsdk:"domain_type"`
	CPUMode            types.String  `tfsdk:"cpu_mode"`
	Hugepages          types.Object  `tfsdk:"hugepages"`
	PCIDevices         types.List    `tfsdk:"pci_devices"`
	Keys               types.List    `tfsdk:"keys"`
	Pools              types.List    `tfsdk:"pools"`
	Maintenance        types.Bool    `tfsdk:"maintenance"`
}

func hostModelFromAPI(ctx context.Context, h api.Host) (hostModel, diag.Diagnostics) {
	labels, diags := types.MapValueFrom(ctx, types.StringType, nonNilMap(h.Labels))
	pci, d := hostPCIDevicesFromAPI(ctx, h.PCIDevices)
	diags.Append(d...)
	pools, d := hostPoolsFromAPI(ctx, h.Pools)
	diags.Append(d...)
	return hostModel{
		Name:               types.StringValue(h.Name),
		CPUs:               types.Int64Value(h.CPUs),
		MemoryMiB:          types.Int64Value(h.MemoryMiB),
		FreeMemoryMiB:      types.Int64Value(h.FreeMemoryMiB),
		AllocatedVCPU:      types.Int64Value(h.AllocatedVCPU),
		AllocatedMemoryMiB: types.Int64Value(h.AllocatedMemoryMiB),
		CPUOvercommit:      types.Float64Value(h.CPUOvercommit),
		MemoryOvercommit:   types.Float64Value(h.MemoryOvercommit),
		Labels:             labels,
		TunnelIP:           types.StringValue(h.TunnelIP),
		VMCount:            types.Int64Value(h.VMCount),
		Version:            types.StringValue(h.Version),
		Healthy:            types.BoolValue(h.Healthy),
		DomainType:         types.StringValue(h.DomainType),
		CPUMode:            types.StringValue(h.CPUMode),
		Hugepages:          hostHugepagesValue(h.Hugepages),
		PCIDevices:         pci,
		Keys:               hostKeysValue(h.Keys),
		Pools:              pools,
		Maintenance:        types.BoolValue(h.Maintenance),
	}, diags
}

func nonNilMap(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

// hostAttrTypes is the object type of one element of kvm_hosts.hosts.
var hostAttrTypes = map[string]attr.Type{
	"name": types.StringType, "cpus": types.Int64Type, "memory_mib": types.Int64Type,
	"free_memory_mib": types.Int64Type, "allocated_vcpu": types.Int64Type,
	"allocated_memory_mib": types.Int64Type, "cpu_overcommit": types.Float64Type,
	"memory_overcommit": types.Float64Type, "labels": types.MapType{ElemType: types.StringType},
	"tunnel_ip": types.StringType, "vm_count": types.Int64Type, "version": types.StringType,
	"healthy": types.BoolType, "domain_type": types.StringType, "cpu_mode": types.StringType,
	"hugepages":   types.ObjectType{AttrTypes: hostHugepagesAttrTypes},
	"pci_devices": types.ListType{ElemType: types.ObjectType{AttrTypes: hostPCIAttrTypes}},
	"keys":        types.ListType{ElemType: types.StringType},
	"pools":       types.ListType{ElemType: types.ObjectType{AttrTypes: hostPoolAttrTypes}},
	"maintenance": types.BoolType,
}

// hostComputedAttributes describes the inventory attributes; name is added
// by each data source (an argument of kvm_host, computed in kvm_hosts).
func hostComputedAttributes() map[string]schema.Attribute {
	return map[string]schema.Attribute{
		"hugepages":            hostHugepagesAttribute(),
		"cpus":                 schema.Int64Attribute{Computed: true, MarkdownDescription: "Host CPUs (threads) as libvirt reports them."},
		"memory_mib":           schema.Int64Attribute{Computed: true, MarkdownDescription: "Host memory in MiB."},
		"free_memory_mib":      schema.Int64Attribute{Computed: true, MarkdownDescription: "Free host memory in MiB."},
		"allocated_vcpu":       schema.Int64Attribute{Computed: true, MarkdownDescription: "vCPUs allocated to the host's VMs."},
		"allocated_memory_mib": schema.Int64Attribute{Computed: true, MarkdownDescription: "Memory in MiB allocated to the host's VMs (their maximum memory)."},
		"cpu_overcommit":       schema.Float64Attribute{Computed: true, MarkdownDescription: "vCPUs the host admits per CPU."},
		"memory_overcommit":    schema.Float64Attribute{Computed: true, MarkdownDescription: "Memory the host admits per MiB it has."},
		"labels":               schema.MapAttribute{Computed: true, ElementType: types.StringType, MarkdownDescription: "Host labels (from kvm-hostd `--labels`, merged with the provider's host `labels`)."},
		"tunnel_ip":            schema.StringAttribute{Computed: true, MarkdownDescription: "Underlay IP used for overlay network tunnels."},
		"vm_count":             schema.Int64Attribute{Computed: true, MarkdownDescription: "VMs defined on the host."},
		"version":              schema.StringAttribute{Computed: true, MarkdownDescription: "kvm-hostd version."},
		"healthy":              schema.BoolAttribute{Computed: true, MarkdownDescription: "Whether the host answered and its libvirt and Open vSwitch are reachable. A host that is down reads as `false` instead of failing the plan."},
		"domain_type": schema.StringAttribute{Computed: true, MarkdownDescription: "How the host runs guests, as kvm-hostd's startup probe found by booting a tiny guest: " +
			"`kvm`, or `qemu` (TCG) where KVM is missing, not usable by QEMU, does not run the guest, or runs it slower than TCG. " +
			"`test` on the embedded default (libvirt's test driver, which runs no guests); empty when the host is down."},
		"cpu_mode": schema.StringAttribute{Computed: true, MarkdownDescription: "CPU mode the host gives VMs that set no `cpu.mode`, as its startup probe found working: " +
			"`host-passthrough`, or `qemu64` (no CPU model given to QEMU: its default, which runs everywhere). Empty on the embedded default and when the host is down."},
		"pci_devices": hostPCIDevicesAttribute(),
		"keys":        hostKeysAttribute(),
		"pools":       hostPoolsAttribute(),
		"maintenance": schema.BoolAttribute{Computed: true, MarkdownDescription: "Whether the host is in maintenance (`kvm-hostd --maintenance` or " +
			"`PUT /v1/host/maintenance`): it admits no new VMs, arriving migrations included, and `kvm_cluster_placement` moves every key off it " +
			"at the next plan. `false` when the host is down."},
	}
}
