package kvm

import (
	"context"

	"github.com/hashicorp/terraform-plugin-framework/attr"
	"github.com/hashicorp/terraform-plugin-framework/datasource/schema"
	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/types"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// hostPoolModel is one storage pool a host serves.
type hostPoolModel struct {
	Name        types.String `tfsdk:"name"`
	Type        types.String `tfsdk:"type"`
	Shared      types.Bool   `tfsdk:"shared"`
	CapacityMiB types.Int64  `tfsdk:"capacity_mib"`
	FreeMiB     types.Int64  `tfsdk:"free_mib"`
}

var hostPoolAttrTypes = map[string]attr.Type{
	"name": types.StringType, "type": types.StringType, "shared": types.BoolType,
	"capacity_mib": types.Int64Type, "free_mib": types.Int64Type,
}

func hostPoolsFromAPI(ctx context.Context, pools []api.HostPool) (types.List, diag.Diagnostics) {
	out := make([]hostPoolModel, 0, len(pools))
	for _, p := range pools {
		out = append(out, hostPoolModel{
			Name: types.StringValue(p.Name), Type: types.StringValue(p.Type), Shared: types.BoolValue(p.Shared),
			CapacityMiB: types.Int64Value(p.CapacityMiB), FreeMiB: types.Int64Value(p.FreeMiB),
		})
	}
	return types.ListValueFrom(ctx, types.ObjectType{AttrTypes: hostPoolAttrTypes}, out)
}

func hostPoolsAttribute() schema.ListNestedAttribute {
	return schema.ListNestedAttribute{
		Computed: true,
		MarkdownDescription: "The storage pools the host serves: `default` (kvm-hostd `--pool-dir`) and each libvirt pool the " +
			"operator named with `--pool`; a `kvm_disk`'s `pool` must be one of them. Empty when the host is down.",
		NestedObject: schema.NestedAttributeObject{Attributes: map[string]schema.Attribute{
			"name": schema.StringAttribute{Computed: true, MarkdownDescription: "Pool name, as `kvm_disk.pool` gives it."},
			"type": schema.StringAttribute{Computed: true, MarkdownDescription: "libvirt's pool type: `dir`, `rbd`, `netfs`, ..."},
			"shared": schema.BoolAttribute{Computed: true, MarkdownDescription: "Whether every host serving a pool of this name sees the same " +
				"volumes (rbd and netfs pools by nature; a `dir` pool kvm-hostd runs with `--shared-pool NAME`). A VM whose disks are all " +
				"on shared pools its new host also serves live-migrates without copying them; placement never moves a VM to a host " +
				"lacking one of its shared pools."},
			"capacity_mib": schema.Int64Attribute{Computed: true, MarkdownDescription: "Pool capacity in MiB."},
			"free_mib": schema.Int64Attribute{Computed: true, MarkdownDescription: "Free space in MiB. A new disk larger than this is refused " +
				"(at plan time where the provider reads the host, else by the host with a 409)."},
		}},
	}
}
