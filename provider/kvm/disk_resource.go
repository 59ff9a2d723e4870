package kvm

import (
	"context"
	"fmt"
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
	// Mutable: a move changes the host in place.
	resp.ResourceBehavior.MutableIdentity = true
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
				MarkdownDescription: "Storage pool on the host: `\"default\"` (the default; kvm-hostd `--pool-dir`) or a libvirt pool " +
					"the host serves (`--pool NAME`; see `kvm_host`'s `pools`). A pool the host does not serve, and a disk larger than " +
					"the pool's free space, fail at plan time. On a pool the host serves as `shared`, a change of `host` together with " +
					"the VM copies nothing: the volume is the same on both hosts. Changing it replaces the disk.",
				Optional: true, Computed: true,
				Default:       stringdefault.StaticString("default"),
				Validators:    []validator.String{validName("pool")},
				PlanModifiers: []planmodifier.String{stringplanmodifier.RequiresReplace()},
			},
			"size_mib": schema.Int64Attribute{
				MarkdownDescription: "Virtual size in MiB. Required for an empty disk; for a linked clone or a `source_url` disk it " +
					"defaults to the size of the base or image and is read back. Growing it is applied in place " +
					"(online when attached to a running VM); shrinking is refused at plan time because it would destroy data.",
				Optional: true, Computed: true,
				Validators:    []validator.Int64{int64validator.Between(1, api.MaxVolumeMiB)},
				PlanModifiers: []planmodifier.Int64{int64planmodifier.UseStateForUnknown()},
			},
			"format": schema.StringAttribute{
				MarkdownDescription: "`\"qcow2\"` (default; sparse, supports linked clones) or `\"raw\"`. On a Ceph rbd pool (a pool " +
					"whose `kvm_host` `pools` type is `rbd`) volumes are raw rbd images: set `\"raw\"` there (the plan fails otherwise); " +
					"a `source_url` qcow2 image is converted to raw on import. Changing it replaces the disk.",
				Optional: true, Computed: true,
				Default:       stringdefault.StaticString(api.FormatQCOW2),
				Validators:    []validator.String{stringvalidator.OneOf(api.FormatQCOW2, api.FormatRaw)},
				PlanModifiers: []planmodifier.String{stringplanmodifier.RequiresReplace()},
			},
			"base_disk_id": schema.StringAttribute{
				MarkdownDescription: "ID (`<host>/<pool>/<name>`) of another `kvm_disk` on the same host and pool to use as the " +
					"read-only base of a linked clone, e.g. `kvm_disk.base.id`. The clone is a qcow2 overlay: created in O(1), " +
					"nothing is copied. On a Ceph rbd pool it is an RBD layered clone (raw; a protected snapshot of the base and a " +
					"copy-on-write child, also O(1)), and the base cannot be deleted while it has clones. Conflicts with `source_url`. Changing it replaces the disk, except when only its host part " +
					"changes together with `host` (the clone moves with its VM onto the new host's copy of the same base).",
				Optional: true,
				Validators: []validator.String{
					diskIDFormat("", ""),
					stringvalidator.ConflictsWith(path.MatchRoot("source_url")),
				},
				PlanModifiers: []planmodifier.String{stringplanmodifier.RequiresReplaceIf(baseChangeReplaces,
					"Replaces the disk unless only the host part changes, to the disk's new host.",
					"Replaces the disk unless only the host part changes, to the disk's new host.")},
			},
			"source_url": schema.StringAttribute{
				MarkdownDescription: "`http://` or `https://` URL of an image that the host downloads itself (the image never " +
					"passes through the machine running Terraform). The create waits for the download. Changing it replaces the disk, " +
					"unless only its user info or query changes (a re-signed URL of the same image). The host never returns the user " +
					"info or query (they may be credentials): an imported disk shows the URL without them.",
				Optional:   true,
				Validators: []validator.String{httpURL()},
				PlanModifiers: []planmodifier.String{stringplanmodifier.RequiresReplaceIf(sourceURLChangeReplaces,
					"Replaces the disk unless only the URL's user info or query changes.",
					"Replaces the disk unless only the URL's user info or query changes.")},
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
			"encryption": diskEncryptionAttribute(),
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
// sourceURLChangeReplaces: a URL that names the same image (only the user
// info or query differ: a new signature, or an imported disk whose URL the
// host returned redacted) is not a new disk.
func sourceURLChangeReplaces(_ context.Context, req planmodifier.StringRequest, resp *stringplanmodifier.RequiresReplaceIfFuncResponse) {
	resp.RequiresReplace = req.StateValue.IsNull() || req.PlanValue.IsNull() || req.PlanValue.IsUnknown() ||
		api.RedactURL(req.StateValue.ValueString()) != api.RedactURL(req.PlanValue.ValueString())
}

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
	// Only the default pool is surely a directory pool; on an rbd pool a
	// clone is raw (checkDiskRBD knows the pool's type at plan time).
	if !cfg.BaseDiskID.IsNull() && cfg.Format.ValueString() == api.FormatRaw && (cfg.Pool.IsNull() || cfg.Pool.ValueString() == "default") {
		resp.Diagnostics.AddAttributeError(path.Root("format"), "Invalid Linked Clone Format",
			"a linked clone (base_disk_id) is a qcow2 overlay; format must be \"qcow2\", not \"raw\".")
	}
	validateDiskEncryption(&cfg, &resp.Diagnostics)
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
	if state == nil || !state.Host.Equal(plan.Host) {
		checkNotEvacuated(r.fleet, plan.Host, &resp.Diagnostics)
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
	r.checkEncryptionKey(ctx, &plan, &resp.Diagnostics)
	r.checkDiskRBD(ctx, plan, &resp.Diagnostics)
	if !resp.Diagnostics.HasError() {
		r.checkDiskPool(ctx, plan, state, &resp.Diagnostics)
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
	defer syncIdentity(ctx, &resp.State, req.Plan, resp.Identity, &resp.Diagnostics, diskIdentityOf)
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
	tflog.Debug(ctx, "creating disk", map[string]any{"id": id, "format": spec.Format, "base": spec.BaseVolume, "source_url": api.RedactURL(spec.SourceURL)})
	v, err := h.Client.PutVolume(ctx, pool, name, spec)
	if err != nil {
		if spec.SourceURL != "" && client.StatusOf(err) == 0 {
			// The volume was created but its download failed (or we lost
			// the host while waiting): track it, tainted, so the next
			// apply replaces it instead of leaving it orphaned.
			if got, gerr := h.Client.GetVolume(ctx, pool, name); gerr == nil && got.SourceURL == api.RedactURL(spec.SourceURL) {
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
			r.saveCreated(ctx, h, &plan, resp, nil)
			addAPIError(&resp.Diagnostics, "Unable to Create Disk", fmt.Sprintf("disk %s: growing to %d MiB", id, want), err)
			return
		}
		v = nil // changed since: read it back
	}
	r.saveCreated(ctx, h, &plan, resp, v)
	if resp.Diagnostics.HasError() {
		return
	}
	if !wantSize.IsNull() && !wantSize.IsUnknown() && plan.SizeMiB.ValueInt64() != wantSize.ValueInt64() {
		resp.Diagnostics.AddAttributeError(path.Root("size_mib"), "Unable to Create Disk",
			fmt.Sprintf("disk %s is %d MiB (the size of its image), larger than size_mib %d; raise size_mib or leave it unset.",
				id, plan.SizeMiB.ValueInt64(), wantSize.ValueInt64()))
	}
}

// saveCreated records a created volume in state, so that even a create
// that fails afterwards leaves the volume tracked (and tainted) rather than
// orphaned. v is the host's answer to the create (what a GET would read),
// or nil when the volume changed since and must be read back.
func (r *DiskResource) saveCreated(ctx context.Context, h *FleetHost, plan *diskModel, resp *resource.CreateResponse, v *api.Volume) {
	hostName, pool, name := plan.location()
	if v == nil {
		var err error
		if v, err = h.Client.GetVolume(ctx, pool, name); err != nil {
			addAPIError(&resp.Diagnostics, "Unable to Read Disk", "disk "+DiskID(hostName, pool, name)+" after create", err)
			return
		}
	}
	plan.fromAPI(hostName, v)
	resp.Diagnostics.Append(resp.State.Set(ctx, plan)...)
}

func (r *DiskResource) Read(ctx context.Context, req resource.ReadRequest, resp *resource.ReadResponse) {
	defer syncIdentity(ctx, &resp.State, req.State, resp.Identity, &resp.Diagnostics, diskIdentityOf)
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
	if h == nil || evacuated(ctx, h, "disk "+state.ID.ValueString(), func() string { return diskEvacuationLoss(ctx, r.fleet, state) }, resp) {
		return
	}
	v, err := h.ReadVolume(ctx, pool, name)
	if isNotFound(err) {
		tflog.Warn(ctx, "disk is gone; removing it from state", map[string]any{"id": state.ID.ValueString()})
		resp.State.RemoveResource(ctx)
		return
	}
	if hostUnreachable(err) {
		warnHostUnreachable(&resp.Diagnostics, hostName, "disk "+state.ID.ValueString(), err)
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
	defer syncIdentity(ctx, &resp.State, req.Plan, resp.Identity, &resp.Diagnostics, diskIdentityOf)
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
		moved, ok := r.move(ctx, state, plan, h, cur, err, resp)
		if !ok {
			return
		}
		cur = moved
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
	if !importIDFromIdentity(ctx, &req, resp, "host", "pool", "name") {
		return
	}
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
