package kvm

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/terraform-plugin-framework-timeouts/resource/timeouts"
	"github.com/hashicorp/terraform-plugin-framework-validators/int64validator"
	"github.com/hashicorp/terraform-plugin-framework-validators/stringvalidator"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/int64default"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/int64planmodifier"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/planmodifier"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/stringdefault"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/stringplanmodifier"
	"github.com/hashicorp/terraform-plugin-framework/schema/validator"
	"github.com/hashicorp/terraform-plugin-framework/types"
	"github.com/hashicorp/terraform-plugin-log/tflog"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/client"
)

var (
	_ resource.ResourceWithConfigure      = &DiskResource{}
	_ resource.ResourceWithImportState    = &DiskResource{}
	_ resource.ResourceWithModifyPlan     = &DiskResource{}
	_ resource.ResourceWithValidateConfig = &DiskResource{}
)

// Default timeouts: a create may download an image.
const (
	diskCreateTimeout = 30 * time.Minute
	diskReadTimeout   = 5 * time.Minute
	diskUpdateTimeout = 10 * time.Minute
	diskDeleteTimeout = 10 * time.Minute
)

// DiskResource manages kvm_disk: a volume in a host's storage pool.
type DiskResource struct{ fleet *Fleet }

// NewDiskResource is the kvm_disk factory.
func NewDiskResource() resource.Resource { return &DiskResource{} }

func (r *DiskResource) Metadata(_ context.Context, req resource.MetadataRequest, resp *resource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_disk"
}

