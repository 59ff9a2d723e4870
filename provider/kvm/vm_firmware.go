package kvm

import (
	"context"

	"github.com/hashicorp/terraform-plugin-framework-validators/stringvalidator"
	"github.com/hashicorp/terraform-plugin-framework/attr"
	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/booldefault"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/stringdefault"
	"github.com/hashicorp/terraform-plugin-framework/schema/validator"
	"github.com/hashicorp/terraform-plugin-framework/types"
	"github.com/hashicorp/terraform-plugin-framework/types/basetypes"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// vmFirmwareModel is the firmware part of a kvm_vm's state (embedded in
// vmModel).
type vmFirmwareModel struct {
	Firmware   types.String `tfsdk:"firmware"`
	SecureBoot types.Bool   `tfsdk:"secure_boot"`
	TPM        types.Object `tfsdk:"tpm"`
}

type vmTPMModel struct {
	Version types.String `tfsdk:"version"`
}

var vmTPMAttrTypes = map[string]attr.Type{"version": types.StringType}

// vmFirmwareAttributes are kvm_vm's firmware, secure_boot and tpm.
func vmFirmwareAttributes() map[string]schema.Attribute {
	return map[string]schema.Attribute{
		"firmware": schema.StringAttribute{
			MarkdownDescription: "The VM's firmware: `bios` (default; SeaBIOS on libvirt's default machine type, i440fx) or " +
				"`efi` (UEFI: OVMF, chosen by libvirt's firmware auto-selection, on a q35 machine). A UEFI VM gets its own " +
				"NVRAM (variable store), made by libvirt from the firmware's template at its first start, kept across " +
				"restarts, copied along on a migration and deleted with the VM. The host needs the `ovmf` package; one " +
				"without it refuses the VM with a 409 saying so. Changing it restarts a running VM once (same UUID; from " +
				"`bios` the VM moves to a q35 machine and its devices get new PCI addresses) and resets its NVRAM. A UEFI VM cannot " +
				"have `kvm_snapshot`s: libvirt takes internal snapshots, which it refuses for a VM with a UEFI variable store.",
			Optional: true, Computed: true,
			Default:    stringdefault.StaticString(api.FirmwareBIOS),
			Validators: []validator.String{stringvalidator.OneOf(api.FirmwareBIOS, api.FirmwareEFI)},
		},
		"secure_boot": schema.BoolAttribute{
			MarkdownDescription: "Boots with UEFI Secure Boot on, Microsoft's keys enrolled (what Windows 11 and shim-signed " +
				"Linux distributions boot with) and the variable store protected by SMM. Needs `firmware = \"efi\"`. Default " +
				"`false`. Changing it restarts a running VM once and resets its NVRAM (the keys come from the template).",
			Optional: true, Computed: true,
			Default: booldefault.StaticBool(false),
		},
		"tpm": schema.SingleNestedAttribute{
			MarkdownDescription: "An emulated TPM (swtpm, CRB interface; `/dev/tpm0` in a Linux guest). Its state lives on " +
				"the host with the VM (`/var/lib/libvirt/swtpm/<uuid>`), survives restarts, moves with a migration and is " +
				"deleted with the VM. The host needs the `swtpm` and `swtpm-tools` packages; one without them refuses the " +
				"VM with a 409 saying so. Adding or removing it restarts a running VM once (same UUID). Omit for no TPM.",
			Optional: true,
			Attributes: map[string]schema.Attribute{
				"version": schema.StringAttribute{
					MarkdownDescription: "The TPM version; only `\"2.0\"`.",
					Required:            true,
					Validators:          []validator.String{stringvalidator.OneOf(api.TPMVersion20)},
				},
			},
		},
	}
}

// firmwareToAPI sets spec's firmware, secure_boot and tpm from the model.
func (m *vmFirmwareModel) firmwareToAPI(ctx context.Context, spec *api.VMSpec) diag.Diagnostics {
	spec.Firmware = knownString(m.Firmware)
	if spec.Firmware == "" {
		spec.Firmware = api.FirmwareBIOS
	}
	spec.SecureBoot = !m.SecureBoot.IsNull() && !m.SecureBoot.IsUnknown() && m.SecureBoot.ValueBool()
	if m.TPM.IsNull() || m.TPM.IsUnknown() {
		return nil
	}
	var t vmTPMModel
	diags := m.TPM.As(ctx, &t, basetypes.ObjectAsOptions{UnhandledUnknownAsEmpty: true})
	spec.TPM = &api.TPM{Version: knownString(t.Version)}
	return diags
}

// firmwareFromAPI reads firmware, secure_boot and tpm back.
func firmwareFromAPI(ctx context.Context, vm *api.VM) (vmFirmwareModel, diag.Diagnostics) {
	m := vmFirmwareModel{
		Firmware:   types.StringValue(api.FirmwareBIOS),
		SecureBoot: types.BoolValue(vm.SecureBoot),
		TPM:        types.ObjectNull(vmTPMAttrTypes),
	}
	if vm.Firmware != "" {
		m.Firmware = types.StringValue(vm.Firmware)
	}
	if vm.TPM == nil {
		return m, nil
	}
	obj, diags := types.ObjectValueFrom(ctx, vmTPMAttrTypes, vmTPMModel{Version: types.StringValue(vm.TPM.Version)})
	m.TPM = obj
	return m, diags
}

// validateFirmware fails the plan for secure_boot without firmware = "efi".
func validateFirmware(cfg vmModel, resp *resource.ValidateConfigResponse) {
	if cfg.SecureBoot.IsNull() || cfg.SecureBoot.IsUnknown() || !cfg.SecureBoot.ValueBool() || cfg.Firmware.IsUnknown() {
		return
	}
	if err := api.CheckFirmware(knownString(cfg.Firmware), true, nil); err != nil {
		resp.Diagnostics.AddAttributeError(path.Root("secure_boot"), "Secure Boot Needs UEFI",
			err.Error()+": set firmware = \"efi\" or remove secure_boot.")
	}
}
