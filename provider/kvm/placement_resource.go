package kvm

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"

	"github.com/hashicorp/terraform-plugin-framework-validators/int64validator"
	"github.com/hashicorp/terraform-plugin-framework-validators/setvalidator"
	"github.com/hashicorp/terraform-plugin-framework-validators/stringvalidator"
	"github.com/hashicorp/terraform-plugin-framework/attr"
	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/planmodifier"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/stringdefault"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/stringplanmodifier"
	"github.com/hashicorp/terraform-plugin-framework/schema/validator"
	"github.com/hashicorp/terraform-plugin-framework/types"
	"github.com/hashicorp/terraform-plugin-log/tflog"

	"github.com/kvmfleet/terraform-provider-kvm/internal/placement"
)

var (
	_ resource.ResourceWithConfigure  = &PlacementResource{}
	_ resource.ResourceWithModifyPlan = &PlacementResource{}
)

// PlacementResource is kvm_cluster_placement. It has no remote object: the
// assignments are computed at plan time from live host inventory, so that
// `terraform plan` shows where every VM will land, and stored as is.
type PlacementResource struct{ fleet *Fleet }

// NewPlacementResource is the kvm_cluster_placement factory.
func NewPlacementResource() resource.Resource { return &PlacementResource{} }

func (r *PlacementResource) Metadata(_ context.Context, req resource.MetadataRequest, resp *resource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_cluster_placement"
	// Mutable: the assignments are what the identity names, and they change.
	resp.ResourceBehavior.MutableIdentity = true
}

func (r *PlacementResource) Schema(_ context.Context, _ resource.SchemaRequest, resp *resource.SchemaResponse) {
	resp.Schema = schema.Schema{
		MarkdownDescription: "Decides which host each VM goes on, at plan time, from the hosts' live inventory, so " +
			"`terraform plan` shows where VMs will land. Use an assignment as a VM's host: " +
			"`host = kvm_cluster_placement.web.assignments[\"web-1\"]`.\n\n" +
			"Assignments are stable: a key keeps its host while that host is listed, healthy, carries the key's " +
			"`host_labels` and still fits; only new and displaced keys are placed, and every move is reported as a " +
			"plan warning. A request that cannot be satisfied fails the plan with an error naming the key and the " +
			"constraint that failed, unless the request is the one last applied and an unhealthy host is why: then " +
			"every key keeps its host from the last apply, with a warning, so a host that is down never fails the " +
			"plan. Hosts still enforce admission themselves when VMs are created.\n\n" +
			"A key whose VM (the `kvm_vm` named like the key, on the key's current host) has disks on a shared pool (see " +
			"`kvm_host`'s `pools`) only moves to hosts that serve that pool as shared too, so that the VM can follow without " +
			"leaving its disks behind; when no candidate does, the plan fails naming `shared-pool.NAME`. Likewise a key whose VM " +
			"has encrypted disks (`kvm_disk.encryption`) only moves to hosts holding their keys (`key.NAME`, no `host_labels` " +
			"needed); when no candidate holds one, the plan fails naming the key and each candidate host with the keys it holds. " +
			"A new key's VM does not exist yet: give it `host_labels = { \"key.NAME\" = \"true\" }`.",
		Attributes: map[string]schema.Attribute{
			"id": schema.StringAttribute{
				MarkdownDescription: "Always `placement`: the resource has no remote object.",
				Computed:            true,
				PlanModifiers:       []planmodifier.String{stringplanmodifier.UseStateForUnknown()},
			},
			"hosts": schema.SetAttribute{
				MarkdownDescription: "Candidate hosts, by their name in the provider's `hosts`. Defaults to every configured host. " +
					"Hosts that do not answer are left out of the plan; keys placed on them are moved elsewhere.",
				Optional:    true,
				Computed:    true,
				ElementType: types.StringType,
				Validators:  []validator.Set{setvalidator.SizeAtLeast(1)},
			},
			"strategy": schema.StringAttribute{
				MarkdownDescription: "`spread` (default) puts each new VM on the host with the most free capacity; " +
					"`pack` fills the fullest host that still fits, to keep other hosts empty.",
				Optional:   true,
				Computed:   true,
				Default:    stringdefault.StaticString(placement.StrategySpread),
				Validators: []validator.String{stringvalidator.OneOf(placement.StrategySpread, placement.StrategyPack)},
			},
			"request": schema.MapNestedAttribute{
				MarkdownDescription: "What to place, keyed by a name of your choice (typically the VM name). Each key gets one host in `assignments`.",
				Required:            true,
				NestedObject: schema.NestedAttributeObject{Attributes: map[string]schema.Attribute{
					"vcpu": schema.Int64Attribute{
						MarkdownDescription: "vCPUs the VM needs, counted against the host's CPUs × `cpu_overcommit`.",
						Required:            true,
						Validators:          []validator.Int64{int64validator.AtLeast(1)},
					},
					"memory_mib": schema.Int64Attribute{
						MarkdownDescription: "Memory the VM needs in MiB, counted against the host's memory × `memory_overcommit`.",
						Required:            true,
						Validators:          []validator.Int64{int64validator.AtLeast(1)},
					},
					"anti_affinity_group": schema.StringAttribute{
						MarkdownDescription: "Keys with the same anti-affinity group are placed on distinct hosts.",
						Optional:            true,
					},
					"affinity_group": schema.StringAttribute{
						MarkdownDescription: "Keys with the same affinity group are placed together on one host.",
						Optional:            true,
					},
					"host_labels": schema.MapAttribute{
						MarkdownDescription: "Labels the host must carry (every pair), from the host's `--labels` merged with the provider's `hosts.*.labels`. " +
							"Every host also carries `pci.NAME = \"true\"` for each PCI device it names for passthrough (`kvm-hostd --pci-device`) " +
							"and has, so `{ \"pci.gpu0\" = \"true\" }` places the key on a host with device `gpu0` (for a `kvm_vm` with `pci_devices = [\"gpu0\"]`); " +
							"and `key.NAME = \"true\"` for each disk-encryption key it holds (`kvm-hostd --key-dir`), so `{ \"key.prod\" = \"true\" }` " +
							"places a VM whose disks have `encryption = { key = \"prod\" }` only on hosts holding that key.",
						Optional:    true,
						ElementType: types.StringType,
					},
				}},
			},
			"assignments": schema.MapAttribute{
				MarkdownDescription: "Host name for every key of `request`, computed at plan time.",
				Computed:            true,
				ElementType:         types.StringType,
			},
		},
	}
	maps.Copy(resp.Schema.Attributes, placementFleetAttributes())
}

