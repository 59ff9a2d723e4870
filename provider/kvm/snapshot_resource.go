package kvm

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/terraform-plugin-framework-timeouts/resource/timeouts"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/booldefault"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/boolplanmodifier"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/planmodifier"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/stringplanmodifier"
	"github.com/hashicorp/terraform-plugin-framework/schema/validator"
	"github.com/hashicorp/terraform-plugin-log/tflog"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

var (
	_ resource.ResourceWithConfigure   = &SnapshotResource{}
	_ resource.ResourceWithImportState = &SnapshotResource{}
	_ resource.ResourceWithModifyPlan  = &SnapshotResource{}
)

const (
	snapshotCreateTimeout = 20 * time.Minute
	snapshotReadTimeout   = 5 * time.Minute
	snapshotUpdateTimeout = 20 * time.Minute
	snapshotDeleteTimeout = 10 * time.Minute
)

// SnapshotResource manages kvm_snapshot: a libvirt snapshot of a VM.
type SnapshotResource struct{ fleet *Fleet }

// NewSnapshotResource is the kvm_snapshot factory.
func NewSnapshotResource() resource.Resource { return &SnapshotResource{} }

func (r *SnapshotResource) Metadata(_ context.Context, req resource.MetadataRequest, resp *resource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_snapshot"
}

var uuidPattern = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// vmRefFormat accepts "<host>/<vm name>" or a VM UUID.
func vmRefFormat() validator.String {
	return stringCheck{
		desc: "must be `<host>/<vm name>` or a VM's UUID",
		check: func(s string) error {
			if uuidPattern.MatchString(s) {
				return nil
			}
			_, vm, err := ParseVMID(s)
			if err != nil {
				return fmt.Errorf("vm_id %q must be \"<host>/<vm name>\" (e.g. \"${kvm_vm.web.host}/${kvm_vm.web.name}\") or a VM UUID (kvm_vm.web.id)", s)
			}
			return api.ValidateName("VM", vm)
		},
	}
}

func (r *SnapshotResource) Schema(ctx context.Context, _ resource.SchemaRequest, resp *resource.SchemaResponse) {
	resp.Schema = schema.Schema{
		MarkdownDescription: "A snapshot of a VM (`kvm_vm`), taken on the VM's host. Setting or changing `revert_trigger` " +
			"reverts the VM to this snapshot in place.\n\n" +
			"It is an internal qcow2 snapshot of every disk of the VM (and of its memory when running): all of them or none. " +
			"Disks on a shared directory pool (`kvm-hostd --shared-pool`) work like local ones: the snapshot is written into " +
			"the shared file, and its record is kept by the libvirt of the VM's host. libvirt cannot migrate a VM that has " +
			"snapshots, so such a VM does not move to another host (the move fails and the VM stays where it is): delete its " +
			"snapshots first. A VM with an encrypted disk cannot be snapshotted. A VM with a disk on a Ceph rbd pool cannot be " +
			"snapshotted either: the plan fails (and the host refuses with 409), rather than take a partial snapshot of its other disks.",
		Attributes: map[string]schema.Attribute{
			"id": schema.StringAttribute{
				MarkdownDescription: "`<host>/<vm name>/<snapshot name>`; also the import ID.",
				Computed:            true,
				PlanModifiers:       []planmodifier.String{stringplanmodifier.UseStateForUnknown()},
			},
			"vm_id": schema.StringAttribute{
				MarkdownDescription: "The VM to snapshot, either as `<host>/<vm name>` " +
					"(`vm_id = \"${kvm_vm.web.host}/${kvm_vm.web.name}\"`, the `kvm_vm` import ID) or as the VM's UUID " +
					"(`vm_id = kvm_vm.web.id`), which is looked up on every configured host. After `terraform import` " +
					"it is in the `<host>/<vm name>` form. Changing it replaces the snapshot.",
				Required:      true,
				Validators:    []validator.String{vmRefFormat()},
				PlanModifiers: []planmodifier.String{stringplanmodifier.RequiresReplace()},
			},
			"name": schema.StringAttribute{
				MarkdownDescription: "Snapshot name, unique per VM: " + api.NamePatternDescription + ". Changing it replaces the snapshot.",
				Required:            true,
				Validators:          []validator.String{validName("snapshot")},
				PlanModifiers:       []planmodifier.String{stringplanmodifier.RequiresReplace()},
			},
			"description": schema.StringAttribute{
				MarkdownDescription: "Free text kept with the snapshot exactly as written (up to 4096 bytes). " +
					"The host cannot edit a snapshot's description, so changing it replaces the snapshot " +
					"(the new one captures the VM as it is then).",
				Optional:      true,
				Validators:    []validator.String{description()},
				PlanModifiers: []planmodifier.String{stringplanmodifier.RequiresReplace()},
			},
			"include_memory": schema.BoolAttribute{
				MarkdownDescription: "Also capture the VM's memory: a full checkpoint, which needs a running VM. " +
					"Defaults to `false`, a snapshot of the disks, which needs a stopped VM: libvirt's internal snapshots " +
					"cannot leave the memory of a running VM out, so that combination is refused at plan time " +
					"(and by the host). Read back from libvirt. Changing it replaces the snapshot.",
				Optional: true, Computed: true,
				Default:       booldefault.StaticBool(false),
				PlanModifiers: []planmodifier.Bool{boolplanmodifier.RequiresReplace()},
			},
			"revert_trigger": schema.StringAttribute{
				MarkdownDescription: "Any string. When it changes to a new non-null value after the snapshot exists, " +
					"the VM is reverted to this snapshot in place (in the run state it had when the snapshot was taken). " +
					"Setting it when the snapshot is created does not revert. This is the way without actions (OpenTofu); with Terraform " +
					"≥ 1.14 the `kvm_snapshot_revert` action reverts on demand (`terraform apply -invoke`) without a trigger value.",
				Optional: true,
			},
			"created_at": schema.StringAttribute{
				MarkdownDescription: "When the snapshot was taken (RFC 3339, UTC).",
				Computed:            true,
				PlanModifiers:       []planmodifier.String{stringplanmodifier.UseStateForUnknown()},
			},
			"parent": schema.StringAttribute{
				MarkdownDescription: "Name of the snapshot this one was taken on top of; null for the VM's first snapshot.",
				Computed:            true,
			},
		},
		Blocks: map[string]schema.Block{
			"timeouts": timeouts.Block(ctx, timeouts.Opts{Create: true, Read: true, Update: true, Delete: true}),
		},
	}
}

