package kvm

import (
	"context"
	"fmt"
	"strings"

	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/path"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// poolShared reports whether the host serves pool as a shared pool.
func poolShared(inv api.Host, pool string) bool {
	p := inv.Pool(pool)
	return p != nil && p.Shared
}

// migrationStorage is what a VM's move does with each of its disks.
type migrationStorage struct {
	copied   []string // "pool/volume (N GiB)"
	copyMiB  int64
	stay     []string // pool/volume on a shared pool
	problems []string // shared on the source but not served shared by the target
}

// planMigrationStorage works out, from both hosts' inventories and the
// source's volumes, which disks of the VM a move copies: a disk on a pool
// both hosts serve as shared stays where it is; every other disk is
// copied at its full virtual size (an overlay copies only what it holds
// over its base, so this is an upper bound for linked clones).
func planMigrationStorage(ctx context.Context, src, dst *FleetHost, disks []api.VMDisk) (migrationStorage, error) {
	var out migrationStorage
	srcInv, dstInv := src.Inventory(ctx), dst.Inventory(ctx)
	if !srcInv.Healthy {
		return out, fmt.Errorf("host %s is not healthy: %s", src.Name, srcInv.Message)
	}
	for _, d := range disks {
		id := d.Pool + "/" + d.Volume
		if poolShared(srcInv, d.Pool) {
			if dstInv.Healthy && !poolShared(dstInv, d.Pool) {
				out.problems = append(out.problems, fmt.Sprintf("disk %s is on pool %s, which host %s shares but host %s does not serve as a shared pool",
					id, d.Pool, src.Name, dst.Name))
				continue
			}
			out.stay = append(out.stay, id)
			continue
		}
		v, err := src.Client.GetVolume(ctx, d.Pool, d.Volume)
		if err != nil {
			return out, fmt.Errorf("reading disk %s on host %s: %w", id, src.Name, err)
		}
		out.copyMiB += v.SizeMiB
		out.copied = append(out.copied, fmt.Sprintf("%s (%s)", id, gib(v.SizeMiB)))
	}
	return out, nil
}

func gib(mib int64) string { return fmt.Sprintf("%.1f GiB", float64(mib)/1024) }

// warnMigrationStorage is the plan-time word on a VM's host change by live
// or offline migration: which disks move by copy and how many GiB, which
// stay on shared storage; and an error for a disk on a shared pool that
// the new host does not serve as shared (its data would not follow).
func (r *VMResource) warnMigrationStorage(ctx context.Context, plan vmModel, state *vmModel, diags *diag.Diagnostics) {
	if r.fleet == nil || state == nil || plan.Host.IsUnknown() || plan.Host.IsNull() || plan.Host.Equal(state.Host) ||
		!plan.Name.Equal(state.Name) || plan.Migration.ValueString() == "replace" {
		return
	}
	src, err1 := r.fleet.Host(state.Host.ValueString())
	dst, err2 := r.fleet.Host(plan.Host.ValueString())
	if err1 != nil || err2 != nil {
		return
	}
	vm, err := src.Client.GetVM(ctx, state.Name.ValueString())
	if err != nil {
		return // not there (yet, or any more): the apply says what happens
	}
	ms, err := planMigrationStorage(ctx, src, dst, vm.Disks)
	if err != nil {
		diags.AddAttributeWarning(path.Root("host"), "VM Will Migrate",
			fmt.Sprintf("VM %s moves from host %s to host %s; which of its disks are copied could not be read: %s.", vm.Name, src.Name, dst.Name, err))
		return
	}
	if len(ms.problems) > 0 {
		diags.AddAttributeError(path.Root("host"), "Shared Disk Cannot Follow",
			fmt.Sprintf("VM %s cannot move from host %s to host %s: %s. Serve the pool on host %s (kvm-hostd --pool NAME --shared-pool NAME "+
				"on the same mount) or keep the VM where it is.", vm.Name, src.Name, dst.Name, strings.Join(ms.problems, "; "), dst.Name))
		return
	}
	diags.AddAttributeWarning(path.Root("host"), "VM Will Migrate", ms.message(vm.Name, src.Name, dst.Name))
}

// message is the "VM Will Migrate" warning.
func (ms migrationStorage) message(vm, src, dst string) string {
	if len(ms.copied) == 0 {
		if len(ms.stay) == 0 {
			return fmt.Sprintf("VM %s moves from host %s to host %s; it has no disks to copy.", vm, src, dst)
		}
		return fmt.Sprintf("VM %s moves from host %s to host %s with no storage copy: all its disks are on shared pools (%s).",
			vm, src, dst, strings.Join(ms.stay, ", "))
	}
	msg := fmt.Sprintf("VM %s moves from host %s to host %s; its disks %s move by copy, %s in total (at most: a linked clone copies only what it holds over its base).",
		vm, src, dst, strings.Join(ms.copied, ", "), gib(ms.copyMiB))
	if len(ms.stay) > 0 {
		msg += fmt.Sprintf(" Disks on shared pools stay in place: %s.", strings.Join(ms.stay, ", "))
	}
	return msg
}

// moveShared handles a host change of a disk on a pool that both hosts
// serve as shared: the volume is the same file (or image) on both, so
// nothing is copied, prepared or deleted: the disk is simply tracked on
// its new host. handled is false when the pool is not shared on both.
func (r *DiskResource) moveShared(ctx context.Context, state, plan diskModel, newH *FleetHost, cur *api.Volume, curErr error, diags *diag.Diagnostics) (*api.Volume, bool) {
	if r.fleet == nil {
		return nil, false
	}
	oldHost, pool, name := state.location()
	oldH, err := r.fleet.Host(oldHost)
	if err != nil {
		return nil, false
	}
	if !poolShared(oldH.Inventory(ctx), pool) || !poolShared(newH.Inventory(ctx), pool) {
		return nil, false
	}
	if curErr != nil {
		addAPIError(diags, "Unable to Move Disk",
			fmt.Sprintf("disk %s is on pool %s, which hosts %s and %s both serve as shared, but host %s does not see volume %s there "+
				"(is the pool mounted at the same path on both?); nothing was changed", state.ID.ValueString(), pool, oldHost, newH.Name, newH.Name, name), curErr)
		return nil, true
	}
	return r.adoptSharedRecord(ctx, oldH, newH, pool, name, cur), true
}

// checkDiskPool is kvm_disk's plan-time look at its host's pools, when the
// plan creates, moves or grows the disk: the host must serve the pool, and
// a new empty or downloaded disk (at size_mib), a copy onto a new host, or
// a growth must fit in the pool's free space, which the host also checks
// (409) at apply. A host that is down, or too old to report pools, is
// left to the apply.
func (r *DiskResource) checkDiskPool(ctx context.Context, plan diskModel, state *diskModel, diags *diag.Diagnostics) {
	known := func(v interface {
		IsNull() bool
		IsUnknown() bool
	}) bool {
		return !v.IsNull() && !v.IsUnknown()
	}
	if r.fleet == nil || !known(plan.Host) || !known(plan.Pool) {
		return
	}
	creating := state == nil
	moving := state != nil && !plan.Host.Equal(state.Host)
	var need int64
	if known(plan.SizeMiB) {
		switch {
		case (creating || moving) && !known(plan.BaseDiskID) && !plan.BaseDiskID.IsUnknown():
			need = plan.SizeMiB.ValueInt64()
		case !creating && !moving && known(state.SizeMiB):
			need = plan.SizeMiB.ValueInt64() - state.SizeMiB.ValueInt64()
		}
	}
	if !creating && !moving && need <= 0 {
		return
	}
	h, err := r.fleet.Host(plan.Host.ValueString())
	if err != nil {
		return
	}
	inv := h.PlanInventory(ctx)
	if !inv.Healthy || len(inv.Pools) == 0 {
		return
	}
	pool := plan.Pool.ValueString()
	p := inv.Pool(pool)
	if p == nil {
		var served []string
		for _, sp := range inv.Pools {
			served = append(served, sp.Name)
		}
		diags.AddAttributeError(path.Root("pool"), "Pool Not Served",
			fmt.Sprintf("host %s does not serve pool %q (it serves: %s). An operator defines the pool in libvirt and starts kvm-hostd with --pool %s.",
				h.Name, pool, strings.Join(served, ", "), pool))
		return
	}
	if moving && p.Shared {
		return // the same volume: nothing is copied
	}
	if need > p.FreeMiB {
		diags.AddAttributeError(path.Root("size_mib"), "Disk Does Not Fit",
			fmt.Sprintf("disk %s/%s needs %d MiB on host %s, but pool %s has %d MiB free of %d MiB.",
				pool, plan.Name.ValueString(), need, h.Name, pool, p.FreeMiB, p.CapacityMiB))
	}
}
