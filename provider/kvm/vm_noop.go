package kvm

import (
	"context"

	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/types"
)

// vmPlanUnchanged ends ModifyPlan early for a VM whose plan is its prior
// state: nothing changes, so there is nothing to fill in, check or warn
// about, and the three full decodes of the model (plan, config, state: the
// framework reflects over every attribute of the largest schema we have)
// would be most of a no-op plan's time in the provider at thousands of VMs.
// The one check that still applies is that the VM's host is configured.
func vmPlanUnchanged(ctx context.Context, fleet *Fleet, req resource.ModifyPlanRequest, resp *resource.ModifyPlanResponse) bool {
	if req.State.Raw.IsNull() || !req.Plan.Raw.Equal(req.State.Raw) {
		return false
	}
	var host types.String
	resp.Diagnostics.Append(req.Plan.GetAttribute(ctx, path.Root("host"), &host)...)
	if fleet != nil && !host.IsUnknown() && !host.IsNull() {
		if _, err := fleet.Host(host.ValueString()); err != nil {
			resp.Diagnostics.AddAttributeError(path.Root("host"), "Unknown Host", err.Error())
		}
	}
	return true
}
