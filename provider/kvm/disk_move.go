package kvm

import (
	"context"
	"fmt"
	"strings"

	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-log/tflog"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/client"
)

// move handles a kvm_disk whose host changes; the volume must keep its
// contents. cur and err are the result of reading the volume on the new
// host h. One attached to a VM moves with it: the target volume the VM's
// migration copies into is prepared (kvm_disk updates are applied before
// the kvm_vm's). One no VM attaches is copied by the new host from the old
// one, then the old copy is deleted. One already on the new host (put there
// by other means, or a copy whose response was lost) is adopted once
// complete. ok is false when the update must stop, with the error in resp.
func (r *DiskResource) move(ctx context.Context, state, plan diskModel, h *FleetHost, cur *api.Volume, err error, resp *resource.UpdateResponse) (*api.Volume, bool) {
	if oldH, herr := r.fleet.Host(state.Host.ValueString()); herr == nil {
		if gone := sourceAnswers(ctx, oldH); gone != nil {
			resp.Diagnostics.AddAttributeError(path.Root("host"), "Unable to Move Disk",
				fmt.Sprintf("disk %s cannot move to host %s: %s.", state.ID.ValueString(), h.Name, gone))
			return nil, false
		}
	}
	if v, handled := r.moveShared(ctx, state, plan, h, cur, err, &resp.Diagnostics); handled {
		return v, !resp.Diagnostics.HasError()
	}
	if moved, handled := r.prepareMove(ctx, state, plan, h, err, resp); handled {
		if resp.Diagnostics.HasError() {
			return nil, false
		}
		return moved, true
	}
	switch {
	case isNotFound(err):
		return r.copyDetached(ctx, state, plan, h, resp)
	case err != nil:
		addAPIError(&resp.Diagnostics, "Unable to Move Disk",
			fmt.Sprintf("disk %s: reading it on its new host %s (nothing was changed: the disk stays on host %s)", state.ID.ValueString(), plan.Host.ValueString(), state.Host.ValueString()), err)
		return nil, false
	default:
		return r.adoptMoved(ctx, state, plan, h, cur, resp)
	}
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
	spec := api.VolumeSpec{SizeMiB: old.SizeMiB, Format: old.Format, BaseVolume: old.BaseVolume, Encryption: old.Encryption}
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
		SourceURL: old.SourceURL, SourceChecksum: old.SourceChecksum, IOTune: old.IOTune, Encryption: old.Encryption}
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
