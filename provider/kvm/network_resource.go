package kvm

import (
	"context"
	"fmt"
	"github.com/hashicorp/terraform-plugin-framework/diag"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/terraform-plugin-framework-timeouts/resource/timeouts"
	"github.com/hashicorp/terraform-plugin-framework-validators/int64validator"
	"github.com/hashicorp/terraform-plugin-framework-validators/stringvalidator"
	"github.com/hashicorp/terraform-plugin-framework/attr"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/planmodifier"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/stringplanmodifier"
	"github.com/hashicorp/terraform-plugin-framework/schema/validator"
	"github.com/hashicorp/terraform-plugin-framework/types"
	"github.com/hashicorp/terraform-plugin-log/tflog"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

var (
	_ resource.ResourceWithConfigure        = &NetworkResource{}
	_ resource.ResourceWithImportState      = &NetworkResource{}
	_ resource.ResourceWithModifyPlan       = &NetworkResource{}
	_ resource.ResourceWithConfigValidators = &NetworkResource{}
)

// statusReady is a host's status when its bridge (and tunnels) match.
const statusReady = "ready"

// networkReadTimeout bounds a refresh, so a host that accepts connections
// but never answers is reported as unreachable instead of hanging the plan.
const networkReadTimeout = 2 * time.Minute

// NetworkResource is kvm_network: an OVS bridge realized on each host it
// spans, joined by tunnels when it is an overlay.
type NetworkResource struct{ fleet *Fleet }

// NewNetworkResource is the kvm_network factory.
func NewNetworkResource() resource.Resource { return &NetworkResource{} }

type networkModel struct {
	ID         types.String   `tfsdk:"id"`
	Name       types.String   `tfsdk:"name"`
	Hosts      types.Set      `tfsdk:"hosts"`
	VLAN       types.Int64    `tfsdk:"vlan"`
	Overlay    types.String   `tfsdk:"overlay"`
	VNI        types.Int64    `tfsdk:"vni"`
	MTU        types.Int64    `tfsdk:"mtu"`
	Bridge     types.String   `tfsdk:"bridge"`
	HostStatus types.Map      `tfsdk:"host_status"`
	Timeouts   timeouts.Value `tfsdk:"timeouts"`
}

func (r *NetworkResource) Metadata(_ context.Context, req resource.MetadataRequest, resp *resource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_network"
}

func (r *NetworkResource) Schema(ctx context.Context, _ resource.SchemaRequest, resp *resource.SchemaResponse) {
	resp.Schema = schema.Schema{
		MarkdownDescription: "An Open vSwitch bridge realized on every host the network spans. VM ports get the network's " +
			"`vlan` as their access tag. With an `overlay`, the hosts are joined by VXLAN or Geneve tunnels between their " +
			"`tunnel_ip`s, so VMs on different hosts share one L2 segment. Adding or removing a host adds or removes exactly " +
			"its bridge and tunnels.",
		Attributes: map[string]schema.Attribute{
			"id": schema.StringAttribute{
				Computed: true, MarkdownDescription: "The network name.",
				PlanModifiers: []planmodifier.String{stringplanmodifier.UseStateForUnknown()},
			},
			"name": schema.StringAttribute{
				Required: true, MarkdownDescription: "Network name (" + api.NamePatternDescription + "). Changing it replaces the network.",
				Validators:    []validator.String{validName("network")},
				PlanModifiers: []planmodifier.String{stringplanmodifier.RequiresReplace()},
			},
			"hosts": schema.SetAttribute{
				Optional: true, Computed: true, ElementType: types.StringType,
				MarkdownDescription: "Hosts the network spans. Defaults to every configured host.",
			},
			"vlan": schema.Int64Attribute{
				Optional: true, MarkdownDescription: "Access VLAN tag (1–4094) of the VM ports on this network. Changing or removing it " +
					"retags the ports of the VMs on the network in place, live for running VMs (no restart).",
				Validators: []validator.Int64{int64validator.Between(api.MinVLAN, api.MaxVLAN)},
			},
			"overlay": schema.StringAttribute{
				Optional: true, MarkdownDescription: "Overlay encapsulation joining the hosts: `vxlan` or `geneve`. Requires `vni`.",
				Validators: []validator.String{stringvalidator.OneOf(api.OverlayVXLAN, api.OverlayGeneve)},
			},
			"vni": schema.Int64Attribute{
				Optional: true, MarkdownDescription: "Overlay network identifier (1–16777215); required with `overlay`.",
				Validators: []validator.Int64{int64validator.Between(api.MinVNI, api.MaxVNI)},
			},
			"mtu": schema.Int64Attribute{
				Optional: true, MarkdownDescription: "MTU of the bridge (576–9216). Leave room for the overlay header (50 bytes for VXLAN).",
				Validators: []validator.Int64{int64validator.Between(api.MinMTU, api.MaxMTU)},
			},
			"bridge": schema.StringAttribute{
				Computed: true, MarkdownDescription: "Name of the OVS bridge on every host (derived from the name).",
				PlanModifiers: []planmodifier.String{stringplanmodifier.UseStateForUnknown()},
			},
			"host_status": schema.MapAttribute{
				Computed: true, ElementType: types.StringType,
				MarkdownDescription: "Per host: `ready` when the bridge and its tunnels match the configuration, otherwise what " +
					"drifted (for example a tunnel deleted out of band). A drifted host shows as a change in the plan and apply repairs it.",
			},
		},
		Blocks: map[string]schema.Block{
			"timeouts": timeouts.Block(ctx, timeouts.Opts{Create: true, Read: true, Update: true, Delete: true}),
		},
	}
}

func (r *NetworkResource) ConfigValidators(context.Context) []resource.ConfigValidator {
	return []resource.ConfigValidator{networkOverlayValidator{}}
}

// networkOverlayValidator: overlay and vni go together.
type networkOverlayValidator struct{}

func (networkOverlayValidator) Description(context.Context) string {
	return "vni is required with overlay, and only allowed with it"
}
func (v networkOverlayValidator) MarkdownDescription(ctx context.Context) string {
	return v.Description(ctx)
}

func (networkOverlayValidator) ValidateResource(ctx context.Context, req resource.ValidateConfigRequest, resp *resource.ValidateConfigResponse) {
	var overlay types.String
	var vni types.Int64
	resp.Diagnostics.Append(req.Config.GetAttribute(ctx, path.Root("overlay"), &overlay)...)
	resp.Diagnostics.Append(req.Config.GetAttribute(ctx, path.Root("vni"), &vni)...)
	if overlay.IsUnknown() || vni.IsUnknown() {
		return
	}
	if !overlay.IsNull() && vni.IsNull() {
		resp.Diagnostics.AddAttributeError(path.Root("vni"), "Missing VNI", fmt.Sprintf("overlay = %q needs a vni (1–16777215).", overlay.ValueString()))
	}
	if overlay.IsNull() && !vni.IsNull() {
		resp.Diagnostics.AddAttributeError(path.Root("overlay"), "VNI Without Overlay", "vni is only meaningful with overlay = \"vxlan\" or \"geneve\".")
	}
}

func (r *NetworkResource) Configure(_ context.Context, req resource.ConfigureRequest, resp *resource.ConfigureResponse) {
	r.fleet = fleetFrom(req.ProviderData, &resp.Diagnostics)
}

// ModifyPlan fills the default host set, checks hosts are configured, and
// plans every host as ready so a drifted host shows as a change.
func (r *NetworkResource) ModifyPlan(ctx context.Context, req resource.ModifyPlanRequest, resp *resource.ModifyPlanResponse) {
	if req.Plan.Raw.IsNull() || r.fleet == nil {
		return
	}
	var plan networkModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	if resp.Diagnostics.HasError() {
		return
	}
	if !plan.Name.IsUnknown() {
		plan.Bridge = types.StringValue(api.BridgeName(plan.Name.ValueString()))
		plan.ID = plan.Name
	}
	var hosts []string
	var cfgHosts types.Set
	resp.Diagnostics.Append(req.Config.GetAttribute(ctx, path.Root("hosts"), &cfgHosts)...)
	if cfgHosts.IsNull() {
		// Not set: every configured host, re-evaluated on each plan so a
		// host whose bridge vanished shows up as being added back.
		plan.Hosts, _ = types.SetValueFrom(ctx, types.StringType, r.fleet.Names())
	}
	if !plan.Hosts.IsUnknown() && !plan.Hosts.IsNull() {
		resp.Diagnostics.Append(plan.Hosts.ElementsAs(ctx, &hosts, false)...)
		var unknown []string
		for _, h := range hosts {
			if _, err := r.fleet.Host(h); err != nil {
				unknown = append(unknown, h)
			}
		}
		if len(unknown) > 0 {
			resp.Diagnostics.AddAttributeError(path.Root("hosts"), "Unknown Hosts",
				fmt.Sprintf("hosts %s are not configured in the provider (configured: %s)", strings.Join(unknown, ", "), strings.Join(r.fleet.Names(), ", ")))
			return
		}
		if len(hosts) == 0 {
			resp.Diagnostics.AddAttributeError(path.Root("hosts"), "No Hosts", "a network must span at least one host")
			return
		}
		status := map[string]string{}
		for _, h := range hosts {
			status[h] = statusReady
		}
		plan.HostStatus, _ = types.MapValueFrom(ctx, types.StringType, status)
	} else {
		plan.HostStatus = types.MapUnknown(types.StringType)
	}
	resp.Diagnostics.Append(resp.Plan.Set(ctx, &plan)...)
}

func (m *networkModel) spec() api.NetworkSpec {
	return api.NetworkSpec{
		VLAN:    m.VLAN.ValueInt64(),
		Overlay: m.Overlay.ValueString(),
		VNI:     m.VNI.ValueInt64(),
		MTU:     m.MTU.ValueInt64(),
	}
}

func (m *networkModel) hostNames(ctx context.Context) []string {
	var hosts []string
	if !m.Hosts.IsNull() && !m.Hosts.IsUnknown() {
		m.Hosts.ElementsAs(ctx, &hosts, false)
	}
	sort.Strings(hosts)
	return hosts
}

// peersFor reads the tunnel IPs of the network's hosts; an overlay needs
// every host's.
func (r *NetworkResource) peers(ctx context.Context, hosts []string, overlay string) ([]api.NetworkPeer, error) {
	if overlay == "" {
		return nil, nil
	}
	invs := r.fleet.Inventories(ctx, hosts)
	peers := make([]api.NetworkPeer, 0, len(invs))
	var problems []string
	for _, inv := range invs {
		switch {
		case !inv.Healthy:
			problems = append(problems, fmt.Sprintf("host %s is unreachable (%s)", inv.Name, inv.Message))
		case inv.TunnelIP == "":
			problems = append(problems, fmt.Sprintf("host %s has no tunnel_ip (start kvm-hostd with --tunnel-ip)", inv.Name))
		default:
			peers = append(peers, api.NetworkPeer{Host: inv.Name, TunnelIP: inv.TunnelIP})
		}
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("overlay needs every host's tunnel IP: %s", strings.Join(problems, "; "))
	}
	return peers, nil
}

// forEachHost runs fn on every host concurrently and reports per-host errors.
func forEachHost(hosts []string, fn func(host string) error) map[string]error {
	var mu sync.Mutex
	errs := map[string]error{}
	var wg sync.WaitGroup
	for _, h := range hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(h); err != nil {
				mu.Lock()
				errs[h] = err
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return errs
}

// describeHostErrors renders "host-b: ..." lines plus what succeeded.
func describeHostErrors(action string, hosts []string, errs map[string]error) string {
	var ok, lines []string
	for _, h := range hosts {
		if err, bad := errs[h]; bad {
			lines = append(lines, fmt.Sprintf("  %s: %s", h, err))
		} else {
			ok = append(ok, h)
		}
	}
	msg := fmt.Sprintf("%s failed on %d of %d hosts:\n%s", action, len(errs), len(hosts), strings.Join(lines, "\n"))
	if len(ok) > 0 {
		msg += fmt.Sprintf("\nIt succeeded on %s, which keep the network; applying again converges (creates are idempotent).", strings.Join(ok, ", "))
	}
	return msg
}

// ensure realizes the network on every host of the plan.
func (r *NetworkResource) ensure(ctx context.Context, plan *networkModel) (map[string]error, error) {
	hosts := plan.hostNames(ctx)
	spec := plan.spec()
	peers, err := r.peers(ctx, hosts, spec.Overlay)
	if err != nil {
		return nil, err
	}
	spec.Peers = peers
	name := plan.Name.ValueString()
	return forEachHost(hosts, func(h string) error {
		fh, err := r.fleet.Host(h)
		if err != nil {
			return err
		}
		_, err = fh.Client.PutNetwork(ctx, name, spec)
		return err
	}), nil
}

// realize runs ensure and reports failures as "Unable to <action> Network",
// naming the hosts that failed and those that succeeded.
func (r *NetworkResource) realize(ctx context.Context, plan *networkModel, action, doing string, diags *diag.Diagnostics) bool {
	errs, err := r.ensure(ctx, plan)
	summary := "Unable to " + action + " Network"
	if err != nil {
		diags.AddError(summary, fmt.Sprintf("network %s: %s", plan.Name.ValueString(), err))
		return false
	}
	if len(errs) > 0 {
		diags.AddError(summary, describeHostErrors(doing+" network "+plan.Name.ValueString(), plan.hostNames(ctx), errs))
		return false
	}
	return true
}

func (r *NetworkResource) Create(ctx context.Context, req resource.CreateRequest, resp *resource.CreateResponse) {
	var plan networkModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	if resp.Diagnostics.HasError() {
		return
	}
	timeout, diags := plan.Timeouts.Create(ctx, 10*time.Minute)
	resp.Diagnostics.Append(diags...)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if !r.realize(ctx, &plan, "Create", "creating", &resp.Diagnostics) {
		return
	}
	r.readInto(ctx, &plan, false)
	resp.Diagnostics.Append(resp.State.Set(ctx, &plan)...)
}

// readInto refreshes host_status (and the spec from the first host that
// has the network). With pruneMissing, hosts where the bridge is gone are
// dropped from hosts, so the plan shows them being added back. Hosts that
// could not be read keep their prior status and are returned in unread.
func (r *NetworkResource) readInto(ctx context.Context, m *networkModel, pruneMissing bool) (found bool, unread map[string]error) {
	hosts := m.hostNames(ctx)
	name := m.Name.ValueString()
	prior := map[string]string{}
	if !m.HostStatus.IsNull() && !m.HostStatus.IsUnknown() {
		m.HostStatus.ElementsAs(ctx, &prior, false)
	}
	type result struct {
		net *api.Network
		err error
	}
	results := make([]result, len(hosts))
	var wg sync.WaitGroup
	for i, h := range hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fh, err := r.fleet.Host(h)
			if err != nil {
				results[i].err = err
				return
			}
			results[i].net, results[i].err = fh.Client.GetNetwork(ctx, name)
		}()
	}
	wg.Wait()

	// The peers each host should have are the other hosts of the network.
	status := map[string]string{}
	var present []string
	var sample *api.Network
	for i, h := range hosts {
		res := results[i]
		switch {
		case res.err != nil && isNotFound(res.err):
			if !pruneMissing {
				present = append(present, h)
				status[h] = "missing"
			}
		case res.err != nil:
			// Keep what we knew, so one host being down does not turn
			// into a plan to change the network.
			tflog.Warn(ctx, "cannot read network on host", map[string]any{"network": name, "host": h, "error": res.err.Error()})
			if unread == nil {
				unread = map[string]error{}
			}
			unread[h] = res.err
			present = append(present, h)
			if s, ok := prior[h]; ok {
				status[h] = s
			} else {
				status[h] = statusReady
			}
		default:
			found = true
			present = append(present, h)
			if sample == nil {
				sample = res.net
			}
			status[h] = networkDrift(res.net, h, hosts, m)
		}
	}
	if sample != nil {
		m.Bridge = types.StringValue(sample.Bridge)
		m.VLAN = optInt64(sample.VLAN)
		m.Overlay = optString(sample.Overlay)
		m.VNI = optInt64(sample.VNI)
		m.MTU = optInt64(sample.MTU)
	}
	m.ID = types.StringValue(name)
	m.Hosts, _ = types.SetValueFrom(ctx, types.StringType, present)
	m.HostStatus, _ = types.MapValueFrom(ctx, types.StringType, status)
	return found, unread
}

