package kvm

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/resource/identityschema"
	"github.com/hashicorp/terraform-plugin-framework/tfsdk"
	"github.com/hashicorp/terraform-plugin-framework/types"
)

// Resource identity (Terraform >= 1.12): the attributes that name an
// object on the fleet, the same parts as each import ID (ids.go). Terraform
// stores it next to the state, `import` blocks may give it instead of an ID,
// and list resources (`terraform query`) return it for every object found.
//
// The identity is always derived from the state a CRUD method leaves
// (syncIdentity, deferred at the top of Create, Read and Update), so every
// exit path of those methods sets it, and state written by a provider
// version without identity gains it at the next refresh. The identity
// schemas are at version 0: no identity was ever stored in another shape,
// so there is nothing for UpgradeIdentity to convert yet.

var (
	_ resource.ResourceWithIdentity = &VMResource{}
	_ resource.ResourceWithIdentity = &DiskResource{}
	_ resource.ResourceWithIdentity = &NetworkResource{}
	_ resource.ResourceWithIdentity = &SnapshotResource{}
	_ resource.ResourceWithIdentity = &PlacementResource{}
)

func identityString(desc string) identityschema.StringAttribute {
	return identityschema.StringAttribute{RequiredForImport: true, Description: desc}
}

type vmIdentityModel struct {
	Host types.String `tfsdk:"host"`
	Name types.String `tfsdk:"name"`
}

type diskIdentityModel struct {
	Host types.String `tfsdk:"host"`
	Pool types.String `tfsdk:"pool"`
	Name types.String `tfsdk:"name"`
}

type networkIdentityModel struct {
	Name types.String `tfsdk:"name"`
}

type snapshotIdentityModel struct {
	Host types.String `tfsdk:"host"`
	VM   types.String `tfsdk:"vm"`
	Name types.String `tfsdk:"name"`
}

type placementIdentityModel struct {
	Assignments types.String `tfsdk:"assignments"`
}

func (r *VMResource) IdentitySchema(_ context.Context, _ resource.IdentitySchemaRequest, resp *resource.IdentitySchemaResponse) {
	resp.IdentitySchema = identityschema.Schema{Attributes: map[string]identityschema.Attribute{
		"host": identityString("The host the VM is defined on."),
		"name": identityString("The VM (libvirt domain) name."),
	}}
}

func (r *DiskResource) IdentitySchema(_ context.Context, _ resource.IdentitySchemaRequest, resp *resource.IdentitySchemaResponse) {
	resp.IdentitySchema = identityschema.Schema{Attributes: map[string]identityschema.Attribute{
		"host": identityString("The host the volume is on."),
		"pool": identityString("The storage pool of the volume."),
		"name": identityString("The volume name."),
	}}
}

func (r *NetworkResource) IdentitySchema(_ context.Context, _ resource.IdentitySchemaRequest, resp *resource.IdentitySchemaResponse) {
	resp.IdentitySchema = identityschema.Schema{Attributes: map[string]identityschema.Attribute{
		"name": identityString("The network name (the same on every host)."),
	}}
}

func (r *SnapshotResource) IdentitySchema(_ context.Context, _ resource.IdentitySchemaRequest, resp *resource.IdentitySchemaResponse) {
	resp.IdentitySchema = identityschema.Schema{Attributes: map[string]identityschema.Attribute{
		"host": identityString("The host of the VM."),
		"vm":   identityString("The VM name."),
		"name": identityString("The snapshot name."),
	}}
}

func (r *PlacementResource) IdentitySchema(_ context.Context, _ resource.IdentitySchemaRequest, resp *resource.IdentitySchemaResponse) {
	resp.IdentitySchema = identityschema.Schema{Attributes: map[string]identityschema.Attribute{
		"assignments": identityString("The current assignments as key=host pairs sorted by key, " +
			"e.g. `web-1=host-a,web-2=host-b` (the import ID)."),
	}}
}

// attrGetter is a tfsdk.State or tfsdk.Plan.
type attrGetter interface {
	GetAttribute(ctx context.Context, p path.Path, target any) diag.Diagnostics
}

