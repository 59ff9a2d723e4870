package kvm

import (
	"context"
	"fmt"
	"strings"

	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/resource"
)

var _ resource.ResourceWithImportState = &PlacementResource{}

// ImportState adopts existing assignments so keys keep their hosts:
// `terraform import kvm_cluster_placement.web 'web-1=host-a,web-2=host-b'`.
// The request sizes come from the configuration on the next plan; until
// then the imported keys are placed as if new wherever they no longer fit.
func (r *PlacementResource) ImportState(ctx context.Context, req resource.ImportStateRequest, resp *resource.ImportStateResponse) {
	if !importIDFromIdentity(ctx, &req, resp, "assignments") {
		return
	}
	assignments, err := parseAssignments(req.ID)
	if err != nil {
		resp.Diagnostics.AddError("Invalid Import ID", err.Error())
		return
	}
	for key, host := range assignments {
		if r.fleet != nil {
			if _, err := r.fleet.Host(host); err != nil {
				resp.Diagnostics.AddError("Invalid Import ID", fmt.Sprintf("key %q: %s", key, err))
				return
			}
		}
	}
	resp.Diagnostics.Append(resp.State.SetAttribute(ctx, path.Root("id"), "placement")...)
	resp.Diagnostics.Append(resp.State.SetAttribute(ctx, path.Root("strategy"), "spread")...)
	resp.Diagnostics.Append(resp.State.SetAttribute(ctx, path.Root("assignments"), assignments)...)
}

// parseAssignments parses "key=host,key=host".
func parseAssignments(id string) (map[string]string, error) {
	out := map[string]string{}
	for _, part := range strings.Split(id, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		k, h, ok := strings.Cut(part, "=")
		if !ok || k == "" || h == "" {
			return nil, fmt.Errorf("kvm_cluster_placement import ID must list the current assignments as key=host pairs, e.g. web-1=host-a,web-2=host-b; %q is not key=host", part)
		}
		if _, dup := out[k]; dup {
			return nil, fmt.Errorf("key %q is assigned twice", k)
		}
		out[k] = h
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("kvm_cluster_placement import ID must list the current assignments, e.g. web-1=host-a,web-2=host-b")
	}
	return out, nil
}
