package kvm

import (
	"context"

	"github.com/hashicorp/terraform-plugin-framework/datasource"
	"github.com/hashicorp/terraform-plugin-framework/datasource/schema"
	"github.com/hashicorp/terraform-plugin-framework/path"
)

var _ datasource.DataSourceWithConfigure = &HostDataSource{}

// HostDataSource reads one host's inventory.
type HostDataSource struct{ fleet *Fleet }

// NewHostDataSource is the kvm_host factory.
func NewHostDataSource() datasource.DataSource { return &HostDataSource{} }

func (d *HostDataSource) Metadata(_ context.Context, req datasource.MetadataRequest, resp *datasource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_host"
}

func (d *HostDataSource) Schema(_ context.Context, _ datasource.SchemaRequest, resp *datasource.SchemaResponse) {
	attrs := hostComputedAttributes()
	attrs["name"] = schema.StringAttribute{Required: true, MarkdownDescription: "Name of a host configured in the provider's `hosts`."}
	resp.Schema = schema.Schema{
		MarkdownDescription: "Live inventory of one host: capacity, allocation, labels and health, as its kvm-hostd reports them.",
		Attributes:          attrs,
	}
}

func (d *HostDataSource) Configure(_ context.Context, req datasource.ConfigureRequest, resp *datasource.ConfigureResponse) {
	d.fleet = fleetFrom(req.ProviderData, &resp.Diagnostics)
}

func (d *HostDataSource) Read(ctx context.Context, req datasource.ReadRequest, resp *datasource.ReadResponse) {
	var cfg hostModel
	resp.Diagnostics.Append(req.Config.Get(ctx, &cfg)...)
	if resp.Diagnostics.HasError() {
		return
	}
	h, err := d.fleet.Host(cfg.Name.ValueString())
	if err != nil {
		resp.Diagnostics.AddAttributeError(path.Root("name"), "Unknown Host", err.Error())
		return
	}
	inv := h.Inventory(ctx)
	if !inv.Healthy {
		warnHostUnhealthy(&resp.Diagnostics, inv, "it is reported with healthy = false.")
	}
	m, diags := hostModelFromAPI(ctx, inv)
	resp.Diagnostics.Append(diags...)
	resp.Diagnostics.Append(resp.State.Set(ctx, &m)...)
}