func (r *PlacementResource) Configure(_ context.Context, req resource.ConfigureRequest, resp *resource.ConfigureResponse) {
	r.fleet = fleetFrom(req.ProviderData, &resp.Diagnostics)
}

// ModifyPlan computes the placement, so the plan shows the assignments.
func (r *PlacementResource) ModifyPlan(ctx context.Context, req resource.ModifyPlanRequest, resp *resource.ModifyPlanResponse) {
	if req.Plan.Raw.IsNull() {
		return // destroy
	}
	var plan placementModel
	var configHosts types.Set
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	resp.Diagnostics.Append(req.Config.GetAttribute(ctx, path.Root("hosts"), &configHosts)...)
	var prior *placementModel
	if !req.State.Raw.IsNull() {
		prior = &placementModel{}
		resp.Diagnostics.Append(req.State.Get(ctx, prior)...)
	}
	if resp.Diagnostics.HasError() {
		return
	}
	plan.ID = types.StringValue(placementID)
	moves := r.place(ctx, configHosts, &plan, prior, &resp.Diagnostics)
	if resp.Diagnostics.HasError() {
		return
	}
	if len(moves) > 0 {
		resp.Diagnostics.AddWarning("Placement Changes",
			"kvm_cluster_placement moves these keys to another host:\n"+strings.Join(moves, "\n"))
	}
	resp.Diagnostics.Append(resp.Plan.Set(ctx, &plan)...)
}