// networkDrift compares one host's bridge with what the network should be
// there: tunnels to exactly the other hosts when it is an overlay.
func networkDrift(n *api.Network, host string, hosts []string, m *networkModel) string {
	if n.Overlay == "" {
		return statusReady
	}
	have := map[string]bool{}
	for _, t := range n.Tunnels {
		have[t.Peer] = true
	}
	var missing []string
	for _, h := range hosts {
		if h != host && !have[h] {
			missing = append(missing, h)
		}
	}
	if len(missing) > 0 {
		return "tunnels missing to " + strings.Join(missing, ", ")
	}
	return statusReady
}

func optInt64(v int64) types.Int64 {
	if v == 0 {
		return types.Int64Null()
	}
	return types.Int64Value(v)
}

func optString(s string) types.String {
	if s == "" {
		return types.StringNull()
	}
	return types.StringValue(s)
}

func (r *NetworkResource) Read(ctx context.Context, req resource.ReadRequest, resp *resource.ReadResponse) {
	var state networkModel
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() {
		return
	}
	if state.Hosts.IsNull() || len(state.hostNames(ctx)) == 0 {
		state.Hosts, _ = types.SetValueFrom(ctx, types.StringType, r.fleet.Names())
	}
	timeout, diags := state.Timeouts.Read(ctx, networkReadTimeout)
	resp.Diagnostics.Append(diags...)
	readCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	found, unread := r.readInto(readCtx, &state, true)
	for _, h := range slices.Sorted(maps.Keys(unread)) {
		if err := unread[h]; hostUnreachable(err) {
			warnHostUnreachable(&resp.Diagnostics, h, "network "+state.Name.ValueString(), err)
		} else {
			addAPIError(&resp.Diagnostics, "Unable to Read Network", fmt.Sprintf("network %s on host %s", state.Name.ValueString(), h), err)
		}
	}
	if resp.Diagnostics.HasError() {
		return
	}
	if !found && len(state.hostNames(ctx)) == 0 {
		resp.State.RemoveResource(ctx)
		return
	}
	resp.Diagnostics.Append(resp.State.Set(ctx, &state)...)
}

