package kvm

import (
	"context"
	"fmt"

	"github.com/hashicorp/terraform-plugin-framework/datasource"
	"github.com/hashicorp/terraform-plugin-framework/datasource/schema"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/schema/validator"
	"github.com/hashicorp/terraform-plugin-framework/tfsdk"
	"github.com/hashicorp/terraform-plugin-framework/types"
	"github.com/hashicorp/terraform-plugin-go/tftypes"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

var _ datasource.DataSourceWithConfigure = &DiskDataSource{}

// DiskDataSource is the kvm_disk data source: a volume another state owns
// (typically a shared base image), read as kvm_disk would import it.
type DiskDataSource struct{ fleet *Fleet }

// NewDiskDataSource returns the kvm_disk data source.
func NewDiskDataSource() datasource.DataSource { return &DiskDataSource{} }

func (d *DiskDataSource) Metadata(_ context.Context, req datasource.MetadataRequest, resp *datasource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_disk"
}

func (d *DiskDataSource) resourceSchema(ctx context.Context) resource.SchemaResponse {
	var rs resource.SchemaResponse
	(&DiskResource{}).Schema(ctx, resource.SchemaRequest{}, &rs)
	return rs
}

func (d *DiskDataSource) Schema(ctx context.Context, _ datasource.SchemaRequest, resp *datasource.SchemaResponse) {
	rs := d.resourceSchema(ctx)
	attrs := dataSourceAttributes(rs.Schema.Attributes, "", map[string]bool{"id": true}, nil)
	attrs["id"] = schema.StringAttribute{
		Required:            true,
		MarkdownDescription: "The disk: `<host>/<pool>/<name>`, as a `kvm_disk`'s `id` (e.g. the base image another state owns).",
		Validators:          []validator.String{diskIDFormat("Invalid Disk ID", "")},
	}
	resp.Schema = schema.Schema{
		MarkdownDescription: "Reads a disk (libvirt volume) that this configuration does not manage — typically a shared base " +
			"image another Terraform state owns, to use as `base_disk_id` — by its ID. It exposes what the `kvm_disk` resource " +
			"exposes, read the way `terraform import` reads it. Reading it changes nothing.",
		Attributes: attrs,
	}
}

func (d *DiskDataSource) Configure(_ context.Context, req datasource.ConfigureRequest, resp *datasource.ConfigureResponse) {
	d.fleet = fleetFrom(req.ProviderData, &resp.Diagnostics)
}

func (d *DiskDataSource) Read(ctx context.Context, req datasource.ReadRequest, resp *datasource.ReadResponse) {
	var id types.String
	resp.Diagnostics.Append(req.Config.GetAttribute(ctx, path.Root("id"), &id)...)
	if resp.Diagnostics.HasError() {
		return
	}
	hostName, pool, name, err := ParseDiskID(id.ValueString())
	if err != nil {
		resp.Diagnostics.AddAttributeError(path.Root("id"), "Invalid Disk ID", err.Error())
		return
	}
	for what, v := range map[string]string{"pool": pool, "disk": name} {
		if err := api.ValidateName(what, v); err != nil {
			resp.Diagnostics.AddAttributeError(path.Root("id"), "Invalid Disk ID", err.Error())
			return
		}
	}
	h, err := d.fleet.Host(hostName)
	if err != nil {
		resp.Diagnostics.AddAttributeError(path.Root("id"), "Unknown Host", err.Error())
		return
	}
	ctx, cancel := context.WithTimeout(ctx, diskReadTimeout)
	defer cancel()
	v, err := h.Client.GetVolume(ctx, pool, name)
	if err != nil {
		if isNotFound(err) {
			resp.Diagnostics.AddAttributeError(path.Root("id"), "Disk Not Found", fmt.Sprintf("Host %s has no disk %s in pool %s.", hostName, name, pool))
			return
		}
		addAPIError(&resp.Diagnostics, "Unable to Read Disk", "disk "+id.ValueString(), err)
		return
	}
	rs := d.resourceSchema(ctx)
	st := tfsdk.State{Schema: rs.Schema, Raw: tftypes.NewValue(rs.Schema.Type().TerraformType(ctx), nil)}
	resp.Diagnostics.Append(st.SetAttribute(ctx, path.Root("id"), id.ValueString())...)
	var m diskModel
	resp.Diagnostics.Append(st.Get(ctx, &m)...)
	if resp.Diagnostics.HasError() {
		return
	}
	m.fromAPI(hostName, v)
	resp.Diagnostics.Append(st.Set(ctx, &m)...)
	if resp.Diagnostics.HasError() {
		return
	}
	resp.Diagnostics.Append(setDataSourceState(ctx, st, &resp.State, resp.State.Schema.(schema.Schema))...)
}