// place fills m.Hosts (when configHosts is null) and m.Assignments from
// live inventory, keeping prior's assignments where they still hold. They
// stay unknown when the provider or an input is not known yet. It returns
// one line per key that moves off a previous host.
func (r *PlacementResource) place(ctx context.Context, configHosts types.Set, m, prior *placementModel, diags *diag.Diagnostics) []string {
	unknown := func() {
		m.Assignments = types.MapUnknown(types.StringType)
		if configHosts.IsNull() && r.fleet == nil {
			m.Hosts = types.SetUnknown(types.StringType)
		}
	}
	if r.fleet == nil {
		unknown() // provider not configured yet
		return nil
	}

	// Candidate hosts.
	var names []string
	switch {
	case configHosts.IsUnknown():
		m.Hosts = types.SetUnknown(types.StringType)
		unknown()
		return nil
	case configHosts.IsNull():
		names = r.fleet.Names()
		m.Hosts = hostsSet(names)
	default:
		hostsKnown := true
		for _, v := range configHosts.Elements() {
			if v.IsUnknown() {
				hostsKnown = false
			}
		}
		if !hostsKnown {
			unknown()
			return nil
		}
		diags.Append(configHosts.ElementsAs(ctx, &names, false)...)
		slices.Sort(names)
		var missing []string
		for _, n := range names {
			if _, err := r.fleet.Host(n); err != nil {
				missing = append(missing, fmt.Sprintf("%q", n))
			}
		}
		if len(missing) > 0 {
			diags.AddAttributeError(path.Root("hosts"), "Unknown Hosts",
				fmt.Sprintf("hosts names %s, not configured in the provider's hosts (configured: %s)",
					strings.Join(missing, ", "), strings.Join(r.fleet.Names(), ", ")))
			return nil
		}
	}
	rebalance, rebalanceKnown, d := placementRebalance(ctx, m.Rebalance)
	diags.Append(d...)
	if m.Strategy.IsUnknown() || !requestsKnown(m.Request) || !rebalanceKnown {
		unknown()
		return nil
	}

	reqs, d := toPlacementRequests(ctx, m.Request)
	diags.Append(d...)
	if diags.HasError() {
		return nil
	}
	in := placement.Input{Strategy: m.Strategy.ValueString(), Requests: reqs, Rebalance: rebalance}
	var down []string
	invs := r.fleet.Inventories(ctx, names)
	for _, inv := range invs {
		switch {
		case !inv.Healthy:
			warnHostUnhealthy(diags, inv, "keys on it move to other hosts where they fit, and no new key is placed on it.")
			down = append(down, inv.Name)
		case inv.Maintenance:
			warnHostMaintenance(diags, inv)
			down = append(down, inv.Name)
		}
		in.Hosts = append(in.Hosts, placementHost(inv))
	}

	// Stability: keys keep the host of the last apply. A kept key's VM is
	// already in its host's allocated_* (at the size it was requested with),
	// so it is charged only its growth.
	var previous map[string]string
	var prevReqs map[string]placement.Request
	if prior != nil && requestsKnown(prior.Request) {
		previous, d = stringMap(ctx, prior.Assignments)
		diags.Append(d...)
		prevReqs, d = toPlacementRequests(ctx, prior.Request)
		diags.Append(d...)
		listed := map[string]bool{}
		for _, n := range names {
			listed[n] = true
		}
		in.Previous = previous
		in.Existing = map[string]placement.Resources{}
		for key, host := range previous {
			if q, ok := prevReqs[key]; ok && listed[host] {
				in.Existing[key] = placement.Resources{VCPU: q.VCPU, MemoryMiB: q.MemoryMiB}
			}
		}
	}

	var needs map[string][]keyNeed
	in.Requests, in.Hosts, needs = withSharedPools(ctx, r.fleet, reqs, invs, previous)
	if keysUnheld(diags, needs, invs) {
		return nil
	}
	res, err := placement.Place(in)
	if err != nil {
		var ue *placement.UnsatisfiableError
		if errors.As(err, &ue) && len(down) > 0 && reflect.DeepEqual(reqs, prevReqs) && keepsEveryKey(previous, reqs, names) {
			// The request is the one last applied, so only the host
			// being down makes it unsatisfiable: that must not fail the
			// plan, so the keys stay where they are until it is back.
			diags.AddWarning("Placement Kept",
				fmt.Sprintf("kvm_cluster_placement cannot move its keys off %s, which is unhealthy or in maintenance: %s. Every key keeps its host from the last apply.",
					strings.Join(down, ", "), err))
			m.Assignments = prior.Assignments
			return nil
		}
		if errors.As(err, &ue) {
			for _, f := range ue.Failures {
				diags.AddAttributeError(path.Root("request").AtMapKey(f.Keys[0]), "Unsatisfiable Placement",
					fmt.Sprintf("Cannot place %s (constraint %s): %s", quoteAll(f.Keys), f.Constraint, f.Message))
			}
			return nil
		}
		diags.AddError("Invalid Placement Request", err.Error())
		return nil
	}

	if prior != nil && maps.Equal(previous, res.Assignments) && !prior.Assignments.IsNull() && !prior.Assignments.IsUnknown() {
		// Nothing moved: reuse the state's value, so the plan is empty.
		m.Assignments = prior.Assignments
	} else {
		m.Assignments = assignmentsValue(res.Assignments)
	}

	var moves []string
	for _, key := range slices.Sorted(maps.Keys(res.Moved)) {
		mv := res.Moved[key]
		if mv.From == "" {
			continue // new key: visible in the plan, nothing moves
		}
		moves = append(moves, fmt.Sprintf("%s: %s → %s (%s)", key, mv.From, mv.To, mv.Detail))
	}
	return moves
}