// syncIdentity sets identity from the state a CRUD method leaves, or from
// fallback (the request's plan or prior state) when the method left none:
// the framework wants an identity even from a Read that removes the
// resource. It does nothing after an error.
func syncIdentity(ctx context.Context, state *tfsdk.State, fallback attrGetter, identity *tfsdk.ResourceIdentity, diags *diag.Diagnostics,
	of func(context.Context, attrGetter) (any, diag.Diagnostics)) {
	if identity == nil || diags.HasError() {
		return
	}
	var src attrGetter = state
	if state == nil || state.Raw.IsNull() {
		if !identity.Raw.IsNull() {
			return
		}
		src = fallback
	}
	v, d := of(ctx, src)
	diags.Append(d...)
	if v == nil || d.HasError() {
		return
	}
	diags.Append(identity.Set(ctx, v)...)
}

func stringAt(ctx context.Context, s attrGetter, name string, diags *diag.Diagnostics) string {
	var v types.String
	diags.Append(s.GetAttribute(ctx, path.Root(name), &v)...)
	return v.ValueString()
}

func vmIdentityOf(ctx context.Context, s attrGetter) (any, diag.Diagnostics) {
	var diags diag.Diagnostics
	host, name := stringAt(ctx, s, "host", &diags), stringAt(ctx, s, "name", &diags)
	if host == "" || name == "" {
		return nil, diags
	}
	return vmIdentityModel{Host: types.StringValue(host), Name: types.StringValue(name)}, diags
}

func diskIdentityOf(ctx context.Context, s attrGetter) (any, diag.Diagnostics) {
	var diags diag.Diagnostics
	host, pool, name := stringAt(ctx, s, "host", &diags), stringAt(ctx, s, "pool", &diags), stringAt(ctx, s, "name", &diags)
	if host == "" || pool == "" || name == "" {
		return nil, diags
	}
	return diskIdentityModel{Host: types.StringValue(host), Pool: types.StringValue(pool), Name: types.StringValue(name)}, diags
}

func networkIdentityOf(ctx context.Context, s attrGetter) (any, diag.Diagnostics) {
	var diags diag.Diagnostics
	name := stringAt(ctx, s, "name", &diags)
	if name == "" {
		return nil, diags
	}
	return networkIdentityModel{Name: types.StringValue(name)}, diags
}

func snapshotIdentityOf(ctx context.Context, s attrGetter) (any, diag.Diagnostics) {
	var diags diag.Diagnostics
	host, vm, name, err := ParseSnapshotID(stringAt(ctx, s, "id", &diags))
	if err != nil {
		return nil, diags
	}
	return snapshotIdentityModel{Host: types.StringValue(host), VM: types.StringValue(vm), Name: types.StringValue(name)}, diags
}

func placementIdentityOf(ctx context.Context, s attrGetter) (any, diag.Diagnostics) {
	var diags diag.Diagnostics
	var m types.Map
	diags.Append(s.GetAttribute(ctx, path.Root("assignments"), &m)...)
	if m.IsNull() || m.IsUnknown() {
		return nil, diags
	}
	a := map[string]string{}
	diags.Append(m.ElementsAs(ctx, &a, false)...)
	// No keys is "": an identity may not be entirely null.
	return placementIdentityModel{Assignments: types.StringValue(formatAssignments(a))}, diags
}

// formatAssignments renders assignments as the import ID: key=host pairs
// sorted by key.
func formatAssignments(a map[string]string) string {
	keys := make([]string, 0, len(a))
	for k := range a {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + a[k]
	}
	return strings.Join(parts, ",")
}

// importIDFromIdentity turns an import by identity (an `import` block with
// `identity = {...}`, Terraform >= 1.12) into the import ID the resource's
// ImportState parses, so both ways share one validation. ok is false when
// the identity is incomplete (the error is in resp).
func importIDFromIdentity(ctx context.Context, req *resource.ImportStateRequest, resp *resource.ImportStateResponse,
	parts ...string) bool {
	if req.ID != "" || req.Identity == nil || req.Identity.Raw.IsNull() {
		return true
	}
	vals := make([]string, len(parts))
	for i, p := range parts {
		var v types.String
		resp.Diagnostics.Append(req.Identity.GetAttribute(ctx, path.Root(p), &v)...)
		if v.IsNull() || v.IsUnknown() || v.ValueString() == "" {
			resp.Diagnostics.AddAttributeError(path.Root(p), "Invalid Import Identity",
				fmt.Sprintf("identity attribute %q is required (the identity is %s)", p, strings.Join(parts, ", ")))
			return false
		}
		vals[i] = v.ValueString()
	}
	if resp.Diagnostics.HasError() {
		return false
	}
	sep := "/"
	if len(parts) == 1 && parts[0] == "assignments" {
		sep = ","
	}
	req.ID = strings.Join(vals, sep)
	return true
}
