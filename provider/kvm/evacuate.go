package kvm

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/provider/schema"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/types"
	"github.com/hashicorp/terraform-plugin-log/tflog"
)

// Host loss. Terraform cannot fence a host, so it never decides on its own
// that one is dead: while a host does not answer, its objects keep their
// state (with a warning), placement moves its keys away, and an apply that
// needs it (a migration from it) fails before changing anything. Only the
// operator, having fenced the host (powered it off, cut it from its
// storage), says it is gone with evacuate = true, like Nova's evacuate.
// Then, as long as the host still does not answer, every VM, disk and
// snapshot recorded on it is dropped from the state, with a warning saying
// exactly what is lost, and the next apply creates them again where their
// configuration (typically kvm_cluster_placement) puts them: a disk on a
// shared pool is adopted with its contents, any other disk is created anew
// (from its base volume, its source_url, or empty).

func hostEvacuateAttribute() schema.Attribute {
	return schema.BoolAttribute{
		MarkdownDescription: "The host is lost and the operator has **fenced** it (powered it off, or cut it from its network and " +
			"shared storage, so its VMs cannot still be running and writing): every VM, disk and snapshot the state records on it is " +
			"dropped from the state at the next refresh, with a warning saying what is lost, and the next apply re-creates them where " +
			"their configuration puts them (use `kvm_cluster_placement`, which moves keys off a host that does not answer). A disk on a " +
			"pool the other hosts serve as shared is adopted with its contents; any other disk is created anew from its base volume, " +
			"its `source_url`, or empty, so its contents are lost, as are every VM's memory and snapshots. Refused (plan error) while the " +
			"host still answers: Terraform cannot fence a host, so it never evacuates one that may still run its VMs. Nothing can be " +
			"created on an evacuated host. Default `false`; remove it once the host is rebuilt (empty) or gone from `hosts`.",
		Optional: true,
	}
}

// fenceTimeout bounds the check that an evacuated host really is gone.
const fenceTimeout = 5 * time.Second

// fenceCheck caches, per provider instance, whether an evacuated host
// answers, so a plan with many objects on it waits for it once.
type fenceCheck struct {
	once sync.Once
	err  error
}

// fenced returns nil when h does not answer, so its evacuation may go on,
// and an error saying it still answers otherwise.
func (h *FleetHost) fenced(ctx context.Context) error {
	h.fence.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), fenceTimeout)
		defer cancel()
		_, err := h.Client.Host(ctx)
		if err == nil || !hostUnreachable(err) {
			answer := "its inventory"
			if err != nil {
				answer = err.Error()
			}
			h.fence.err = fmt.Errorf("host %s has evacuate = true but still answers (%s). Terraform cannot fence a host, so it "+
				"refuses to re-create the VMs of one that may still run them: fence the host first (power it off, or cut it from its "+
				"network and storage), or remove evacuate = true", h.Name, answer)
		}
	})
	return h.fence.err
}

// sharedPoolsElsewhere names the pools that a host other than the
// evacuated ones serves as shared, as they answer now: a disk on one of them
// outlives its host.
func (f *Fleet) sharedPoolsElsewhere(ctx context.Context) map[string]bool {
	f.evacPools.once.Do(func() {
		var names []string
		for _, n := range f.Names() {
			if !f.hosts[n].Evacuate {
				names = append(names, n)
			}
		}
		f.evacPools.shared = map[string]bool{}
		for _, inv := range f.Inventories(ctx, names) {
			for _, p := range inv.Pools {
				if p.Shared {
					f.evacPools.shared[p.Name] = true
				}
			}
		}
	})
	return f.evacPools.shared
}

type sharedPoolCache struct {
	once   sync.Once
	shared map[string]bool
}