func (r *NetworkResource) Update(ctx context.Context, req resource.UpdateRequest, resp *resource.UpdateResponse) {
	var plan, state networkModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() {
		return
	}
	timeout, diags := plan.Timeouts.Update(ctx, 10*time.Minute)
	resp.Diagnostics.Append(diags...)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if !r.realize(ctx, &plan, "Update", "updating", &resp.Diagnostics) {
		return
	}
	// Hosts that left the network lose its bridge and tunnels.
	keep := map[string]bool{}
	for _, h := range plan.hostNames(ctx) {
		keep[h] = true
	}
	var removed []string
	for _, h := range state.hostNames(ctx) {
		if !keep[h] {
			removed = append(removed, h)
		}
	}
	if errs := r.deleteOn(ctx, plan.Name.ValueString(), removed); len(errs) > 0 {
		resp.Diagnostics.AddError("Unable to Update Network", describeHostErrors("removing network "+plan.Name.ValueString()+" from hosts", removed, errs))
		return
	}
	r.readInto(ctx, &plan, false)
	resp.Diagnostics.Append(resp.State.Set(ctx, &plan)...)
}

func (r *NetworkResource) deleteOn(ctx context.Context, name string, hosts []string) map[string]error {
	return forEachHost(hosts, func(h string) error {
		fh, err := r.fleet.Host(h)
		if err != nil {
			return err
		}
		if err := fh.Client.DeleteNetwork(ctx, name); err != nil && !isNotFound(err) {
			return err
		}
		return nil
	})
}