func (r *DiskResource) Schema(ctx context.Context, _ resource.SchemaRequest, resp *resource.SchemaResponse) {
	limit := func(what string) schema.Int64Attribute {
		return schema.Int64Attribute{
			MarkdownDescription: what + "; `0` (the default) means unlimited.",
			Optional:            true, Computed: true,
			Default:    int64default.StaticInt64(0),
			Validators: []validator.Int64{int64validator.AtLeast(0)},
		}
	}
	resp.Schema = schema.Schema{
		MarkdownDescription: "A volume in a host's storage pool: an empty disk, an image fetched by the host from `source_url`, " +
			"or a linked clone (a qcow2 overlay, created in O(1) without copying) of another disk on the same host.\n\n" +
			"Growing `size_mib` is applied in place (online when a running VM attaches the disk); shrinking is refused at plan time. " +
			"A disk attached to a VM, or the base of another disk, cannot be deleted: the host refuses and nothing is lost.",
		Attributes: map[string]schema.Attribute{
			"id": schema.StringAttribute{
				MarkdownDescription: "`<host>/<pool>/<name>`; also the import ID. Known at plan time once `host`, `pool` and `name` are.",
				Computed:            true,
			},
			"name": schema.StringAttribute{
				MarkdownDescription: "Volume name, unique within the pool: " + api.NamePatternDescription + ". Changing it replaces the disk.",
				Required:            true,
				Validators:          []validator.String{validName("disk")},
				PlanModifiers:       []planmodifier.String{stringplanmodifier.RequiresReplace()},
			},
			"host": schema.StringAttribute{
				MarkdownDescription: "Name of the host (a key of the provider's `hosts`) that holds the disk. " +
					"A disk is never destroyed and re-created because its host changes. A disk attached to a VM moves with the VM: " +
					"change both `host`s together and the disk update prepares an empty volume on the new host (for a linked clone, " +
					"an overlay on the new host's copy of the same base, which must exist there), into which the VM's live " +
					"migration copies the contents; the old copy is then deleted. A disk attached to no VM is copied by the new host " +
					"straight from the old one (the bytes never pass through the machine running Terraform; a linked clone needs " +
					"the new host to have the same base disk, same name and pool), verified, and only then deleted on the old host; " +
					"if the copy fails, the disk stays on its old host untouched. A volume of that name already on the new host " +
					"is adopted instead, and the old copy kept with a warning.",
				Required: true,
			},
			"pool": schema.StringAttribute{
				MarkdownDescription: "Storage pool on the host. Defaults to `\"default\"`. Changing it replaces the disk.",
				Optional:            true, Computed: true,
				Default:       stringdefault.StaticString("default"),
				Validators:    []validator.String{validName("pool")},
				PlanModifiers: []planmodifier.String{stringplanmodifier.RequiresReplace()},
			},
			"size_mib": schema.Int64Attribute{
				MarkdownDescription: "Virtual size in MiB. Required for an empty disk; for a linked clone or a `source_url` disk it " +
					"defaults to the size of the base or image and is read back. Growing it is applied in place " +
					"(online when attached to a running VM); shrinking is refused at plan time because it would destroy data.",
				Optional: true, Computed: true,
				Validators:    []validator.Int64{int64validator.Between(1, 64<<20)},
				PlanModifiers: []planmodifier.Int64{int64planmodifier.UseStateForUnknown()},
			},
			"format": schema.StringAttribute{
				MarkdownDescription: "`\"qcow2\"` (default; sparse, supports linked clones) or `\"raw\"`. Changing it replaces the disk.",
				Optional:            true, Computed: true,
				Default:       stringdefault.StaticString(api.FormatQCOW2),
				Validators:    []validator.String{stringvalidator.OneOf(api.FormatQCOW2, api.FormatRaw)},
				PlanModifiers: []planmodifier.String{stringplanmodifier.RequiresReplace()},
			},
			"base_disk_id": schema.StringAttribute{
				MarkdownDescription: "ID (`<host>/<pool>/<name>`) of another `kvm_disk` on the same host and pool to use as the " +
					"read-only base of a linked clone, e.g. `kvm_disk.base.id`. The clone is a qcow2 overlay: created in O(1), " +
					"nothing is copied. Conflicts with `source_url`. Changing it replaces the disk, except when only its host part " +
					"changes together with `host` (the clone moves with its VM onto the new host's copy of the same base).",
				Optional: true,
				Validators: []validator.String{
					diskIDFormat(),
					stringvalidator.ConflictsWith(path.MatchRoot("source_url")),
				},
				PlanModifiers: []planmodifier.String{stringplanmodifier.RequiresReplaceIf(baseChangeReplaces,
					"Replaces the disk unless only the host part changes, to the disk's new host.",
					"Replaces the disk unless only the host part changes, to the disk's new host.")},
			},
			"source_url": schema.StringAttribute{
				MarkdownDescription: "`http://` or `https://` URL of an image that the host downloads itself (the image never " +
					"passes through the machine running Terraform). The create waits for the download. Changing it replaces the disk.",
				Optional:      true,
				Validators:    []validator.String{httpURL()},
				PlanModifiers: []planmodifier.String{stringplanmodifier.RequiresReplace()},
			},
			"source_checksum": schema.StringAttribute{
				MarkdownDescription: "Expected checksum of the `source_url` image, `sha256:<64 hex digits>`; the host verifies it " +
					"while downloading and fails the create on a mismatch. Changing it replaces the disk.",
				Optional: true,
				Validators: []validator.String{
					checksumFormat(),
					stringvalidator.AlsoRequires(path.MatchRoot("source_url")),
				},
				PlanModifiers: []planmodifier.String{stringplanmodifier.RequiresReplace()},
			},
			"iotune": schema.SingleNestedAttribute{
				MarkdownDescription: "I/O limits applied wherever the disk is attached; changed in place (live on running VMs).",
				Optional:            true,
				Attributes: map[string]schema.Attribute{
					"read_bytes_sec":  limit("Read throughput limit in bytes per second"),
					"write_bytes_sec": limit("Write throughput limit in bytes per second"),
					"read_iops_sec":   limit("Read operations per second limit"),
					"write_iops_sec":  limit("Write operations per second limit"),
				},
			},
			"path": schema.StringAttribute{
				MarkdownDescription: "Path of the volume on the host.",
				Computed:            true,
				PlanModifiers:       []planmodifier.String{stringplanmodifier.UseStateForUnknown()},
			},
			"allocated_mib": schema.Int64Attribute{
				MarkdownDescription: "Space the volume currently takes in the pool, in MiB. It grows as the guest writes data; " +
					"it is refreshed on every read and never causes a change by itself.",
				Computed: true,
			},
		},
		Blocks: map[string]schema.Block{
			"timeouts": timeouts.Block(ctx, timeouts.Opts{Create: true, Read: true, Update: true, Delete: true}),
		},
	}
}

// baseChangeReplaces replaces a linked clone when its base changes, except
// when only the base's host changes, to the disk's own (new) host: the
// clone then moves with its VM onto that host's copy of the same base.
func baseChangeReplaces(ctx context.Context, req planmodifier.StringRequest, resp *stringplanmodifier.RequiresReplaceIfFuncResponse) {
	resp.RequiresReplace = true
	if req.StateValue.IsNull() || req.PlanValue.IsNull() || req.PlanValue.IsUnknown() {
		return
	}
	sh, sp, sn, err1 := ParseDiskID(req.StateValue.ValueString())
	ph, pp, pn, err2 := ParseDiskID(req.PlanValue.ValueString())
	if err1 != nil || err2 != nil || sp != pp || sn != pn || sh == ph {
		return
	}
	var host types.String
	resp.Diagnostics.Append(req.Plan.GetAttribute(ctx, path.Root("host"), &host)...)
	if !host.IsNull() && !host.IsUnknown() && host.ValueString() == ph {
		resp.RequiresReplace = false
	}
}