func (r *SnapshotResource) Configure(_ context.Context, req resource.ConfigureRequest, resp *resource.ConfigureResponse) {
	r.fleet = fleetFrom(req.ProviderData, &resp.Diagnostics)
}

// ModifyPlan checks that a "<host>/<vm>" vm_id names a configured host and
// computes the ID when it can be known at plan time.
func (r *SnapshotResource) ModifyPlan(ctx context.Context, req resource.ModifyPlanRequest, resp *resource.ModifyPlanResponse) {
	if req.Plan.Raw.IsNull() || !req.State.Raw.IsNull() {
		return // destroy, or update (where everything but revert_trigger replaces)
	}
	var plan snapshotModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	if resp.Diagnostics.HasError() || plan.VMID.IsUnknown() || plan.VMID.IsNull() {
		return
	}
	r.checkRBDAtPlan(ctx, plan, resp)
	if uuidPattern.MatchString(plan.VMID.ValueString()) {
		r.checkMemoryAtPlan(ctx, plan, resp)
		return
	}
	host, vm, err := ParseVMID(plan.VMID.ValueString())
	if err != nil {
		return // reported by the validator
	}
	if r.fleet != nil {
		if _, err := r.fleet.Host(host); err != nil {
			resp.Diagnostics.AddAttributeError(path.Root("vm_id"), "Unknown Host", err.Error())
			return
		}
	}
	if !plan.Name.IsUnknown() && !plan.Name.IsNull() {
		resp.Diagnostics.Append(resp.Plan.SetAttribute(ctx, path.Root("id"), SnapshotID(host, vm, plan.Name.ValueString()))...)
	}
	r.checkMemoryAtPlan(ctx, plan, resp)
}

// checkMemoryAtPlan refuses, at plan time, the snapshots the host would
// refuse: one without memory of a running VM (libvirt cannot take it; see
// api.SnapshotNeedsMemoryReason) and one with memory of a stopped VM. It
// asks the VM's host about the VM as it is now; a VM not created yet, or a
// host that does not answer, leaves the check to the host at apply.
func (r *SnapshotResource) checkMemoryAtPlan(ctx context.Context, plan snapshotModel, resp *resource.ModifyPlanResponse) {
	if r.fleet == nil || plan.IncludeMemory.IsUnknown() || plan.IncludeMemory.IsNull() {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, inventoryTimeout)
	defer cancel()
	h, vm, err := r.resolveVM(ctx, plan.VMID.ValueString())
	if err != nil {
		return
	}
	v, err := h.Client.GetVM(ctx, vm)
	if err != nil {
		return
	}
	active := v.State == api.StateRunning || v.State == api.StatePaused
	switch mem := plan.IncludeMemory.ValueBool(); {
	case active && !mem:
		resp.Diagnostics.AddAttributeError(path.Root("include_memory"), "Snapshot of a Running VM Needs Memory",
			fmt.Sprintf("VM %s is %s: %s.", VMID(h.Name, vm), v.State, api.SnapshotNeedsMemoryReason))
	case !active && mem:
		resp.Diagnostics.AddAttributeError(path.Root("include_memory"), "Snapshot With Memory Needs a Running VM",
			fmt.Sprintf("VM %s is %s: a snapshot with memory (include_memory = true) needs a running VM. Start it (running = true) or set include_memory = false.", VMID(h.Name, vm), v.State))
	}
}