func (r *NetworkResource) Delete(ctx context.Context, req resource.DeleteRequest, resp *resource.DeleteResponse) {
	var state networkModel
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() {
		return
	}
	timeout, diags := state.Timeouts.Delete(ctx, 10*time.Minute)
	resp.Diagnostics.Append(diags...)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	hosts := state.hostNames(ctx)
	if errs := r.deleteOn(ctx, state.Name.ValueString(), hosts); len(errs) > 0 {
		resp.Diagnostics.AddError("Unable to Delete Network", describeHostErrors("deleting network "+state.Name.ValueString(), hosts, errs))
	}
}

// ImportState takes the network name and finds the hosts that have it.
func (r *NetworkResource) ImportState(ctx context.Context, req resource.ImportStateRequest, resp *resource.ImportStateResponse) {
	if err := api.ValidateName("network", req.ID); err != nil {
		resp.Diagnostics.AddError("Invalid Import ID", fmt.Sprintf("kvm_network import ID is the network name: %s", err))
		return
	}
	m := networkModel{Name: types.StringValue(req.ID), HostStatus: types.MapNull(types.StringType)}
	m.Hosts, _ = types.SetValueFrom(ctx, types.StringType, r.fleet.Names())
	if found, _ := r.readInto(ctx, &m, true); !found {
		resp.Diagnostics.AddError("Cannot Import Network", fmt.Sprintf("network %q exists on none of the configured hosts (%s)", req.ID, strings.Join(r.fleet.Names(), ", ")))
		return
	}
	m.Timeouts = timeouts.Value{Object: types.ObjectNull(map[string]attr.Type{
		"create": types.StringType, "read": types.StringType, "update": types.StringType, "delete": types.StringType,
	})}
	resp.Diagnostics.Append(resp.State.Set(ctx, &m)...)
}
