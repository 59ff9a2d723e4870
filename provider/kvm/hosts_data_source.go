package kvm

import (
	"context"

	"github.com/hashicorp/terraform-plugin-framework/datasource"
	"github.com/hashicorp/terraform-plugin-framework/datasource/schema"
	"github.com/hashicorp/terraform-plugin-framework/types"
)

var _ datasource.DataSourceWithConfigure = &HostsDataSource{}

// HostsDataSource reads the inventory of every configured host.
type HostsDataSource struct{ fleet *Fleet }

// NewHostsDataSource is the kvm_hosts factory.
func NewHostsDataSource() datasource.DataSource { return &HostsDataSource{} }

type hostsModel struct {
	Hosts types.List `tfsdk:"hosts"`
}

func (d *HostsDataSource) Metadata(_ context.Context, req datasource.MetadataRequest, resp *datasource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_hosts"
}

func (d *HostsDataSource) Schema(_ context.Context, _ datasource.SchemaRequest, resp *datasource.SchemaResponse) {
	attrs := hostComputedAttributes()
	attrs["name"] = schema.StringAttribute{Computed: true, MarkdownDescription: "Host name, as configured in the provider."}
	resp.Schema = schema.Schema{
		MarkdownDescription: "Live inventory of every configured host, sorted by name, read concurrently. " +
			"A host that is down appears with `healthy = false` and does not fail the plan.",
		Attributes: map[string]schema.Attribute{
			"hosts": schema.ListNestedAttribute{
				Computed:            true,
				MarkdownDescription: "One object per configured host.",
				NestedObject:        schema.NestedAttributeObject{Attributes: attrs},
			},
		},
	}
}

func (d *HostsDataSource) Configure(_ context.Context, req datasource.ConfigureRequest, resp *datasource.ConfigureResponse) {
	d.fleet = fleetFrom(req.ProviderData, &resp.Diagnostics)
}

func (d *HostsDataSource) Read(ctx context.Context, _ datasource.ReadRequest, resp *datasource.ReadResponse) {
	invs := d.fleet.Inventories(ctx, d.fleet.Names())
	models := make([]hostModel, 0, len(invs))
	for _, inv := range invs {
		if !inv.Healthy {
			warnHostUnhealthy(&resp.Diagnostics, inv, "it is listed with healthy = false.")
		}
		m, diags := hostModelFromAPI(ctx, inv)
		resp.Diagnostics.Append(diags...)
		models = append(models, m)
	}
	list, diags := types.ListValueFrom(ctx, types.ObjectType{AttrTypes: hostAttrTypes}, models)
	resp.Diagnostics.Append(diags...)
	if resp.Diagnostics.HasError() {
		return
	}
	resp.Diagnostics.Append(resp.State.Set(ctx, &hostsModel{Hosts: list})...)
}