// resolveVM finds the host and domain name a vm_id refers to. A UUID is
// looked up on every configured host at once; hosts that cannot be reached
// are named when the VM is not found elsewhere.
func (r *SnapshotResource) resolveVM(ctx context.Context, vmID string) (*FleetHost, string, error) {
	if !uuidPattern.MatchString(vmID) {
		host, vm, err := ParseVMID(vmID)
		if err != nil {
			return nil, "", err
		}
		h, err := r.fleet.Host(host)
		if err != nil {
			return nil, "", err
		}
		return h, vm, nil
	}
	type hit struct {
		host *FleetHost
		vm   string
	}
	var (
		mu     sync.Mutex
		hits   []hit
		failed []string
		wg     sync.WaitGroup
	)
	for _, name := range r.fleet.Names() {
		h := r.fleet.hosts[name]
		wg.Add(1)
		go func() {
			defer wg.Done()
			lctx, cancel := context.WithTimeout(ctx, inventoryTimeout)
			defer cancel()
			vms, err := h.Client.ListVMs(lctx)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed = append(failed, fmt.Sprintf("%s (%s)", h.Name, err))
				return
			}
			for _, v := range vms {
				if strings.EqualFold(v.UUID, vmID) {
					hits = append(hits, hit{h, v.Name})
				}
			}
		}()
	}
	wg.Wait()
	switch {
	case len(hits) == 1:
		return hits[0].host, hits[0].vm, nil
	case len(hits) > 1:
		var where []string
		for _, h := range hits {
			where = append(where, VMID(h.host.Name, h.vm))
		}
		return nil, "", fmt.Errorf("VM UUID %s is defined on several hosts (%s); use vm_id = \"<host>/<vm name>\"", vmID, strings.Join(where, ", "))
	case len(failed) > 0:
		return nil, "", fmt.Errorf("no VM with UUID %s on the reachable hosts; could not list VMs on: %s", vmID, strings.Join(failed, "; "))
	}
	return nil, "", api.Errorf(api.CodeNotFound, "no VM with UUID %s on any configured host (%s)", vmID, strings.Join(r.fleet.Names(), ", "))
}

