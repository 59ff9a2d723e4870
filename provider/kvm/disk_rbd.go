package kvm

import (
	"context"
	"fmt"

	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-log/tflog"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// Ceph RBD pools, as the hosts' pools report shows them (type "rbd"). Their
// volumes are raw rbd images; a linked clone is an RBD layered clone (raw
// too); encryption and snapshots are not supported there. The plan says so
// before any apply; the hosts refuse the same at apply.

const poolTypeRBD = "rbd"

// hostPoolType is the type of pool on host as the host reports it, "" when
// unknown (no such host or pool, the host down or too old to report pools).
func (f *Fleet) hostPoolType(ctx context.Context, host, pool string) string {
	if f == nil {
		return ""
	}
	h, err := f.Host(host)
	if err != nil {
		return ""
	}
	inv := h.Inventory(ctx)
	if p := inv.Pool(pool); p != nil {
		return p.Type
	}
	return ""
}

// checkDiskRBD is kvm_disk's plan-time look at the type of its pool: rbd
// volumes are raw (a linked clone there too), and cannot be encrypted; a
// linked clone anywhere else is a qcow2 overlay.
func (r *DiskResource) checkDiskRBD(ctx context.Context, plan diskModel, diags *diag.Diagnostics) {
	known := func(v interface {
		IsNull() bool
		IsUnknown() bool
	}) bool {
		return !v.IsNull() && !v.IsUnknown()
	}
	if r.fleet == nil || !known(plan.Host) || !known(plan.Pool) {
		return
	}
	host, pool := plan.Host.ValueString(), plan.Pool.ValueString()
	typ := r.fleet.hostPoolType(ctx, host, pool)
	format := plan.Format.ValueString()
	switch {
	case typ == poolTypeRBD && known(plan.Format) && format != api.FormatRaw:
		diags.AddAttributeError(path.Root("format"), "Disk Format on an rbd Pool",
			fmt.Sprintf("pool %s on host %s is a Ceph rbd pool, whose volumes are raw rbd images: set format = \"raw\" "+
				"(a linked clone there is an RBD clone, raw too).", pool, host))
	case typ == poolTypeRBD && !plan.Encryption.IsNull():
		diags.AddAttributeError(path.Root("encryption"), "Encryption on an rbd Pool",
			fmt.Sprintf("pool %s on host %s is a Ceph rbd pool: encrypted disks are not supported there; use a directory pool.", pool, host))
	case typ != "" && typ != poolTypeRBD && known(plan.BaseDiskID) && format == api.FormatRaw:
		diags.AddAttributeError(path.Root("format"), "Invalid Linked Clone Format",
			fmt.Sprintf("a linked clone (base_disk_id) in pool %s on host %s (a %s pool) is a qcow2 overlay; format must be \"qcow2\", not \"raw\".", pool, host, typ))
	}
}

// adoptSharedRecord tells the new host of a disk on a shared pool what the
// old host recorded about it and the new host lacks: libvirt keeps no base,
// source_url or I/O limits for rbd images, each host keeps its own record,
// and without it the disk would read back different on its new host.
func (r *DiskResource) adoptSharedRecord(ctx context.Context, oldH, newH *FleetHost, pool, name string, cur *api.Volume) *api.Volume {
	if cur == nil {
		return cur
	}
	old, err := oldH.Client.GetVolume(ctx, pool, name)
	if err != nil || (old.BaseVolume == cur.BaseVolume && old.SourceURL == cur.SourceURL &&
		old.SourceChecksum == cur.SourceChecksum && old.IOTune.IsZero() == cur.IOTune.IsZero()) {
		return cur
	}
	spec := api.VolumeSpec{Format: old.Format, BaseVolume: old.BaseVolume, SourceURL: old.SourceURL,
		SourceChecksum: old.SourceChecksum, IOTune: old.IOTune}
	v, err := newH.Client.PutVolume(ctx, pool, name, spec)
	if err != nil {
		tflog.Warn(ctx, "the disk's new host did not adopt the old host's record of it", map[string]any{"disk": pool + "/" + name, "host": newH.Name, "err": err.Error()})
		return cur
	}
	return v
}

// checkRBDAtPlan refuses, at plan time, a snapshot of a VM with a disk on
// an rbd pool, which the host refuses (409): neither libvirt's internal
// nor its external snapshots cover rbd disks, and a snapshot of the other
// disks only would be a silent partial one. A VM not created yet, or a
// host that does not answer, leaves the check to the host at apply.
func (r *SnapshotResource) checkRBDAtPlan(ctx context.Context, plan snapshotModel, resp *resource.ModifyPlanResponse) {
	if r.fleet == nil || plan.VMID.IsUnknown() || plan.VMID.IsNull() {
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
	for _, d := range v.Disks {
		pool := d.Pool
		if pool == "" {
			pool = "default"
		}
		if r.fleet.hostPoolType(ctx, h.Name, pool) == poolTypeRBD {
			resp.Diagnostics.AddAttributeError(path.Root("vm_id"), "Snapshot of a VM With rbd Disks",
				fmt.Sprintf("VM %s has the disk %s/%s on the Ceph rbd pool %s of host %s: snapshots of VMs with rbd disks are not supported "+
					"(a snapshot of its other disks only would be a partial one).", VMID(h.Name, vm), pool, d.Volume, pool, h.Name))
			return
		}
	}
}