func (r *DiskResource) Configure(_ context.Context, req resource.ConfigureRequest, resp *resource.ConfigureResponse) {
	r.fleet = fleetFrom(req.ProviderData, &resp.Diagnostics)
}

// ValidateConfig checks combinations that single-attribute validators
// cannot, so they fail at plan time rather than on the host.
func (r *DiskResource) ValidateConfig(ctx context.Context, req resource.ValidateConfigRequest, resp *resource.ValidateConfigResponse) {
	var cfg diskModel
	resp.Diagnostics.Append(req.Config.Get(ctx, &cfg)...)
	if resp.Diagnostics.HasError() {
		return
	}
	if cfg.SizeMiB.IsNull() && cfg.BaseDiskID.IsNull() && cfg.SourceURL.IsNull() {
		resp.Diagnostics.AddAttributeError(path.Root("size_mib"), "Missing Disk Size",
			"size_mib is required for an empty disk (one with neither base_disk_id nor source_url).")
	}
	if !cfg.BaseDiskID.IsNull() && cfg.Format.ValueString() == api.FormatRaw {
		resp.Diagnostics.AddAttributeError(path.Root("format"), "Invalid Linked Clone Format",
			"a linked clone (base_disk_id) is a qcow2 overlay; format must be \"qcow2\", not \"raw\".")
	}
}

// ModifyPlan checks what needs the provider's hosts or the prior state:
// the host is configured, the base is on the same host and pool, the disk
// does not shrink. It also computes the ID so it is known at plan time.
func (r *DiskResource) ModifyPlan(ctx context.Context, req resource.ModifyPlanRequest, resp *resource.ModifyPlanResponse) {
	if req.Plan.Raw.IsNull() {
		return // destroy
	}
	var plan diskModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	if resp.Diagnostics.HasError() {
		return
	}
	var state *diskModel
	if !req.State.Raw.IsNull() {
		state = &diskModel{}
		resp.Diagnostics.Append(req.State.Get(ctx, state)...)
		if resp.Diagnostics.HasError() {
			return
		}
	}
	known := func(v types.String) bool { return !v.IsNull() && !v.IsUnknown() }

	if r.fleet != nil && known(plan.Host) {
		if _, err := r.fleet.Host(plan.Host.ValueString()); err != nil {
			resp.Diagnostics.AddAttributeError(path.Root("host"), "Unknown Host", err.Error())
		}
	}
	if known(plan.BaseDiskID) {
		bh, bp, _, err := ParseDiskID(plan.BaseDiskID.ValueString())
		switch {
		case err != nil:
			resp.Diagnostics.AddAttributeError(path.Root("base_disk_id"), "Invalid Base Disk", err.Error())
		case known(plan.Host) && bh != plan.Host.ValueString():
			resp.Diagnostics.AddAttributeError(path.Root("base_disk_id"), "Base Disk on Another Host",
				fmt.Sprintf("base disk %s is on host %q, but this disk is on host %q; a linked clone must be on the same host and pool as its base.",
					plan.BaseDiskID.ValueString(), bh, plan.Host.ValueString()))
		case known(plan.Pool) && bp != plan.Pool.ValueString():
			resp.Diagnostics.AddAttributeError(path.Root("base_disk_id"), "Base Disk in Another Pool",
				fmt.Sprintf("base disk %s is in pool %q, but this disk is in pool %q; a linked clone must be in the same pool as its base.",
					plan.BaseDiskID.ValueString(), bp, plan.Pool.ValueString()))
		}
	}
	if state != nil && !plan.SizeMiB.IsNull() && !plan.SizeMiB.IsUnknown() && !state.SizeMiB.IsNull() &&
		plan.SizeMiB.ValueInt64() < state.SizeMiB.ValueInt64() {
		resp.Diagnostics.AddAttributeError(path.Root("size_mib"), "Disk Shrink Refused",
			fmt.Sprintf("disk %s is %d MiB; shrinking it to %d MiB is refused because it would destroy data. "+
				"Keep size_mib at %d or more, or replace the disk explicitly (terraform apply -replace).",
				state.ID.ValueString(), state.SizeMiB.ValueInt64(), plan.SizeMiB.ValueInt64(), state.SizeMiB.ValueInt64()))
	}
	if resp.Diagnostics.HasError() {
		return
	}

	if known(plan.Host) && known(plan.Pool) && known(plan.Name) {
		plan.ID = types.StringValue(DiskID(plan.location()))
	} else {
		plan.ID = types.StringUnknown()
	}
	if state != nil && !plan.Host.Equal(state.Host) {
		// A move yields another path and allocation.
		plan.Path = types.StringUnknown()
		plan.AllocatedMiB = types.Int64Unknown()
	}
	resp.Diagnostics.Append(resp.Plan.Set(ctx, &plan)...)
}