// evacuated handles the Read of an object on host h when h is evacuated:
// it reports false when h is not. Otherwise, if h still answers, Read fails
// with that; if not, the object is dropped from the state with a warning
// that says what, and lost (called only then) what is lost.
func evacuated(ctx context.Context, h *FleetHost, what string, lost func() string, resp *resource.ReadResponse) bool {
	if h == nil || !h.Evacuate {
		return false
	}
	if err := h.fenced(ctx); err != nil {
		resp.Diagnostics.AddError("Evacuated Host Still Answers", err.Error())
		return true
	}
	tflog.Warn(ctx, "object on an evacuated host dropped from state", map[string]any{"host": h.Name, "object": what})
	// One summary per object: terraform folds warnings that share a
	// summary, and each object's loss must show.
	resp.Diagnostics.AddWarning("Evacuated Host: "+what+" Dropped",
		fmt.Sprintf("Host %s is evacuated (evacuate = true) and does not answer, so %s is dropped from the state; the next apply "+
			"creates it again on the host its configuration names. %s", h.Name, what, lost()))
	resp.State.RemoveResource(ctx)
	return true
}

// vmEvacuationLoss says what re-creating VM m elsewhere loses.
func vmEvacuationLoss(ctx context.Context, f *Fleet, m vmModel) string {
	shared := f.sharedPoolsElsewhere(ctx)
	var kept, lost []string
	disks, _ := m.disksOf(ctx)
	for _, d := range disks {
		id := d.DiskID.ValueString()
		_, pool, _, err := ParseDiskID(id)
		switch {
		case err != nil:
			lost = append(lost, id)
		case shared[pool]:
			kept = append(kept, id)
		default:
			lost = append(lost, id)
		}
	}
	var b strings.Builder
	b.WriteString("Lost: the guest's memory and running state (it boots afresh, with a new UUID) and its snapshots")
	if len(lost) > 0 {
		fmt.Fprintf(&b, ", and the contents of disk(s) %s, which are not on a shared pool (each kvm_disk warns how it is re-created)", strings.Join(lost, ", "))
	}
	b.WriteString(".")
	if len(kept) > 0 {
		fmt.Fprintf(&b, " Kept: disk(s) %s, on pools the other hosts serve as shared; the VM boots from them.", strings.Join(kept, ", "))
	}
	return b.String()
}

// diskEvacuationLoss says what re-creating disk m elsewhere loses.
func diskEvacuationLoss(ctx context.Context, f *Fleet, m diskModel) string {
	pool := m.Pool.ValueString()
	if f.sharedPoolsElsewhere(ctx)[pool] {
		return fmt.Sprintf("Nothing is lost: pool %s is shared, so the volume is adopted with its contents by the host that creates it.", pool)
	}
	from := "empty"
	switch {
	case !m.BaseDiskID.IsNull() && m.BaseDiskID.ValueString() != "":
		from = "as a fresh linked clone of base disk " + m.BaseDiskID.ValueString() + " (as re-created on the new host)"
	case !m.SourceURL.IsNull() && m.SourceURL.ValueString() != "":
		from = "from its source_url, downloaded again"
	}
	return fmt.Sprintf("Lost: its contents, because pool %s is not shared; it is re-created %s.", pool, from)
}

// checkNotEvacuated refuses, at plan time, an object planned onto an
// evacuated host.
func checkNotEvacuated(f *Fleet, host types.String, diags *diag.Diagnostics) {
	if f == nil || host.IsNull() || host.IsUnknown() {
		return
	}
	if h, err := f.Host(host.ValueString()); err == nil && h.Evacuate {
		var others []string
		for _, n := range f.Names() {
			if !f.hosts[n].Evacuate {
				others = append(others, n)
			}
		}
		diags.AddAttributeError(path.Root("host"), "Host Is Evacuated",
			fmt.Sprintf("host %s has evacuate = true in the provider's hosts, so nothing can be created on it; choose another host (%s), "+
				"e.g. from kvm_cluster_placement's assignments.", h.Name, strings.Join(others, ", ")))
	}
}

// sourceAnswers is the check before a migration or a disk move: the source
// host must answer, since libvirt migrates from it. A host that does not is
// a clear error before anything changes.
func sourceAnswers(ctx context.Context, h *FleetHost) error {
	ctx, cancel := context.WithTimeout(ctx, inventoryTimeout)
	defer cancel()
	_, err := h.Client.Host(ctx)
	if err == nil || !hostUnreachable(err) {
		return nil
	}
	return fmt.Errorf("host %s does not answer (%s), and moving its objects needs it. Nothing was changed. If the host is lost for good, "+
		"fence it (power it off) and set evacuate = true on it in the provider's hosts: its VMs and disks are then re-created elsewhere "+
		"instead of migrated", h.Name, err)
}
