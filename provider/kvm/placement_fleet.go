package kvm

import (
	"context"
	"fmt"

	"github.com/hashicorp/terraform-plugin-framework-validators/float64validator"
	"github.com/hashicorp/terraform-plugin-framework-validators/int64validator"
	"github.com/hashicorp/terraform-plugin-framework/attr"
	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema"
	"github.com/hashicorp/terraform-plugin-framework/schema/validator"
	"github.com/hashicorp/terraform-plugin-framework/types"
	"github.com/hashicorp/terraform-plugin-framework/types/basetypes"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/placement"
)

// placementRebalanceModel is kvm_cluster_placement.rebalance.
type placementRebalanceModel struct {
	Threshold types.Float64 `tfsdk:"threshold"`
	MaxMoves  types.Int64   `tfsdk:"max_moves"`
}

var placementRebalanceAttrTypes = map[string]attr.Type{"threshold": types.Float64Type, "max_moves": types.Int64Type}

// placementFleetAttributes are kvm_cluster_placement's fleet-operation
// attributes.
func placementFleetAttributes() map[string]schema.Attribute {
	return map[string]schema.Attribute{
		"rebalance": schema.SingleNestedAttribute{
			MarkdownDescription: "Plan-time rebalancing (like DRS, but in the plan): when the hosts' memory use is uneven, the plan moves keys " +
				"from full hosts to empty ones, and the apply live-migrates their VMs. The imbalance is the share of memory capacity " +
				"allocated on the fullest eligible host (healthy, not in maintenance) minus that on the emptiest, as it will be after apply. " +
				"While it exceeds `threshold`, the plan moves the key (or whole `affinity_group`) whose move lowers it most (among equal ones, the one " +
				"that evens out memory use most, so equally full hosts still get relief), to a host that " +
				"keeps every `host_labels`, `affinity_group` and `anti_affinity_group` rule and has room for it, until it is at most " +
				"`threshold`, no move lowers it, or `max_moves` keys have moved. Each move is a plan warning with reason `rebalance`. " +
				"The result is deterministic, and once the imbalance is within `threshold` the next plan is empty; when `max_moves` " +
				"stopped it earlier, each next plan continues with at most `max_moves` more, always lowering the imbalance, so plans never flap. " +
				"Unset (default): no rebalancing; keys move only when they must. A change is applied at the next plan.",
			Optional: true,
			Attributes: map[string]schema.Attribute{
				"threshold": schema.Float64Attribute{
					MarkdownDescription: "Imbalance, from 0 to 1, above which moves are proposed: e.g. `0.2` tolerates the fullest host " +
						"having 20 percentage points more of its memory allocated than the emptiest.",
					Required:   true,
					Validators: []validator.Float64{float64validator.Between(0, 1)},
				},
				"max_moves": schema.Int64Attribute{
					MarkdownDescription: "Most keys one plan moves for rebalancing (a moved `affinity_group` counts each member); `0` never rebalances.",
					Required:            true,
					Validators:          []validator.Int64{int64validator.AtLeast(0)},
				},
			},
		},
	}
}

// placementRebalance converts rebalance; known is false while a value is
// unknown (the placement is then computed at apply).
func placementRebalance(ctx context.Context, v types.Object) (rb *placement.Rebalance, known bool, diags diag.Diagnostics) {
	if v.IsNull() {
		return nil, true, nil
	}
	if v.IsUnknown() {
		return nil, false, nil
	}
	var m placementRebalanceModel
	diags = v.As(ctx, &m, basetypes.ObjectAsOptions{})
	if diags.HasError() {
		return nil, true, diags
	}
	if m.Threshold.IsUnknown() || m.MaxMoves.IsUnknown() {
		return nil, false, diags
	}
	return &placement.Rebalance{Threshold: m.Threshold.ValueFloat64(), MaxMoves: int(m.MaxMoves.ValueInt64())}, true, diags
}

// warnHostMaintenance is the warning for a candidate host in maintenance.
func warnHostMaintenance(diags *diag.Diagnostics, inv api.Host) {
	why := ""
	if inv.MaintenanceReason != "" {
		why = " (" + inv.MaintenanceReason + ")"
	}
	diags.AddWarning("Host in Maintenance", fmt.Sprintf("Host %s is in maintenance%s: every kvm_cluster_placement key on it moves to "+
		"another host where it fits (reason maintenance; the apply live-migrates the VMs, disks included), and no key is placed on it. "+
		"Leaving maintenance moves nothing back unless rebalance asks.", inv.Name, why))
}
