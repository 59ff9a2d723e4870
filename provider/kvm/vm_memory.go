package kvm

import (
	"context"

	"github.com/hashicorp/terraform-plugin-framework-validators/int64validator"
	"github.com/hashicorp/terraform-plugin-framework-validators/listvalidator"
	"github.com/hashicorp/terraform-plugin-framework/attr"
	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/booldefault"
	"github.com/hashicorp/terraform-plugin-framework/schema/validator"
	"github.com/hashicorp/terraform-plugin-framework/types"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// vmNUMACellModel is one element of kvm_vm.numa.
type vmNUMACellModel struct {
	CPUs      types.String `tfsdk:"cpus"`
	MemoryMiB types.Int64  `tfsdk:"memory_mib"`
	HostNodes types.String `tfsdk:"host_nodes"`
}

var vmNUMACellAttrTypes = map[string]attr.Type{"cpus": types.StringType, "memory_mib": types.Int64Type, "host_nodes": types.StringType}

// vmMemoryAttributes are kvm_vm's memory-layout attributes: huge pages and
// guest NUMA cells (emulator pinning is cpu.emulator_pinning).
func vmMemoryAttributes() map[string]schema.Attribute {
	return map[string]schema.Attribute{
		"hugepages": schema.BoolAttribute{
			MarkdownDescription: "Back the guest's memory with the host's huge pages of its default size (`<memoryBacking><hugepages/>`; " +
				"`kvm_host.hugepages` shows the size and how many are free). The whole guest memory (`max_memory_mib`) is taken " +
				"from huge pages when the VM starts and the balloon cannot return them, so the memory (and each `numa` cell's) " +
				"must be a multiple of the page size. The host refuses a VM its free huge pages cannot hold (huge pages are reserved " +
				"by the host's operator, `vm.nr_hugepages`), counting those that stopped hugepage VMs on it will need. " +
				"Default `false`. Changing it restarts a running VM.",
			Optional: true, Computed: true,
			Default: booldefault.StaticBool(false),
		},
		"numa": schema.ListNestedAttribute{
			MarkdownDescription: "Guest NUMA nodes, in order (node 0 first). The cells' `cpus` must be disjoint and together name " +
				"every vCPU `0`..`vcpu-1`, and their `memory_mib` must add up to `memory_mib` (`max_memory_mib`, if set, must equal it: " +
				"the cells fix the guest's memory). With `cpu` topology, keep a socket's vCPUs in one cell. Unset: one node. " +
				"Changing it restarts a running VM.",
			Optional:   true,
			Validators: []validator.List{listvalidator.SizeAtLeast(1)},
			NestedObject: schema.NestedAttributeObject{Attributes: map[string]schema.Attribute{
				"cpus": schema.StringAttribute{
					MarkdownDescription: "The guest vCPUs of this node, e.g. `\"0-1\"` or `\"0,2\"`.",
					Required:            true,
					Validators:          []validator.String{guestCPUSet()},
				},
				"memory_mib": schema.Int64Attribute{
					MarkdownDescription: "This node's memory in MiB.",
					Required:            true,
					Validators:          []validator.Int64{int64validator.AtLeast(1)},
				},
				"host_nodes": schema.StringAttribute{
					MarkdownDescription: "Host NUMA nodes this node's memory comes from, strictly (`<numatune><memnode mode='strict'>`), " +
						"e.g. `\"0\"`; they must exist on the VM's host. Unset: not bound.",
					Optional:   true,
					Validators: []validator.String{nodeSet()},
				},
			}},
		},
	}
}

// emulatorPinningAttribute is cpu.emulator_pinning.
func emulatorPinningAttribute() schema.StringAttribute {
	return schema.StringAttribute{
		MarkdownDescription: "Host-CPU set of QEMU's emulator threads (`<cputune><emulatorpin>`), e.g. `\"0\"`, keeping the " +
			"host-side work of the VM off the CPUs its vCPUs are pinned to. Must name CPUs the host has. Unset: not pinned. " +
			"Changed live, without a restart.",
		Optional:   true,
		Validators: []validator.String{cpuSet()},
	}
}

func (m *vmModel) numaOf(ctx context.Context) ([]vmNUMACellModel, diag.Diagnostics) {
	if m.NUMA.IsNull() || m.NUMA.IsUnknown() {
		return nil, nil
	}
	var out []vmNUMACellModel
	diags := m.NUMA.ElementsAs(ctx, &out, false)
	return out, diags
}

// memoryToAPI adds hugepages and numa to spec.
func (m *vmModel) memoryToAPI(ctx context.Context, spec *api.VMSpec, diags *diag.Diagnostics) {
	spec.Hugepages = !m.Hugepages.IsNull() && !m.Hugepages.IsUnknown() && m.Hugepages.ValueBool()
	cells, d := m.numaOf(ctx)
	diags.Append(d...)
	for _, c := range cells {
		spec.NUMA = append(spec.NUMA, api.NUMACell{CPUs: knownString(c.CPUs), MemoryMiB: knownInt64(c.MemoryMiB), HostNodes: knownString(c.HostNodes)})
	}
}

// memoryFromAPI reads hugepages and numa back into m.
func memoryFromAPI(ctx context.Context, prior vmModel, vm *api.VM, m *vmModel, diags *diag.Diagnostics) {
	m.Hugepages = types.BoolValue(vm.Hugepages)
	cellType := types.ObjectType{AttrTypes: vmNUMACellAttrTypes}
	if len(vm.NUMA) == 0 {
		m.NUMA = types.ListNull(cellType)
		return
	}
	priorCells, _ := prior.numaOf(ctx)
	cells := make([]vmNUMACellModel, len(vm.NUMA))
	for i, c := range vm.NUMA {
		var priorNodes types.String
		if i < len(priorCells) {
			priorNodes = priorCells[i].HostNodes
		}
		cells[i] = vmNUMACellModel{CPUs: types.StringValue(c.CPUs), MemoryMiB: types.Int64Value(c.MemoryMiB), HostNodes: stringOrNull(c.HostNodes, priorNodes)}
	}
	l, d := types.ListValueFrom(ctx, cellType, cells)
	diags.Append(d...)
	m.NUMA = l
}

// validateMemoryConfig checks numa against vcpu and memory at plan time,
// by the host's own rule (api.CheckNUMA), and hugepage sizes against the
// smallest huge page; the host checks host_nodes and its page size.
func validateMemoryConfig(ctx context.Context, cfg vmModel, diags *diag.Diagnostics) {
	cells, d := cfg.numaOf(ctx)
	diags.Append(d...)
	if cfg.VCPU.IsUnknown() || cfg.MemoryMiB.IsUnknown() || cfg.MaxMemoryMiB.IsUnknown() || cfg.NUMA.IsUnknown() {
		return
	}
	var spec api.VMSpec
	for _, c := range cells {
		if c.CPUs.IsUnknown() || c.MemoryMiB.IsUnknown() || c.HostNodes.IsUnknown() {
			return
		}
	}
	spec.VCPU, spec.MemoryMiB, spec.MaxMemoryMiB = knownInt64(cfg.VCPU), knownInt64(cfg.MemoryMiB), knownInt64(cfg.MaxMemoryMiB)
	cfg.memoryToAPI(ctx, &spec, diags)
	if err := api.CheckNUMA(spec.NUMA, spec.VCPU, spec.MemoryMiB, spec.MaxMemoryMiB); err != nil {
		diags.AddAttributeError(path.Root("numa"), "Invalid NUMA Cells", err.Error()+".")
	}
	if !cfg.Hugepages.IsUnknown() {
		if err := api.CheckHugepageSizes(spec, api.MinHugepageKiB); err != nil {
			diags.AddAttributeError(path.Root("hugepages"), "Invalid Hugepage Memory", err.Error()+".")
		}
	}
}

// guestCPUSet checks a set of guest vCPUs.
func guestCPUSet() validator.String {
	return stringCheck{
		desc: `must be a vCPU set like "0", "0-3" or "0,2"`,
		check: func(s string) error {
			_, err := api.ParseGuestCPUSet(s)
			return err
		},
	}
}

// nodeSet checks a set of host NUMA nodes.
func nodeSet() validator.String {
	return stringCheck{
		desc: `must be a NUMA node set like "0", "0-1" or "0,2"`,
		check: func(s string) error {
			_, err := api.ParseNodeSet(s)
			return err
		},
	}
}