// keepsEveryKey reports whether every requested key has a previous host
// among the candidate hosts, so the previous assignments can stand.
func keepsEveryKey(previous map[string]string, reqs map[string]placement.Request, names []string) bool {
	if len(previous) == 0 {
		return false
	}
	for key := range reqs {
		if h, ok := previous[key]; !ok || !slices.Contains(names, h) {
			return false
		}
	}
	return true
}

func hostsSet(names []string) types.Set {
	elems := make([]attr.Value, len(names))
	for i, n := range names {
		elems[i] = types.StringValue(n)
	}
	return types.SetValueMust(types.StringType, elems)
}

func quoteAll(keys []string) string {
	q := make([]string, len(keys))
	for i, k := range keys {
		q[i] = fmt.Sprintf("%q", k)
	}
	return strings.Join(q, ", ")
}

// Create stores the planned assignments. They are computed here only when
// the plan could not know them (provider or request values unknown then).
func (r *PlacementResource) Create(ctx context.Context, req resource.CreateRequest, resp *resource.CreateResponse) {
	defer syncIdentity(ctx, &resp.State, req.Plan, resp.Identity, &resp.Diagnostics, placementIdentityOf)
	var plan placementModel
	var configHosts types.Set
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	resp.Diagnostics.Append(req.Config.GetAttribute(ctx, path.Root("hosts"), &configHosts)...)
	if resp.Diagnostics.HasError() {
		return
	}
	r.finish(ctx, configHosts, &plan, nil, &resp.Diagnostics)
	if resp.Diagnostics.HasError() {
		return
	}
	resp.Diagnostics.Append(resp.State.Set(ctx, &plan)...)
}

// finish computes what the plan left unknown.
func (r *PlacementResource) finish(ctx context.Context, configHosts types.Set, m, prior *placementModel, diags *diag.Diagnostics) {
	m.ID = types.StringValue(placementID)
	if m.Assignments.IsUnknown() || m.Hosts.IsUnknown() {
		for _, line := range r.place(ctx, configHosts, m, prior, diags) {
			tflog.Warn(ctx, "placement moved a key", map[string]any{"move": line})
		}
		if !diags.HasError() && (m.Assignments.IsUnknown() || m.Hosts.IsUnknown()) {
			diags.AddError("Unable to Compute Placement", "The provider or the request is still unknown at apply time; please report this issue.")
		}
	}
}

// Read keeps the state: placement has no remote object. A host that died
// is noticed by the next plan's ModifyPlan, which moves its keys.
func (r *PlacementResource) Read(ctx context.Context, req resource.ReadRequest, resp *resource.ReadResponse) {
	defer syncIdentity(ctx, &resp.State, req.State, resp.Identity, &resp.Diagnostics, placementIdentityOf)
	var state placementModel
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() {
		return
	}
	resp.Diagnostics.Append(resp.State.Set(ctx, &state)...)
}

func (r *PlacementResource) Update(ctx context.Context, req resource.UpdateRequest, resp *resource.UpdateResponse) {
	defer syncIdentity(ctx, &resp.State, req.Plan, resp.Identity, &resp.Diagnostics, placementIdentityOf)
	var plan, prior placementModel
	var configHosts types.Set
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	resp.Diagnostics.Append(req.State.Get(ctx, &prior)...)
	resp.Diagnostics.Append(req.Config.GetAttribute(ctx, path.Root("hosts"), &configHosts)...)
	if resp.Diagnostics.HasError() {
		return
	}
	r.finish(ctx, configHosts, &plan, &prior, &resp.Diagnostics)
	if resp.Diagnostics.HasError() {
		return
	}
	resp.Diagnostics.Append(resp.State.Set(ctx, &plan)...)
}

// Delete only forgets the placement; the VMs placed by it are separate
// resources.
func (r *PlacementResource) Delete(context.Context, resource.DeleteRequest, *resource.DeleteResponse) {
}