func (r *SnapshotResource) Create(ctx context.Context, req resource.CreateRequest, resp *resource.CreateResponse) {
	defer syncIdentity(ctx, &resp.State, req.Plan, resp.Identity, &resp.Diagnostics, snapshotIdentityOf)
	var plan snapshotModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	if resp.Diagnostics.HasError() {
		return
	}
	timeout, diags := plan.Timeouts.Create(ctx, snapshotCreateTimeout)
	resp.Diagnostics.Append(diags...)
	if resp.Diagnostics.HasError() {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	h, vm, err := r.resolveVM(ctx, plan.VMID.ValueString())
	if err != nil {
		resp.Diagnostics.AddAttributeError(path.Root("vm_id"), "Unable to Create Snapshot",
			fmt.Sprintf("snapshot %q of VM %s: %s", plan.Name.ValueString(), plan.VMID.ValueString(), err))
		return
	}
	id := SnapshotID(h.Name, vm, plan.Name.ValueString())
	tflog.Debug(ctx, "creating snapshot", map[string]any{"id": id, "include_memory": plan.IncludeMemory.ValueBool()})
	s, err := h.Client.PutSnapshot(ctx, vm, plan.Name.ValueString(), plan.toAPI())
	if err != nil {
		addAPIError(&resp.Diagnostics, "Unable to Create Snapshot", "snapshot "+id, err)
		return
	}
	plan.fromAPI(h.Name, vm, s)
	resp.Diagnostics.Append(resp.State.Set(ctx, &plan)...)
}

func (r *SnapshotResource) Read(ctx context.Context, req resource.ReadRequest, resp *resource.ReadResponse) {
	defer syncIdentity(ctx, &resp.State, req.State, resp.Identity, &resp.Diagnostics, snapshotIdentityOf)
	var state snapshotModel
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() {
		return
	}
	timeout, diags := state.Timeouts.Read(ctx, snapshotReadTimeout)
	resp.Diagnostics.Append(diags...)
	if resp.Diagnostics.HasError() {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	host, vm, name, err := ParseSnapshotID(state.ID.ValueString())
	if err != nil {
		resp.Diagnostics.AddError("Unable to Read Snapshot", err.Error())
		return
	}
	h, err := r.fleet.Host(host)
	if err != nil {
		resp.Diagnostics.AddError("Unable to Read Snapshot", fmt.Sprintf("snapshot %s: %s", state.ID.ValueString(), err))
		return
	}
	if evacuated(ctx, h, "snapshot "+state.ID.ValueString(), func() string {
		return "Lost: the snapshot itself, which lived in the VM's disks and memory on that host; it is taken anew of the re-created VM."
	}, resp) {
		return
	}
	s, err := h.Client.GetSnapshot(ctx, vm, name)
	if isNotFound(err) {
		// The snapshot or its whole VM is gone.
		tflog.Warn(ctx, "snapshot is gone; removing it from state", map[string]any{"id": state.ID.ValueString()})
		resp.State.RemoveResource(ctx)
		return
	}
	if hostUnreachable(err) {
		warnHostUnreachable(&resp.Diagnostics, host, "snapshot "+state.ID.ValueString(), err)
		return
	}
	if err != nil {
		addAPIError(&resp.Diagnostics, "Unable to Read Snapshot", "snapshot "+state.ID.ValueString(), err)
		return
	}
	state.fromAPI(host, vm, s)
	resp.Diagnostics.Append(resp.State.Set(ctx, &state)...)
}

// Update can only be a revert_trigger (or timeouts) change: everything
// else replaces the snapshot.
func (r *SnapshotResource) Update(ctx context.Context, req resource.UpdateRequest, resp *resource.UpdateResponse) {
	defer syncIdentity(ctx, &resp.State, req.Plan, resp.Identity, &resp.Diagnostics, snapshotIdentityOf)
	var plan, state snapshotModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() {
		return
	}
	timeout, diags := plan.Timeouts.Update(ctx, snapshotUpdateTimeout)
	resp.Diagnostics.Append(diags...)
	if resp.Diagnostics.HasError() {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	host, vm, name, err := ParseSnapshotID(state.ID.ValueString())
	if err != nil {
		resp.Diagnostics.AddError("Unable to Update Snapshot", err.Error())
		return
	}
	h, err := r.fleet.Host(host)
	if err != nil {
		resp.Diagnostics.AddError("Unable to Update Snapshot", fmt.Sprintf("snapshot %s: %s", state.ID.ValueString(), err))
		return
	}
	var s *api.Snapshot
	if !plan.RevertTrigger.IsNull() && !plan.RevertTrigger.Equal(state.RevertTrigger) {
		tflog.Info(ctx, "reverting VM to snapshot", map[string]any{"id": state.ID.ValueString(), "revert_trigger": plan.RevertTrigger.ValueString()})
		s, err = h.Client.RevertSnapshot(ctx, vm, name)
		if err != nil {
			addAPIError(&resp.Diagnostics, "Unable to Revert to Snapshot", "snapshot "+state.ID.ValueString(), err)
			return
		}
	} else if s, err = h.Client.GetSnapshot(ctx, vm, name); err != nil {
		addAPIError(&resp.Diagnostics, "Unable to Read Snapshot", "snapshot "+state.ID.ValueString(), err)
		return
	}
	plan.fromAPI(host, vm, s)
	resp.Diagnostics.Append(resp.State.Set(ctx, &plan)...)
}

func (r *SnapshotResource) Delete(ctx context.Context, req resource.DeleteRequest, resp *resource.DeleteResponse) {
	var state snapshotModel
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() {
		return
	}
	timeout, diags := state.Timeouts.Delete(ctx, snapshotDeleteTimeout)
	resp.Diagnostics.Append(diags...)
	if resp.Diagnostics.HasError() {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	host, vm, name, err := ParseSnapshotID(state.ID.ValueString())
	if err != nil {
		resp.Diagnostics.AddError("Unable to Delete Snapshot", err.Error())
		return
	}
	h, err := r.fleet.Host(host)
	if err != nil {
		resp.Diagnostics.AddError("Unable to Delete Snapshot", fmt.Sprintf("snapshot %s: %s", state.ID.ValueString(), err))
		return
	}
	if err := h.Client.DeleteSnapshot(ctx, vm, name); err != nil && !isNotFound(err) {
		addAPIError(&resp.Diagnostics, "Unable to Delete Snapshot", "snapshot "+state.ID.ValueString(), err)
	}
}

func (r *SnapshotResource) ImportState(ctx context.Context, req resource.ImportStateRequest, resp *resource.ImportStateResponse) {
	if !importIDFromIdentity(ctx, &req, resp, "host", "vm", "name") {
		return
	}
	_, vm, name, err := ParseSnapshotID(req.ID)
	if err == nil {
		if err = api.ValidateName("VM", vm); err == nil {
			err = api.ValidateName("snapshot", name)
		}
	}
	if err != nil {
		resp.Diagnostics.AddError("Invalid Import ID", err.Error())
		return
	}
	resp.Diagnostics.Append(resp.State.SetAttribute(ctx, path.Root("id"), req.ID)...)
}
