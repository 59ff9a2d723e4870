package kvm

import (
	"context"
	"fmt"

	"github.com/hashicorp/terraform-plugin-framework/action"
	"github.com/hashicorp/terraform-plugin-framework/action/schema"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/schema/validator"
	"github.com/hashicorp/terraform-plugin-framework/types"
	"github.com/hashicorp/terraform-plugin-log/tflog"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

var (
	_ action.ActionWithConfigure  = &SnapshotRevertAction{}
	_ action.ActionWithModifyPlan = &SnapshotRevertAction{}
)

// SnapshotRevertAction is the kvm_snapshot_revert action: revert a VM to
// one of its snapshots once (Terraform >= 1.14). The way without actions
// (OpenTofu) is a new value of kvm_snapshot.revert_trigger.
type SnapshotRevertAction struct{ fleet *Fleet }

// NewSnapshotRevertAction returns the kvm_snapshot_revert action.
func NewSnapshotRevertAction() action.Action { return &SnapshotRevertAction{} }

type snapshotRevertModel struct {
	SnapshotID types.String `tfsdk:"snapshot_id"`
}

func (a *SnapshotRevertAction) Metadata(_ context.Context, req action.MetadataRequest, resp *action.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_snapshot_revert"
}

// snapshotIDFormat accepts "<host>/<vm name>/<snapshot name>".
func snapshotIDFormat() validator.String {
	return stringCheck{
		desc: "must be `<host>/<vm name>/<snapshot name>`",
		check: func(s string) error {
			_, vm, name, err := ParseSnapshotID(s)
			if err != nil {
				return fmt.Errorf("snapshot_id %q must be \"<host>/<vm name>/<snapshot name>\" (e.g. kvm_snapshot.before_upgrade.id)", s)
			}
			if err := api.ValidateName("VM", vm); err != nil {
				return err
			}
			return api.ValidateName("snapshot", name)
		},
	}
}

func (a *SnapshotRevertAction) Schema(_ context.Context, _ action.SchemaRequest, resp *action.SchemaResponse) {
	resp.Schema = schema.Schema{
		MarkdownDescription: "Reverts a VM to one of its snapshots (`kvm_snapshot`) in place, once, when invoked with " +
			"`terraform apply -invoke=action.kvm_snapshot_revert.NAME` or from a resource's `lifecycle { action_trigger { ... } }`. " +
			"The VM comes back in the run state it had when the snapshot was taken. Needs Terraform 1.14 or later; OpenTofu has " +
			"no actions: there, set `revert_trigger` of the `kvm_snapshot` to a new value, which reverts the same way.",
		Attributes: map[string]schema.Attribute{
			"snapshot_id": schema.StringAttribute{
				MarkdownDescription: "The snapshot: `<host>/<vm name>/<snapshot name>`, the `id` of a `kvm_snapshot`.",
				Required:            true,
				Validators:          []validator.String{snapshotIDFormat()},
			},
		},
	}
}

func (a *SnapshotRevertAction) Configure(_ context.Context, req action.ConfigureRequest, resp *action.ConfigureResponse) {
	a.fleet = fleetFrom(req.ProviderData, &resp.Diagnostics)
}

// ModifyPlan refuses a snapshot on a host the provider does not have.
func (a *SnapshotRevertAction) ModifyPlan(ctx context.Context, req action.ModifyPlanRequest, resp *action.ModifyPlanResponse) {
	var m snapshotRevertModel
	resp.Diagnostics.Append(req.Config.Get(ctx, &m)...)
	if resp.Diagnostics.HasError() {
		return
	}
	checkVMRefHost(a.fleet, m.SnapshotID, path.Root("snapshot_id"), &resp.Diagnostics)
}

func (a *SnapshotRevertAction) Invoke(ctx context.Context, req action.InvokeRequest, resp *action.InvokeResponse) {
	var m snapshotRevertModel
	resp.Diagnostics.Append(req.Config.Get(ctx, &m)...)
	if resp.Diagnostics.HasError() {
		return
	}
	if a.fleet == nil {
		resp.Diagnostics.AddError("Provider Not Configured", "kvm_snapshot_revert needs a configured provider.")
		return
	}
	id := m.SnapshotID.ValueString()
	host, vm, name, err := ParseSnapshotID(id)
	if err != nil {
		resp.Diagnostics.AddAttributeError(path.Root("snapshot_id"), "Invalid Snapshot ID", err.Error())
		return
	}
	h, err := a.fleet.Host(host)
	if err != nil {
		resp.Diagnostics.AddAttributeError(path.Root("snapshot_id"), "Unknown Host", err.Error())
		return
	}
	progress(resp, "reverting VM "+VMID(host, vm)+" to snapshot "+name)
	tflog.Info(ctx, "snapshot revert action", map[string]any{"id": id})
	if _, err := h.Client.RevertSnapshot(ctx, vm, name); err != nil {
		addAPIError(&resp.Diagnostics, "Unable to Revert to Snapshot", "snapshot "+id, err)
		return
	}
	progress(resp, "VM "+VMID(host, vm)+" reverted to snapshot "+name)
}
