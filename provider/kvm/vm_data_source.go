package kvm

import (
	"context"
	"fmt"

	"github.com/hashicorp/terraform-plugin-framework/datasource"
	"github.com/hashicorp/terraform-plugin-framework/datasource/schema"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/tfsdk"
	"github.com/hashicorp/terraform-plugin-framework/types"
	"github.com/hashicorp/terraform-plugin-go/tftypes"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

var _ datasource.DataSourceWithConfigure = &VMDataSource{}

// VMDataSource is the kvm_vm data source: a VM another state (or another
// tool) owns, read as kvm_vm would import it.
type VMDataSource struct{ fleet *Fleet }

// NewVMDataSource returns the kvm_vm data source.
func NewVMDataSource() datasource.DataSource { return &VMDataSource{} }

// vmDataSourceSkip are the kvm_vm attributes a data source leaves out: how
// the provider moves, waits for or times a VM it manages, and user data,
// which the host never returns (an imported kvm_vm shows only a marker
// with its hash).
var vmDataSourceSkip = map[string]bool{"migration": true, "wait_for_ip": true, "cloud_init.user_data": true}

func (d *VMDataSource) Metadata(_ context.Context, req datasource.MetadataRequest, resp *datasource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_vm"
}

func (d *VMDataSource) resourceSchema(ctx context.Context) resource.SchemaResponse {
	var rs resource.SchemaResponse
	(&VMResource{}).Schema(ctx, resource.SchemaRequest{}, &rs)
	return rs
}

func (d *VMDataSource) Schema(ctx context.Context, _ datasource.SchemaRequest, resp *datasource.SchemaResponse) {
	rs := d.resourceSchema(ctx)
	attrs := dataSourceAttributes(rs.Schema.Attributes, "", map[string]bool{"host": true, "name": true}, vmDataSourceSkip)
	attrs["host"] = schema.StringAttribute{Required: true, MarkdownDescription: "The host the VM is on: a host of the provider's `hosts`."}
	attrs["name"] = schema.StringAttribute{Required: true, MarkdownDescription: "The VM's (libvirt domain's) name on that host."}
	resp.Schema = schema.Schema{
		MarkdownDescription: "Reads a VM that this configuration does not manage — one another Terraform state owns, or a domain " +
			"made with `virsh` — by host and name. It exposes what the `kvm_vm` resource exposes, read the way `terraform import` " +
			"reads it, except `migration`, `wait_for_ip` (which only steer the provider) and `cloud_init.user_data` (never returned " +
			"by the host). Reading it changes nothing.",
		Attributes: attrs,
	}
}

func (d *VMDataSource) Configure(_ context.Context, req datasource.ConfigureRequest, resp *datasource.ConfigureResponse) {
	d.fleet = fleetFrom(req.ProviderData, &resp.Diagnostics)
}

type vmDataSourceKey struct {
	Host types.String `tfsdk:"host"`
	Name types.String `tfsdk:"name"`
}

func (d *VMDataSource) Read(ctx context.Context, req datasource.ReadRequest, resp *datasource.ReadResponse) {
	var key vmDataSourceKey
	resp.Diagnostics.Append(req.Config.GetAttribute(ctx, path.Root("host"), &key.Host)...)
	resp.Diagnostics.Append(req.Config.GetAttribute(ctx, path.Root("name"), &key.Name)...)
	if resp.Diagnostics.HasError() {
		return
	}
	if err := api.ValidateName("VM", key.Name.ValueString()); err != nil {
		resp.Diagnostics.AddAttributeError(path.Root("name"), "Invalid VM Name", err.Error())
		return
	}
	h, err := d.fleet.Host(key.Host.ValueString())
	if err != nil {
		resp.Diagnostics.AddAttributeError(path.Root("host"), "Unknown Host", err.Error())
		return
	}
	ctx, cancel := context.WithTimeout(ctx, vmReadTimeout)
	defer cancel()
	name := key.Name.ValueString()
	vm, err := h.Client.GetVM(ctx, name)
	if err != nil {
		if isNotFound(err) {
			resp.Diagnostics.AddAttributeError(path.Root("name"), "VM Not Found", fmt.Sprintf("Host %s has no VM %s.", h.Name, name))
			return
		}
		addAPIError(&resp.Diagnostics, "Unable to Read VM", fmt.Sprintf("VM %s on host %s", name, h.Name), err)
		return
	}
	// The resource state an import then a refresh would produce.
	rs := d.resourceSchema(ctx)
	st := tfsdk.State{Schema: rs.Schema, Raw: tftypes.NewValue(rs.Schema.Type().TerraformType(ctx), nil)}
	resp.Diagnostics.Append(st.SetAttribute(ctx, path.Root("host"), h.Name)...)
	resp.Diagnostics.Append(st.SetAttribute(ctx, path.Root("name"), name)...)
	var prior vmModel
	resp.Diagnostics.Append(st.Get(ctx, &prior)...)
	if resp.Diagnostics.HasError() {
		return
	}
	m, diags := vmFromAPI(ctx, prior, h.Name, vm)
	resp.Diagnostics.Append(diags...)
	resp.Diagnostics.Append(st.Set(ctx, &m)...)
	if resp.Diagnostics.HasError() {
		return
	}
	resp.Diagnostics.Append(setDataSourceState(ctx, st, &resp.State, resp.State.Schema.(schema.Schema))...)
}