func (r *DiskResource) Create(ctx context.Context, req resource.CreateRequest, resp *resource.CreateResponse) {
	var plan diskModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	if resp.Diagnostics.HasError() {
		return
	}
	timeout, diags := plan.Timeouts.Create(ctx, diskCreateTimeout)
	resp.Diagnostics.Append(diags...)
	if resp.Diagnostics.HasError() {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	hostName, pool, name := plan.location()
	id := DiskID(hostName, pool, name)
	h := lookupHost(r.fleet, hostName, &resp.Diagnostics)
	if h == nil {
		return
	}
	spec, diags := plan.toAPI(ctx)
	resp.Diagnostics.Append(diags...)
	if resp.Diagnostics.HasError() {
		return
	}
	wantSize := plan.SizeMiB
	if spec.BaseVolume != "" && spec.SizeMiB > 0 {
		// A clone is at least as large as its base; a smaller size_mib
		// would be silently ignored by the host and never converge.
		base, err := h.Client.GetVolume(ctx, pool, spec.BaseVolume)
		if err != nil {
			addAPIError(&resp.Diagnostics, "Unable to Create Disk", fmt.Sprintf("disk %s: reading base disk %s", id, plan.BaseDiskID.ValueString()), err)
			return
		}
		if spec.SizeMiB < base.SizeMiB {
			resp.Diagnostics.AddAttributeError(path.Root("size_mib"), "Disk Smaller Than Its Base",
				fmt.Sprintf("disk %s: size_mib %d is smaller than its base disk %s (%d MiB); a linked clone is at least as large as its base.",
					id, spec.SizeMiB, plan.BaseDiskID.ValueString(), base.SizeMiB))
			return
		}
	}
	tflog.Debug(ctx, "creating disk", map[string]any{"id": id, "format": spec.Format, "base": spec.BaseVolume, "source_url": spec.SourceURL})
	v, err := h.Client.PutVolume(ctx, pool, name, spec)
	if err != nil {
		if spec.SourceURL != "" && client.StatusOf(err) == 0 {
			// The volume was created but its download failed (or we lost
			// the host while waiting): track it, tainted, so the next
			// apply replaces it instead of leaving it orphaned.
			if got, gerr := h.Client.GetVolume(ctx, pool, name); gerr == nil && got.SourceURL == spec.SourceURL {
				plan.fromAPI(hostName, got)
				resp.Diagnostics.Append(resp.State.Set(ctx, &plan)...)
			}
		}
		addAPIError(&resp.Diagnostics, "Unable to Create Disk", "disk "+id, err)
		return
	}
	// An image smaller than the requested size is grown to it.
	if !wantSize.IsNull() && !wantSize.IsUnknown() && v.SizeMiB < wantSize.ValueInt64() {
		want := wantSize.ValueInt64()
		if _, err := h.Client.UpdateVolume(ctx, pool, name, api.VolumeUpdate{SizeMiB: &want}); err != nil {
			r.saveCreated(ctx, h, &plan, resp)
			addAPIError(&resp.Diagnostics, "Unable to Create Disk", fmt.Sprintf("disk %s: growing to %d MiB", id, want), err)
			return
		}
	}
	r.saveCreated(ctx, h, &plan, resp)
	if resp.Diagnostics.HasError() {
		return
	}
	if !wantSize.IsNull() && !wantSize.IsUnknown() && plan.SizeMiB.ValueInt64() != wantSize.ValueInt64() {
		resp.Diagnostics.AddAttributeError(path.Root("size_mib"), "Unable to Create Disk",
			fmt.Sprintf("disk %s is %d MiB (the size of its image), larger than size_mib %d; raise size_mib or leave it unset.",
				id, plan.SizeMiB.ValueInt64(), wantSize.ValueInt64()))
	}
}

// saveCreated reads a created volume back into state, so that even a
// create that fails afterwards leaves the volume tracked (and tainted)
// rather than orphaned.
func (r *DiskResource) saveCreated(ctx context.Context, h *FleetHost, plan *diskModel, resp *resource.CreateResponse) {
	hostName, pool, name := plan.location()
	v, err := h.Client.GetVolume(ctx, pool, name)
	if err != nil {
		addAPIError(&resp.Diagnostics, "Unable to Read Disk", "disk "+DiskID(hostName, pool, name)+" after create", err)
		return
	}
	plan.fromAPI(hostName, v)
	resp.Diagnostics.Append(resp.State.Set(ctx, plan)...)
}

func (r *DiskResource) Read(ctx context.Context, req resource.ReadRequest, resp *resource.ReadResponse) {
	var state diskModel
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() {
		return
	}
	timeout, diags := state.Timeouts.Read(ctx, diskReadTimeout)
	resp.Diagnostics.Append(diags...)
	if resp.Diagnostics.HasError() {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	hostName, pool, name, err := ParseDiskID(state.ID.ValueString())
	if err != nil {
		resp.Diagnostics.AddError("Unable to Read Disk", err.Error())
		return
	}
	h := lookupHost(r.fleet, hostName, &resp.Diagnostics)
	if h == nil {
		return
	}
	v, err := h.Client.GetVolume(ctx, pool, name)
	if isNotFound(err) {
		tflog.Warn(ctx, "disk is gone; removing it from state", map[string]any{"id": state.ID.ValueString()})
		resp.State.RemoveResource(ctx)
		return
	}
	if err != nil {
		addAPIError(&resp.Diagnostics, "Unable to Read Disk", "disk "+state.ID.ValueString(), err)
		return
	}
	state.fromAPI(hostName, v)
	resp.Diagnostics.Append(resp.State.Set(ctx, &state)...)
}

func (r *DiskResource) Update(ctx context.Context, req resource.UpdateRequest, resp *resource.UpdateResponse) {
	var plan, state diskModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() {
		return
	}
	timeout, diags := plan.Timeouts.Update(ctx, diskUpdateTimeout)
	resp.Diagnostics.Append(diags...)
	if resp.Diagnostics.HasError() {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	hostName, pool, name := plan.location()
	id := DiskID(hostName, pool, name)
	h := lookupHost(r.fleet, hostName, &resp.Diagnostics)
	if h == nil {
		return
	}
	cur, err := h.Client.GetVolume(ctx, pool, name)
	if !plan.Host.Equal(state.Host) {
		// The volume must keep its contents. One attached to a VM moves
		// with it: prepare the target volume the VM's migration copies
		// into (kvm_disk updates are applied before the kvm_vm's).
		if moved, handled := r.prepareMove(ctx, state, plan, h, err, resp); handled {
			if resp.Diagnostics.HasError() {
				return
			}
			cur, err = moved, nil
		} else if isNotFound(err) {
			// Not attached: the new host copies the contents from the old
			// one, then the old copy is deleted.
			moved, ok := r.copyDetached(ctx, state, plan, h, resp)
			if !ok {
				return
			}
			cur = moved
		} else if err != nil {
			addAPIError(&resp.Diagnostics, "Unable to Move Disk",
				fmt.Sprintf("disk %s: reading it on its new host %s (nothing was changed: the disk stays on host %s)", state.ID.ValueString(), hostName, state.Host.ValueString()), err)
			return
		} else {
			// Already on the new host (put there by other means, or a
			// copy whose response was lost): adopt it once complete.
			adopted, ok := r.adoptMoved(ctx, state, plan, h, cur, resp)
			if !ok {
				return
			}
			cur = adopted
		}
	} else if err != nil {
		addAPIError(&resp.Diagnostics, "Unable to Update Disk", "disk "+id, err)
		return
	}

	var u api.VolumeUpdate
	if !plan.SizeMiB.IsUnknown() && !plan.SizeMiB.IsNull() && plan.SizeMiB.ValueInt64() != cur.SizeMiB {
		size := plan.SizeMiB.ValueInt64()
		u.SizeMiB = &size
	}
	want, diags := plan.iotune(ctx)
	resp.Diagnostics.Append(diags...)
	if resp.Diagnostics.HasError() {
		return
	}
	if want == nil {
		want = &api.IOTune{}
	}
	have := cur.IOTune
	if have == nil {
		have = &api.IOTune{}
	}
	if *want != *have {
		u.IOTune = want
	}
	if u.SizeMiB != nil || u.IOTune != nil {
		tflog.Debug(ctx, "updating disk", map[string]any{"id": id, "size_mib": u.SizeMiB, "iotune": u.IOTune})
		if _, err := h.Client.UpdateVolume(ctx, pool, name, u); err != nil {
			addAPIError(&resp.Diagnostics, "Unable to Update Disk", "disk "+id, err)
			return
		}
	}
	v, err := h.Client.GetVolume(ctx, pool, name)
	if err != nil {
		addAPIError(&resp.Diagnostics, "Unable to Read Disk", "disk "+id+" after update", err)
		return
	}
	plan.fromAPI(hostName, v)
	resp.Diagnostics.Append(resp.State.Set(ctx, &plan)...)
}

// prepareMove handles a host change of a disk that a VM attaches on its
// old host: the VM's live migration will copy the contents, so the new host
// gets an empty volume of the same name, format and size (for a linked
// clone: an empty overlay on the new host's volume of the same base name,
// which lands at the same path when both hosts use the same pool directory).
// An existing, unattached volume of that name on the new host (left by a
// failed attempt) is recreated fresh, as incremental storage migration
// requires. handled is false when the disk is not attached to a VM (or its
// old host cannot be read): the caller's adopt-or-refuse rule applies.
func (r *DiskResource) prepareMove(ctx context.Context, state, plan diskModel, newH *FleetHost, newErr error, resp *resource.UpdateResponse) (*api.Volume, bool) {
	oldHost, pool, name := state.location()
	oldH, err := r.fleet.Host(oldHost)
	if err != nil {
		return nil, false
	}
	old, err := oldH.Client.GetVolumeUsage(ctx, pool, name)
	if err != nil || len(old.UsedBy) == 0 {
		return nil, false
	}
	fail := func(format string, args ...any) (*api.Volume, bool) {
		resp.Diagnostics.AddAttributeError(path.Root("host"), "Unable to Move Disk",
			fmt.Sprintf("disk %s (attached to VM %s) cannot move to host %s: ", state.ID.ValueString(), strings.Join(old.UsedBy, ", "), newH.Name)+
				fmt.Sprintf(format, args...)+fmt.Sprintf(" Nothing was changed: the disk stays on host %s.", oldHost))
		return nil, true
	}
	if old.SourceURL != "" {
		return fail("it was downloaded from source_url, and moving such a disk with its VM is not supported yet.")
	}
	inv := newH.Inventory(ctx)
	if !inv.Healthy {
		return fail("host %s is not healthy: %s.", newH.Name, inv.Message)
	}
	if inv.MigrationURI == "" {
		return fail("host %s reports no migration_uri, so VMs cannot migrate to it; start its kvm-hostd with "+
			"--migration-uri (KVM_HOSTD_MIGRATION_URI), e.g. qemu+tcp://<its address>/system.", newH.Name)
	}
	spec := api.VolumeSpec{SizeMiB: old.SizeMiB, Format: old.Format, BaseVolume: old.BaseVolume}
	if old.BaseVolume != "" {
		if _, err := newH.Client.GetVolume(ctx, pool, old.BaseVolume); err != nil {
			if isNotFound(err) {
				return fail("linked clone %s can move to %s only if %s has base volume %s in pool %s (create kvm_disk %s on %s).",
					name, newH.Name, newH.Name, old.BaseVolume, pool, old.BaseVolume, newH.Name)
			}
			return fail("reading base volume %s/%s on %s failed: %s.", pool, old.BaseVolume, newH.Name, err)
		}
	}
	if t, d := plan.iotune(ctx); !d.HasError() && !t.IsZero() {
		spec.IOTune = t
	}
	spec.Recreate = newErr == nil // left by a failed attempt: start fresh
	v, err := newH.Client.PutVolume(ctx, pool, name, spec)
	if err != nil {
		addAPIError(&resp.Diagnostics, "Unable to Move Disk",
			fmt.Sprintf("disk %s: preparing the volume on host %s for its VM's migration (the disk stays on host %s)", state.ID.ValueString(), newH.Name, oldHost), err)
		return nil, true
	}
	tflog.Info(ctx, "disk prepared on its new host; its VM's migration copies the contents",
		map[string]any{"id": DiskID(newH.Name, pool, name), "from": state.ID.ValueString(), "base": old.BaseVolume})
	return v, true
}

// copyDetached moves a disk that no VM attaches: the new host creates the
// volume with the same format, size and base (a linked clone needs the new
// host to have a volume of the same base name and pool) and streams the
// contents from the old host's content URL, authenticated with the old
// host's token; the old copy is deleted only once the new one is verified.
// A failed copy leaves the disk on its old host, untouched. ok is false
// when the update must stop (resp carries the error, and the state what is
// true: the old host unless the copy completed).
func (r *DiskResource) copyDetached(ctx context.Context, state, plan diskModel, newH *FleetHost, resp *resource.UpdateResponse) (*api.Volume, bool) {
	oldHost, pool, name := state.location()
	from := state.ID.ValueString()
	to := DiskID(newH.Name, pool, name)
	fail := func(format string, args ...any) (*api.Volume, bool) {
		resp.Diagnostics.AddAttributeError(path.Root("host"), "Unable to Move Disk",
			fmt.Sprintf("disk %s cannot move to host %s: ", from, newH.Name)+fmt.Sprintf(format, args...)+
				fmt.Sprintf(" Nothing was deleted: the disk stays on host %s.", oldHost))
		return nil, false
	}
	oldH, err := r.fleet.Host(oldHost)
	if err != nil {
		return fail("its current host: %s.", err)
	}
	old, err := oldH.Client.GetVolumeUsage(ctx, pool, name)
	if err != nil {
		return fail("reading it on host %s failed: %s.", oldHost, err)
	}
	if len(old.UsedBy) > 0 {
		// Attached after prepareMove looked: let the next plan decide.
		return fail("it is attached to VM(s) %s; change the VM's host too, and the disk moves with it.", strings.Join(old.UsedBy, ", "))
	}
	if old.Operation != nil && old.Operation.State == api.OpRunning {
		return fail("its image is still being written (operation %s).", old.Operation.ID)
	}
	if old.BaseVolume != "" {
		if _, err := newH.Client.GetVolume(ctx, pool, old.BaseVolume); err != nil {
			if isNotFound(err) {
				return fail("linked clone %s can move to %s only if %s has base volume %s in pool %s (create kvm_disk %s on %s).",
					name, newH.Name, newH.Name, old.BaseVolume, pool, old.BaseVolume, newH.Name)
			}
			return fail("reading base volume %s/%s on %s failed: %s.", pool, old.BaseVolume, newH.Name, err)
		}
	}
	spec := api.VolumeSpec{SizeMiB: old.SizeMiB, Format: old.Format, BaseVolume: old.BaseVolume,
		SourceURL: old.SourceURL, SourceChecksum: old.SourceChecksum, IOTune: old.IOTune}
	if t, d := plan.iotune(ctx); !d.HasError() && !t.IsZero() {
		spec.IOTune = t
	}
	tflog.Info(ctx, "copying disk to its new host", map[string]any{"from": from, "to": to, "size_mib": old.SizeMiB, "format": old.Format, "base": old.BaseVolume})
	req := api.VolumeCopyRequest{ContentURL: oldH.Client.ContentURL(pool, name), Token: oldH.Client.Token(), Spec: spec}
	if _, err := newH.Client.CopyVolume(ctx, pool, name, req, "copy-"+client.NewRequestID()); err != nil {
		return fail("copying its contents from host %s failed: %s.", oldHost, err)
	}
	v, err := newH.Client.GetVolume(ctx, pool, name)
	if err != nil {
		return fail("reading the copy on host %s failed: %s.", newH.Name, err)
	}
	if diff := copyDiff(old, v); diff != "" {
		return fail("the copy on host %s differs from the original: %s; the copy was kept there for inspection.", newH.Name, diff)
	}
	// The copy is complete and verified: from here on the disk is on the
	// new host, whatever happens to the old copy.
	if !r.deleteOldCopy(ctx, oldH, plan, v, resp) {
		return nil, false
	}
	tflog.Info(ctx, "disk moved with its contents", map[string]any{"from": from, "to": to})
	return v, true
}

// copyDiff names how a copy differs from its source, or "".
func copyDiff(src, dst *api.Volume) string {
	switch {
	case src.Format != dst.Format:
		return fmt.Sprintf("format %s instead of %s", dst.Format, src.Format)
	case src.SizeMiB != dst.SizeMiB:
		return fmt.Sprintf("size %d MiB instead of %d MiB", dst.SizeMiB, src.SizeMiB)
	case src.BaseVolume != dst.BaseVolume:
		return fmt.Sprintf("base volume %q instead of %q", dst.BaseVolume, src.BaseVolume)
	}
	return ""
}

// deleteOldCopy deletes the disk's volume on its old host after the new
// host has a complete copy. If that fails, the state records the new host
// (where the disk now is) and the error names the leftover to delete.
func (r *DiskResource) deleteOldCopy(ctx context.Context, oldH *FleetHost, plan diskModel, moved *api.Volume, resp *resource.UpdateResponse) bool {
	_, pool, name := plan.location()
	err := oldH.Client.DeleteVolume(ctx, pool, name)
	if err == nil || isNotFound(err) {
		return true
	}
	plan.fromAPI(plan.Host.ValueString(), moved)
	resp.Diagnostics.Append(resp.State.Set(ctx, &plan)...)
	addAPIError(&resp.Diagnostics, "Disk Moved, Old Copy Not Deleted",
		fmt.Sprintf("disk %s was copied to host %s and is now tracked there, but deleting the old copy %s on host %s failed; delete it by hand",
			DiskID(plan.Host.ValueString(), pool, name), plan.Host.ValueString(), name, oldH.Name), err)
	return false
}

// adoptMoved takes over a volume that is already on the disk's new host.
// A copy still running into it (a retry after a lost response) is waited
// for. The old copy is kept, with a warning: the provider cannot tell that
// a volume it did not copy holds the same data.
func (r *DiskResource) adoptMoved(ctx context.Context, state, plan diskModel, newH *FleetHost, cur *api.Volume, resp *resource.UpdateResponse) (*api.Volume, bool) {
	oldHost, pool, name := state.location()
	if cur.Operation != nil && cur.Operation.State == api.OpRunning {
		if _, err := newH.Client.WaitOperation(ctx, cur.Operation.ID); err != nil {
			addAPIError(&resp.Diagnostics, "Unable to Move Disk",
				fmt.Sprintf("disk %s: waiting for the %s into volume %s on host %s (the disk stays on host %s)", state.ID.ValueString(), cur.Operation.Kind, name, newH.Name, oldHost), err)
			return nil, false
		}
		v, err := newH.Client.GetVolume(ctx, pool, name)
		if err != nil {
			addAPIError(&resp.Diagnostics, "Unable to Move Disk", fmt.Sprintf("disk %s: reading it on host %s", state.ID.ValueString(), newH.Name), err)
			return nil, false
		}
		cur = v
	}
	if cur.Format != plan.Format.ValueString() {
		resp.Diagnostics.AddAttributeError(path.Root("host"), "Unable to Move Disk",
			fmt.Sprintf("disk %s cannot move to host %s: that host already has a volume %s/%s, of format %s instead of %s. "+
				"Nothing was changed: the disk stays on host %s.", state.ID.ValueString(), newH.Name, pool, name, cur.Format, plan.Format.ValueString(), oldHost))
		return nil, false
	}
	tflog.Info(ctx, "disk found on its new host; adopting it", map[string]any{"id": DiskID(newH.Name, pool, name), "from": state.ID.ValueString()})
	if r.fleet != nil {
		if oldH, err := r.fleet.Host(oldHost); err == nil {
			if _, err := oldH.Client.GetVolume(ctx, pool, name); err == nil {
				resp.Diagnostics.AddAttributeWarning(path.Root("host"), "Old Copy of Disk Kept",
					fmt.Sprintf("disk %s: host %s already had volume %s/%s, which is now the disk; it was not copied from host %s, "+
						"so the volume there (%s) was kept. Delete it by hand once you know it is not needed.",
						DiskID(newH.Name, pool, name), newH.Name, pool, name, oldHost, state.ID.ValueString()))
			}
		}
	}
	return cur, true
}

func (r *DiskResource) Delete(ctx context.Context, req resource.DeleteRequest, resp *resource.DeleteResponse) {
	var state diskModel
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() {
		return
	}
	timeout, diags := state.Timeouts.Delete(ctx, diskDeleteTimeout)
	resp.Diagnostics.Append(diags...)
	if resp.Diagnostics.HasError() {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	hostName, pool, name, err := ParseDiskID(state.ID.ValueString())
	if err != nil {
		resp.Diagnostics.AddError("Unable to Delete Disk", err.Error())
		return
	}
	h := lookupHost(r.fleet, hostName, &resp.Diagnostics)
	if h == nil {
		return
	}
	err = h.Client.DeleteVolume(ctx, pool, name)
	if err == nil || isNotFound(err) {
		return
	}
	if api.IsCode(err, api.CodeConflict) {
		// In use by a VM or the base of another disk: keep it (and it
		// stays in state), with the host's message naming the users.
		addAPIError(&resp.Diagnostics, "Unable to Delete Disk", "disk "+state.ID.ValueString()+" is in use and was kept", err)
		return
	}
	addAPIError(&resp.Diagnostics, "Unable to Delete Disk", "disk "+state.ID.ValueString(), err)
}

func (r *DiskResource) ImportState(ctx context.Context, req resource.ImportStateRequest, resp *resource.ImportStateResponse) {
	hostName, pool, name, err := ParseDiskID(req.ID)
	if err != nil {
		resp.Diagnostics.AddError("Invalid Import ID", err.Error())
		return
	}
	for what, v := range map[string]string{"pool": pool, "disk": name} {
		if err := api.ValidateName(what, v); err != nil {
			resp.Diagnostics.AddError("Invalid Import ID", fmt.Sprintf("disk ID %q: %s", req.ID, err))
			return
		}
	}
	resp.Diagnostics.Append(resp.State.SetAttribute(ctx, path.Root("id"), req.ID)...)
	resp.Diagnostics.Append(resp.State.SetAttribute(ctx, path.Root("host"), hostName)...)
	resp.Diagnostics.Append(resp.State.SetAttribute(ctx, path.Root("pool"), pool)...)
	resp.Diagnostics.Append(resp.State.SetAttribute(ctx, path.Root("name"), name)...)
}
