package kvm

import (
	"context"
	"fmt"

	"github.com/hashicorp/terraform-plugin-framework-validators/stringvalidator"
	"github.com/hashicorp/terraform-plugin-framework/action"
	"github.com/hashicorp/terraform-plugin-framework/action/schema"
	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/schema/validator"
	"github.com/hashicorp/terraform-plugin-framework/types"
	"github.com/hashicorp/terraform-plugin-log/tflog"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

var (
	_ action.ActionWithConfigure  = &VMPowerAction{}
	_ action.ActionWithModifyPlan = &VMPowerAction{}
)

// VMPowerAction is the kvm_vm_power action: start, stop or reboot a VM
// once, outside its resource's lifecycle (Terraform >= 1.14). OpenTofu has
// no actions; there the same is kvm_vm.running (start, stop) or a change
// that restarts the VM.
type VMPowerAction struct{ fleet *Fleet }

// NewVMPowerAction returns the kvm_vm_power action.
func NewVMPowerAction() action.Action { return &VMPowerAction{} }

type vmPowerModel struct {
	VMID  types.String `tfsdk:"vm_id"`
	State types.String `tfsdk:"state"`
}

func (a *VMPowerAction) Metadata(_ context.Context, req action.MetadataRequest, resp *action.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_vm_power"
}

func (a *VMPowerAction) Schema(_ context.Context, _ action.SchemaRequest, resp *action.SchemaResponse) {
	resp.Schema = schema.Schema{
		MarkdownDescription: "Starts, stops or reboots a VM (`kvm_vm`) once, when invoked with `terraform apply -invoke=action.kvm_vm_power.NAME` " +
			"or from a resource's `lifecycle { action_trigger { ... } }`. Needs Terraform 1.14 or later; OpenTofu has no actions: " +
			"there, use `kvm_vm.running` to start or stop a VM. The action changes only the power state, not the `kvm_vm` " +
			"resource: a VM whose configuration says `running = true` and that the action stopped is started again by the next " +
			"`terraform apply` (which shows it as a change of `running`).",
		Attributes: map[string]schema.Attribute{
			"vm_id": schema.StringAttribute{
				MarkdownDescription: "The VM: `<host>/<vm name>` (e.g. `\"${kvm_vm.web.host}/${kvm_vm.web.name}\"`) or its UUID " +
					"(`kvm_vm.web.id`; a UUID is looked up on every configured host).",
				Required:   true,
				Validators: []validator.String{vmRefFormat()},
			},
			"state": schema.StringAttribute{
				MarkdownDescription: "What to do: `running` starts a stopped VM; `stopped` shuts a running VM down gracefully (ACPI), " +
					"powering it off once its `shutdown_timeout` has passed; `rebooted` does that shutdown and starts the VM again, " +
					"so the guest boots afresh (a stopped VM is just started). `running` and `stopped` do nothing to a VM already " +
					"in that state.",
				Required:   true,
				Validators: []validator.String{stringvalidator.OneOf(api.PowerStates...)},
			},
		},
	}
}

func (a *VMPowerAction) Configure(_ context.Context, req action.ConfigureRequest, resp *action.ConfigureResponse) {
	a.fleet = fleetFrom(req.ProviderData, &resp.Diagnostics)
}

// ModifyPlan refuses, at plan time, a "<host>/<vm>" vm_id on a host the
// provider does not have.
func (a *VMPowerAction) ModifyPlan(ctx context.Context, req action.ModifyPlanRequest, resp *action.ModifyPlanResponse) {
	var m vmPowerModel
	resp.Diagnostics.Append(req.Config.Get(ctx, &m)...)
	if resp.Diagnostics.HasError() {
		return
	}
	checkVMRefHost(a.fleet, m.VMID, path.Root("vm_id"), &resp.Diagnostics)
}

// checkVMRefHost reports a "<host>/..." reference to a host the provider
// is not configured with. UUIDs, unknown values and malformed IDs (the
// validators report those) pass.
func checkVMRefHost(f *Fleet, ref types.String, p path.Path, diags *diag.Diagnostics) {
	if f == nil || ref.IsNull() || ref.IsUnknown() || uuidPattern.MatchString(ref.ValueString()) {
		return
	}
	host, _, err := ParseVMID(ref.ValueString())
	if err != nil {
		host, _, _, err = ParseSnapshotID(ref.ValueString())
	}
	if err != nil {
		return
	}
	if _, err := f.Host(host); err != nil {
		diags.AddAttributeError(p, "Unknown Host", err.Error())
	}
}

func (a *VMPowerAction) Invoke(ctx context.Context, req action.InvokeRequest, resp *action.InvokeResponse) {
	var m vmPowerModel
	resp.Diagnostics.Append(req.Config.Get(ctx, &m)...)
	if resp.Diagnostics.HasError() {
		return
	}
	if a.fleet == nil {
		resp.Diagnostics.AddError("Provider Not Configured", "kvm_vm_power needs a configured provider.")
		return
	}
	state := m.State.ValueString()
	h, vm, err := (&SnapshotResource{fleet: a.fleet}).resolveVM(ctx, m.VMID.ValueString())
	if err != nil {
		resp.Diagnostics.AddAttributeError(path.Root("vm_id"), "VM Not Found", err.Error())
		return
	}
	what := "VM " + VMID(h.Name, vm)
	progress(resp, fmt.Sprintf("%s: asking for %s", what, state))
	tflog.Info(ctx, "VM power action", map[string]any{"vm": VMID(h.Name, vm), "state": state})
	v, err := h.Client.PowerVM(ctx, vm, state)
	if err != nil {
		addAPIError(&resp.Diagnostics, "Unable to Change the VM's Power State", what, err)
		return
	}
	msg := fmt.Sprintf("%s is %s", what, v.State)
	if v.Restarted {
		msg += " (restarted)"
	}
	progress(resp, msg)
}

// progress sends a progress message when Terraform listens for them.
func progress(resp *action.InvokeResponse, msg string) {
	if resp.SendProgress != nil {
		resp.SendProgress(action.InvokeProgressEvent{Message: msg})
	}
}
