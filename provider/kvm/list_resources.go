package kvm

import (
	"context"
	"fmt"
	"strings"

	"github.com/hashicorp/terraform-plugin-framework-timeouts/resource/timeouts"
	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/list"
	listschema "github.com/hashicorp/terraform-plugin-framework/list/schema"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/types"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// List resources (`terraform query`, Terraform >= 1.14): kvm_vm and kvm_disk
// list what exists on the configured hosts, ours or not (domains defined
// with virsh, volumes made by another tool), with the identity and, when
// asked (include_resource, -generate-config-out), the state an import of
// the object would read.

var (
	_ list.ListResourceWithConfigure = &VMListResource{}
	_ list.ListResourceWithConfigure = &DiskListResource{}
)

// NewVMListResource and NewDiskListResource are registered in provider.go.
func NewVMListResource() list.ListResource   { return &VMListResource{} }
func NewDiskListResource() list.ListResource { return &DiskListResource{} }

// VMListResource lists the domains of the fleet's hosts.
type VMListResource struct{ fleet *Fleet }

// DiskListResource lists the volumes of every pool the fleet's hosts serve.
type DiskListResource struct{ fleet *Fleet }

type listConfigModel struct {
	Host       types.String `tfsdk:"host"`
	NamePrefix types.String `tfsdk:"name_prefix"`
	Tags       types.Map    `tfsdk:"tags"`
}

func listConfigSchema(kind, tagsDesc string) listschema.Schema {
	return listschema.Schema{
		MarkdownDescription: "Lists the " + kind + " on the provider's hosts, including ones created outside Terraform. " +
			"Every filter is optional; with none, everything is listed.",
		Attributes: map[string]listschema.Attribute{
			"host": listschema.StringAttribute{
				MarkdownDescription: "Only this host (one of the provider's `hosts`). Default: every host of the provider.",
				Optional:            true,
			},
			"name_prefix": listschema.StringAttribute{
				MarkdownDescription: "Only names that start with this prefix. Default: any name.",
				Optional:            true,
			},
			"tags": listschema.MapAttribute{
				MarkdownDescription: tagsDesc,
				Optional:            true, ElementType: types.StringType,
			},
		},
	}
}

func (r *VMListResource) Metadata(_ context.Context, req resource.MetadataRequest, resp *resource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_vm"
}

func (r *DiskListResource) Metadata(_ context.Context, req resource.MetadataRequest, resp *resource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_disk"
}

func (r *VMListResource) ListResourceConfigSchema(_ context.Context, _ list.ListResourceSchemaRequest, resp *list.ListResourceSchemaResponse) {
	resp.Schema = listConfigSchema("VMs (libvirt domains)",
		"Only VMs whose `tags` include every one of these key/value pairs. Default: no tag filter. "+
			"Domains not made by this provider have no tags, so any tag filter leaves them out.")
}

func (r *DiskListResource) ListResourceConfigSchema(_ context.Context, _ list.ListResourceSchemaRequest, resp *list.ListResourceSchemaResponse) {
	resp.Schema = listConfigSchema("disks (storage volumes of every pool a host serves)",
		"Volumes carry no tags: only disks attached to a VM whose `tags` include every one of these key/value pairs. "+
			"Default: no tag filter (attached or not).")
}

func (r *VMListResource) Configure(_ context.Context, req resource.ConfigureRequest, _ *resource.ConfigureResponse) {
	if f, ok := req.ProviderData.(*Fleet); ok {
		r.fleet = f
	}
}

func (r *DiskListResource) Configure(_ context.Context, req resource.ConfigureRequest, _ *resource.ConfigureResponse) {
	if f, ok := req.ProviderData.(*Fleet); ok {
		r.fleet = f
	}
}

// listFilter is a list block's configuration, decoded.
type listFilter struct {
	hosts  []*FleetHost
	prefix string
	tags   map[string]string
}

func decodeListConfig(ctx context.Context, fleet *Fleet, req list.ListRequest) (listFilter, diag.Diagnostics) {
	var diags diag.Diagnostics
	if fleet == nil {
		diags.AddError("Provider Not Configured", "The kvm provider has no hosts configured, so there is nothing to list.")
		return listFilter{}, diags
	}
	var cfg listConfigModel
	diags.Append(req.Config.Get(ctx, &cfg)...)
	if diags.HasError() {
		return listFilter{}, diags
	}
	f := listFilter{prefix: cfg.NamePrefix.ValueString()}
	if !cfg.Tags.IsNull() && !cfg.Tags.IsUnknown() {
		f.tags = map[string]string{}
		diags.Append(cfg.Tags.ElementsAs(ctx, &f.tags, false)...)
	}
	names := fleet.Names()
	if h := cfg.Host.ValueString(); h != "" {
		names = []string{h}
	}
	for _, n := range names {
		h, err := fleet.Host(n)
		if err != nil {
			diags.AddAttributeError(path.Root("host"), "Unknown Host", err.Error())
			continue
		}
		f.hosts = append(f.hosts, h)
	}
	return f, diags
}

func (f listFilter) nameMatches(name string) bool { return strings.HasPrefix(name, f.prefix) }

func (f listFilter) tagsMatch(tags map[string]string) bool {
	for k, v := range f.tags {
		if got, ok := tags[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// unlistable is the warning for an object whose name no kvm_vm or kvm_disk
// can carry (made by another tool with a name outside the name pattern).
func unlistable(kind, id string, err error) list.ListResult {
	var diags diag.Diagnostics
	diags.AddWarning("Cannot List "+strings.ToUpper(kind[:1])+kind[1:],
		fmt.Sprintf("%s %s is left out: it cannot be imported (%s). Rename it with virsh to manage it with Terraform.", kind, id, err))
	return list.ListResult{Diagnostics: diags}
}

// hostListError is the result for a host whose objects could not be
// listed: a warning when it is down (the other hosts still list), an error
// otherwise.
func hostListError(what string, h *FleetHost, err error) list.ListResult {
	var diags diag.Diagnostics
	if hostUnreachable(err) {
		warnHostUnreachable(&diags, h.Name, what, err)
	} else {
		addAPIError(&diags, "Unable to List "+strings.ToUpper(what[:1])+what[1:], "host "+h.Name, err)
	}
	return list.ListResult{Diagnostics: diags}
}

func (r *VMListResource) List(ctx context.Context, req list.ListRequest, stream *list.ListResultsStream) {
	filter, diags := decodeListConfig(ctx, r.fleet, req)
	if diags.HasError() {
		stream.Results = list.ListResultsStreamDiagnostics(diags)
		return
	}
	stream.Results = func(push func(list.ListResult) bool) {
		var n int64
		for _, h := range filter.hosts {
			vms, err := h.Client.ListVMs(ctx)
			if err != nil {
				if !push(hostListError("VMs", h, err)) {
					return
				}
				continue
			}
			for i := range vms {
				vm := &vms[i]
				if !filter.nameMatches(vm.Name) || !filter.tagsMatch(vm.Tags) {
					continue
				}
				if err := api.ValidateName("VM", vm.Name); err != nil {
					if !push(unlistable("VM", VMID(h.Name, vm.Name), err)) {
						return
					}
					continue
				}
				if req.Limit > 0 && n >= req.Limit {
					return
				}
				n++
				if !push(r.result(ctx, req, h.Name, vm)) {
					return
				}
			}
		}
	}
}

// result is what an import of the VM would put in state: ImportState's
// defaults, then Read.
func (r *VMListResource) result(ctx context.Context, req list.ListRequest, host string, vm *api.VM) list.ListResult {
	res := req.NewListResult(ctx)
	res.DisplayName = VMID(host, vm.Name)
	res.Diagnostics.Append(res.Identity.Set(ctx, vmIdentityModel{Host: types.StringValue(host), Name: types.StringValue(vm.Name)})...)
	vm = representableVM(vm, &res.Diagnostics)
	if req.IncludeResource {
		prior := vmModel{Migration: types.StringValue(vmDefaultMigration),
			Timeouts: vmImportTimeouts()}
		state, d := vmFromAPI(ctx, prior, host, vm)
		res.Diagnostics.Append(d...)
		res.Diagnostics.Append(res.Resource.Set(ctx, &state)...)
	}
	return res
}

func (r *DiskListResource) List(ctx context.Context, req list.ListRequest, stream *list.ListResultsStream) {
	filter, diags := decodeListConfig(ctx, r.fleet, req)
	if diags.HasError() {
		stream.Results = list.ListResultsStreamDiagnostics(diags)
		return
	}
	stream.Results = func(push func(list.ListResult) bool) {
		var n int64
		for _, h := range filter.hosts {
			inv, err := h.Client.Host(ctx)
			if err != nil {
				if !push(hostListError("disks", h, err)) {
					return
				}
				continue
			}
			// With a tag filter: the volumes the matching VMs attach.
			var tagged map[string]bool
			if len(filter.tags) > 0 {
				vms, err := h.Client.ListVMs(ctx)
				if err != nil {
					if !push(hostListError("disks", h, err)) {
						return
					}
					continue
				}
				tagged = map[string]bool{}
				for _, vm := range vms {
					if filter.tagsMatch(vm.Tags) {
						for _, d := range vm.Disks {
							tagged[d.Pool+"/"+d.Volume] = true
						}
					}
				}
			}
			for _, p := range inv.Pools {
				vols, err := h.Client.ListVolumes(ctx, p.Name)
				if err != nil {
					if !push(hostListError("disks", h, fmt.Errorf("pool %s: %w", p.Name, err))) {
						return
					}
					continue
				}
				for i := range vols {
					v := &vols[i]
					if !filter.nameMatches(v.Name) || (tagged != nil && !tagged[p.Name+"/"+v.Name]) {
						continue
					}
					if strings.HasSuffix(v.Name, api.SeedVolumeSuffix) {
						continue // a VM's cloud-init seed: part of its kvm_vm
					}
					if err := api.ValidateName("disk", v.Name); err != nil {
						if !push(unlistable("disk", DiskID(h.Name, p.Name, v.Name), err)) {
							return
						}
						continue
					}
					if req.Limit > 0 && n >= req.Limit {
						return
					}
					n++
					if !push(diskListResult(ctx, req, h.Name, p.Name, v)) {
						return
					}
				}
			}
		}
	}
}

func diskListResult(ctx context.Context, req list.ListRequest, host, pool string, v *api.Volume) list.ListResult {
	res := req.NewListResult(ctx)
	if v.Pool == "" {
		v.Pool = pool
	}
	res.DisplayName = DiskID(host, v.Pool, v.Name)
	res.Diagnostics.Append(res.Identity.Set(ctx, diskIdentityModel{Host: types.StringValue(host),
		Pool: types.StringValue(v.Pool), Name: types.StringValue(v.Name)})...)
	if req.IncludeResource {
		var m diskModel
		m.Timeouts.Object = types.ObjectNull(timeoutsAttrTypes)
		m.fromAPI(host, v)
		res.Diagnostics.Append(res.Resource.Set(ctx, &m)...)
	}
	return res
}

// vmImportTimeouts is the timeouts block ImportState leaves: absent.
func vmImportTimeouts() timeouts.Value {
	return timeouts.Value{Object: types.ObjectNull(timeoutsAttrTypes)}
}

// representableVM returns vm without the devices a kvm_vm cannot describe,
// each named in a warning: a disk that is not a volume of a pool the host
// serves (a file or device attached by hand), a network interface on no
// kvm_network (a Linux bridge, a libvirt network, macvtap). They stay on
// the domain: kvm-hostd refuses to redefine a domain that has such devices
// (which would drop them), so such a VM can be imported, read and
// destroyed, but changing it needs them moved or detached first.
func representableVM(vm *api.VM, diags *diag.Diagnostics) *api.VM {
	lost := unrepresentableDevices(vm)
	if len(lost) == 0 {
		return vm
	}
	out := *vm
	out.Disks = nil
	for _, d := range vm.Disks {
		if d.Pool != "" && d.Volume != "" {
			out.Disks = append(out.Disks, d)
		}
	}
	out.Interfaces = nil
	for _, n := range vm.Interfaces {
		if n.Network != "" {
			out.Interfaces = append(out.Interfaces, n)
		}
	}
	diags.AddWarning("VM Has Devices kvm_vm Cannot Describe",
		fmt.Sprintf("VM %s has devices that are left out of its kvm_vm state (they stay on the domain, untouched):\n  - %s\n\n"+
			"The VM can be imported, read and destroyed; kvm-hostd refuses changes to it "+
			"until these are detached or moved (disks into a pool as kvm_disk volumes, interfaces onto a kvm_network).",
			vm.Name, strings.Join(lost, "\n  - ")))
	return &out
}

// unrepresentableDevices names vm's devices a kvm_vm cannot describe.
func unrepresentableDevices(vm *api.VM) []string {
	var lost []string
	for _, d := range vm.Disks {
		if d.Pool == "" || d.Volume == "" {
			lost = append(lost, fmt.Sprintf("disk %s: not a volume of a storage pool the host serves", orUnnamed(d.Target)))
		}
	}
	for _, n := range vm.Interfaces {
		if n.Network != "" {
			continue
		}
		where := "not attached to a kvm_network"
		if n.Bridge != "" {
			where = "on bridge " + n.Bridge + ", which is no kvm_network"
		}
		lost = append(lost, fmt.Sprintf("network interface %s: %s", orUnnamed(n.MAC), where))
	}
	return lost
}

func orUnnamed(s string) string {
	if s == "" {
		return "(unnamed)"
	}
	return s
}
