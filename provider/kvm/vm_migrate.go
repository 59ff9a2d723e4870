package kvm

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-log/tflog"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/client"
)

// migrate moves VM prior.Name from prior.Host to dst (plan.Host) with
// plan.Migration ("live" or "offline"), as the source host's operation.
// Before anything moves it checks what the target needs: a migration_uri,
// room for the VM, the VM's networks, and each disk already prepared there
// (kvm_disk updates, applied first, create them); each target volume is
// recreated fresh right before the copy. It reports false, with the error
// in resp, when the VM did not move; libvirt then leaves it on the source.
func (r *VMResource) migrate(ctx context.Context, plan, prior vmModel, dst *FleetHost, resp *resource.UpdateResponse) bool {
	src := lookupHost(r.fleet, prior.Host.ValueString(), &resp.Diagnostics)
	if src == nil {
		return false
	}
	name := plan.Name.ValueString()
	mode := plan.Migration.ValueString()
	if mode == "" {
		mode = vmDefaultMigration
	}
	fail := func(format string, args ...any) bool {
		resp.Diagnostics.AddAttributeError(path.Root("host"), "Unable to Migrate VM",
			fmt.Sprintf("VM %s cannot move from host %s to host %s: ", name, src.Name, dst.Name)+fmt.Sprintf(format, args...)+
				fmt.Sprintf(" Nothing was moved: the VM stays on host %s.", src.Name))
		return false
	}

	if err := sourceAnswers(ctx, src); err != nil {
		resp.Diagnostics.AddAttributeError(path.Root("host"), "Unable to Migrate VM",
			fmt.Sprintf("VM %s cannot move from host %s to host %s: %s.", name, src.Name, dst.Name, err))
		return false
	}
	// A previous apply may have migrated it and lost the response.
	if there, err := dst.Client.GetVM(ctx, name); err == nil {
		if there.UUID == prior.ID.ValueString() {
			tflog.Info(ctx, "VM is already on its new host", map[string]any{"name": name, "host": dst.Name})
			return true
		}
		return fail("host %s already has another VM named %s (UUID %s).", dst.Name, name, there.UUID)
	} else if !isNotFound(err) {
		return fail("reading host %s failed: %s.", dst.Name, err)
	}

	vm, err := src.Client.GetVM(ctx, name)
	if err != nil {
		addAPIError(&resp.Diagnostics, "Unable to Migrate VM", fmt.Sprintf("VM %s on host %s", name, src.Name), err)
		return false
	}
	if len(vm.PCIDevices) > 0 {
		return fail("it has PCI passthrough devices (pci_devices %s), which cannot follow it to another machine; remove them first, "+
			"or set migration = \"replace\".", strings.Join(vm.PCIDevices, ", "))
	}
	inv := dst.Inventory(ctx)
	if !inv.Healthy {
		return fail("host %s is not healthy: %s.", dst.Name, inv.Message)
	}
	if inv.Maintenance {
		return fail("host %s is in maintenance and admits no new VMs; choose another host (kvm_cluster_placement does).", dst.Name)
	}
	if inv.MigrationURI == "" {
		return fail("host %s reports no migration_uri, so its libvirt cannot be reached for migration; start its kvm-hostd with "+
			"--migration-uri (KVM_HOSTD_MIGRATION_URI), e.g. qemu+tcp://<its address>/system.", dst.Name)
	}
	srcInv := src.Inventory(ctx)
	mem := api.VMMemoryMiB(vm.VMSpec)
	// libvirt moves the VM without the target's kvm-hostd, so the target
	// admits it now, like a create, and holds the room until the domain is
	// defined there (it then counts itself). The reservation is released
	// however the migration ends; its TTL covers a lost release.
	// The TTL covers an offline migration's graceful shutdown before
	// libvirt defines the domain on the target.
	// The host refuses a ttl_sec beyond api.MaxReservationTTLSec; the
	// shutdown timeout is at most api.MaxShutdownTimeoutSec, but clamp
	// anyway so a VM read back with an odd value still migrates.
	ttl := int64(api.DefaultReservationTTLSec)
	if vm.ShutdownTimeoutSec != nil {
		ttl += min(max(*vm.ShutdownTimeoutSec, 0), api.MaxShutdownTimeoutSec)
	}
	ttl = min(ttl, api.MaxReservationTTLSec)
	_, err = dst.Client.PutReservation(ctx, name, api.ReservationSpec{VCPU: vm.VCPU, MemoryMiB: mem, TTLSec: ttl, SourceHost: src.Name,
		SharedDisks: sharedDisksOf(vm.Disks, srcInv)})
	switch {
	case err == nil:
		defer func() {
			if err := dst.Client.DeleteReservation(context.WithoutCancel(ctx), name); err != nil && !isNotFound(err) {
				tflog.Warn(ctx, "releasing the target's reservation failed; it expires by itself", map[string]any{"name": name, "host": dst.Name, "error": err.Error()})
			}
		}()
	case !isNotFound(err):
		return fail("%s.", strings.TrimSuffix(apiMessage(err), "."))
	default:
		// A kvm-hostd without reservations: its inventory is all there is.
		tflog.Warn(ctx, "target host cannot reserve room for a migration; checking its inventory instead", map[string]any{"host": dst.Name})
		if capV := api.Capacity(inv.CPUs, inv.CPUOvercommit); inv.CPUs > 0 && inv.AllocatedVCPU+vm.VCPU > capV {
			return fail("host %s is full: the VM needs %d vCPU, %d of %d are free.", dst.Name, vm.VCPU, max(capV-inv.AllocatedVCPU, 0), capV)
		}
		if capM := api.Capacity(inv.MemoryMiB, inv.MemoryOvercommit); inv.MemoryMiB > 0 && inv.AllocatedMemoryMiB+mem > capM {
			return fail("host %s is full: the VM needs %d MiB of memory, %d of %d MiB are free.", dst.Name, mem, max(capM-inv.AllocatedMemoryMiB, 0), capM)
		}
	}
	for i, n := range vm.Interfaces {
		if _, err := dst.Client.GetNetwork(ctx, n.Network); err != nil {
			if isNotFound(err) {
				return fail("network_interfaces[%d]: network %q does not exist on host %s (add the host to the kvm_network's hosts).", i, n.Network, dst.Name)
			}
			return fail("network_interfaces[%d]: reading network %q on host %s failed: %s.", i, n.Network, dst.Name, err)
		}
	}
	for i, d := range vm.Disks {
		shared := poolShared(srcInv, d.Pool)
		if shared && !poolShared(inv, d.Pool) {
			return fail("disks[%d]: volume %s/%s is on pool %s, which host %s shares but host %s does not serve as a shared pool, so its data would not follow.",
				i, d.Pool, d.Volume, d.Pool, src.Name, dst.Name)
		}
		tv, err := dst.Client.GetVolumeUsage(ctx, d.Pool, d.Volume)
		if err != nil {
			if isNotFound(err) {
				return fail("disks[%d]: volume %s/%s is not on host %s; set host = %q on its kvm_disk too (a disk moves with its VM).",
					i, d.Pool, d.Volume, dst.Name, dst.Name)
			}
			return fail("disks[%d]: reading volume %s/%s on host %s failed: %s.", i, d.Pool, d.Volume, dst.Name, err)
		}
		if len(tv.UsedBy) > 0 {
			return fail("disks[%d]: volume %s/%s on host %s is attached to VM(s) %v there.", i, d.Pool, d.Volume, dst.Name, tv.UsedBy)
		}
		if shared {
			// The same volume: nothing to prepare, and recreating it
			// would empty the VM's disk.
			continue
		}
		sv, err := src.Client.GetVolume(ctx, d.Pool, d.Volume)
		if err != nil {
			return fail("disks[%d]: reading volume %s/%s on host %s failed: %s.", i, d.Pool, d.Volume, src.Name, err)
		}
		if k := sv.Encryption.KeyName(); k != tv.Encryption.KeyName() {
			return fail("disks[%d]: volume %s/%s is encrypted with key %q on host %s but with %q on host %s.",
				i, d.Pool, d.Volume, k, src.Name, tv.Encryption.KeyName(), dst.Name)
		}
		if sv.Format != tv.Format || sv.BaseVolume != tv.BaseVolume || sv.SizeMiB != tv.SizeMiB {
			return fail("disks[%d]: volume %s/%s on host %s (%s, %d MiB, base %q) does not match the one on host %s (%s, %d MiB, base %q).",
				i, d.Pool, d.Volume, dst.Name, tv.Format, tv.SizeMiB, tv.BaseVolume, src.Name, sv.Format, sv.SizeMiB, sv.BaseVolume)
		}
		// Incremental storage migration needs a fresh overlay, and a full
		// copy an unwritten target: an earlier failed attempt may have
		// written into it.
		if _, err := dst.Client.PutVolume(ctx, d.Pool, d.Volume, api.VolumeSpec{
			SizeMiB: tv.SizeMiB, Format: tv.Format, BaseVolume: tv.BaseVolume, IOTune: tv.IOTune, Encryption: tv.Encryption, Recreate: true,
		}); err != nil {
			return fail("disks[%d]: preparing volume %s/%s on host %s failed: %s.", i, d.Pool, d.Volume, dst.Name, err)
		}
	}

	tflog.Info(ctx, "migrating VM", map[string]any{"name": name, "from": src.Name, "to": dst.Name, "mode": mode, "target_uri": inv.MigrationURI})
	t0 := time.Now()
	_, err = src.Client.MigrateVM(ctx, name, api.MigrateRequest{TargetHost: dst.Name, TargetURI: inv.MigrationURI, Mode: mode},
		"migrate-"+client.NewRequestID())
	if err != nil {
		where := fmt.Sprintf("Where it is now could not be read; run terraform refresh (hosts %s and %s).", src.Name, dst.Name)
		if _, gerr := src.Client.GetVM(ctx, name); gerr == nil {
			where = fmt.Sprintf("The VM stays on host %s.", src.Name)
		} else if _, gerr := dst.Client.GetVM(ctx, name); gerr == nil {
			where = fmt.Sprintf("The VM is on host %s nevertheless; the next apply adopts it.", dst.Name)
		}
		resp.Diagnostics.AddAttributeError(path.Root("host"), "Unable to Migrate VM",
			fmt.Sprintf("Migrating VM %s from host %s to host %s (%s) failed: %s. %s", name, src.Name, dst.Name, mode, apiMessage(err), where))
		return false
	}
	moved, err := dst.Client.GetVM(ctx, name)
	if err != nil {
		addAPIError(&resp.Diagnostics, "Unable to Read VM After Migration", fmt.Sprintf("VM %s on host %s", name, dst.Name), err)
		return false
	}
	if moved.UUID != vm.UUID {
		resp.Diagnostics.AddError("VM Identity Changed", fmt.Sprintf("VM %s on host %s has UUID %s after migration, want %s.", name, dst.Name, moved.UUID, vm.UUID))
		return false
	}
	tflog.Info(ctx, "VM migrated", map[string]any{"name": name, "from": src.Name, "to": dst.Name, "took": time.Since(t0).String()})
	return true
}

// sharedDisksOf are the disks of a VM on pools the source host shares:
// the target opens them in place, so its reservation names them (it
// registers the secret of an encrypted one there before the move).
func sharedDisksOf(disks []api.VMDisk, srcInv api.Host) []api.ReservationDisk {
	var out []api.ReservationDisk
	for _, d := range disks {
		if poolShared(srcInv, d.Pool) {
			out = append(out, api.ReservationDisk{Pool: d.Pool, Volume: d.Volume})
		}
	}
	return out
}
