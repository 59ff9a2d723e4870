package kvm

import (
	"context"

	"github.com/hashicorp/terraform-plugin-framework/attr"
	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/types"
	"github.com/hashicorp/terraform-plugin-framework/types/basetypes"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/placement"
)

// placementID is the ID of every kvm_cluster_placement: the resource has no
// remote object, so any stable value does.
const placementID = "placement"

// placementModel is the kvm_cluster_placement state.
type placementModel struct {
	ID          types.String `tfsdk:"id"`
	Hosts       types.Set    `tfsdk:"hosts"`
	Strategy    types.String `tfsdk:"strategy"`
	Request     types.Map    `tfsdk:"request"`
	Assignments types.Map    `tfsdk:"assignments"`
	Rebalance   types.Object `tfsdk:"rebalance"`
}

// placementRequestModel is one element of request.
type placementRequestModel struct {
	VCPU              types.Int64  `tfsdk:"vcpu"`
	MemoryMiB         types.Int64  `tfsdk:"memory_mib"`
	AntiAffinityGroup types.String `tfsdk:"anti_affinity_group"`
	AffinityGroup     types.String `tfsdk:"affinity_group"`
	HostLabels        types.Map    `tfsdk:"host_labels"`
}

// requestsKnown reports whether every value placement depends on in
// request is known. An unknown value (from a resource not yet created)
// means the assignments can only be computed at apply.
func requestsKnown(m types.Map) bool {
	if m.IsUnknown() {
		return false
	}
	for _, v := range m.Elements() {
		if v.IsUnknown() {
			return false
		}
		obj, ok := v.(basetypes.ObjectValue)
		if !ok {
			continue
		}
		for _, a := range obj.Attributes() {
			if a.IsUnknown() {
				return false
			}
			if lm, ok := a.(basetypes.MapValue); ok {
				for _, l := range lm.Elements() {
					if l.IsUnknown() {
						return false
					}
				}
			}
		}
	}
	return true
}

// toPlacementRequests converts a fully known request map to engine requests.
func toPlacementRequests(ctx context.Context, m types.Map) (map[string]placement.Request, diag.Diagnostics) {
	var diags diag.Diagnostics
	out := map[string]placement.Request{}
	if m.IsNull() || m.IsUnknown() {
		return out, diags
	}
	var reqs map[string]placementRequestModel
	diags.Append(m.ElementsAs(ctx, &reqs, false)...)
	if diags.HasError() {
		return nil, diags
	}
	for key, r := range reqs {
		q := placement.Request{
			VCPU:              r.VCPU.ValueInt64(),
			MemoryMiB:         r.MemoryMiB.ValueInt64(),
			AntiAffinityGroup: r.AntiAffinityGroup.ValueString(),
			AffinityGroup:     r.AffinityGroup.ValueString(),
		}
		if !r.HostLabels.IsNull() && !r.HostLabels.IsUnknown() {
			labels := map[string]string{}
			diags.Append(r.HostLabels.ElementsAs(ctx, &labels, false)...)
			if len(labels) > 0 {
				q.HostLabels = labels
			}
		}
		out[key] = q
	}
	return out, diags
}

// stringMap converts a known map of strings; null or unknown gives nil.
func stringMap(ctx context.Context, m types.Map) (map[string]string, diag.Diagnostics) {
	if m.IsNull() || m.IsUnknown() {
		return nil, nil
	}
	out := map[string]string{}
	diags := m.ElementsAs(ctx, &out, false)
	return out, diags
}

// assignmentsValue converts engine assignments to the state value.
func assignmentsValue(a map[string]string) types.Map {
	elems := make(map[string]attr.Value, len(a))
	for k, h := range a {
		elems[k] = types.StringValue(h)
	}
	return types.MapValueMust(types.StringType, elems)
}

// placementHost converts a host's inventory to an engine host.
func placementHost(inv api.Host) placement.Host {
	return placement.Host{
		Name:               inv.Name,
		Healthy:            inv.Healthy,
		Maintenance:        inv.Maintenance,
		CPUs:               inv.CPUs,
		MemoryMiB:          inv.MemoryMiB,
		AllocatedVCPU:      inv.AllocatedVCPU,
		AllocatedMemoryMiB: inv.AllocatedMemoryMiB,
		CPUOvercommit:      inv.CPUOvercommit,
		MemoryOvercommit:   inv.MemoryOvercommit,
		Labels:             inv.Labels,
	}
}
