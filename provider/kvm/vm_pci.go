package kvm

import (
	"context"
	"fmt"
	"strings"

	"github.com/hashicorp/terraform-plugin-framework-validators/listvalidator"
	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema"
	"github.com/hashicorp/terraform-plugin-framework/schema/validator"
	"github.com/hashicorp/terraform-plugin-framework/types"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// vmPCIDevicesAttribute is kvm_vm.pci_devices: host PCI devices passed
// through, by the names the host gives them.
func vmPCIDevicesAttribute() schema.ListAttribute {
	return schema.ListAttribute{
		MarkdownDescription: "Host PCI devices passed through to the guest (VFIO), by the names the VM's host gives them with " +
			"`kvm-hostd --pci-device NAME=ADDRESS` (see `kvm_host.pci_devices`), e.g. `[\"gpu0\"]`. Names, not addresses, so " +
			"one configuration fits every host that names a device alike. libvirt detaches each device from its host driver " +
			"when the VM starts and gives it back when the VM stops; the host needs an IOMMU (`iommu_group` is not `-1`). " +
			"The host refuses a name it does not have, a device its libvirt does not know, and a device another VM of the " +
			"host has. Default none. Adding, removing or reordering devices is one restart. A VM with devices cannot " +
			"migrate (`live` or `offline`): remove them first, or use `migration = \"replace\"`. To place a VM on a host " +
			"with a device, ask `kvm_cluster_placement` for the host label `pci.NAME = \"true\"`, which every host gives " +
			"each named device its libvirt knows.",
		Optional:    true,
		ElementType: types.StringType,
		Validators: []validator.List{
			listvalidator.UniqueValues(),
			listvalidator.ValueStringsAre(validName("PCI device")),
		},
	}
}

// pciDevicesToAPI reads the known names of pci_devices.
func pciDevicesToAPI(ctx context.Context, l types.List, spec *api.VMSpec) diag.Diagnostics {
	if l.IsNull() || l.IsUnknown() {
		return nil
	}
	var names []string
	diags := l.ElementsAs(ctx, &names, false)
	if len(names) > 0 {
		spec.PCIDevices = names
	}
	return diags
}

// pciDevicesFromAPI is pci_devices as the host reads it back: null without
// devices unless the configuration said [].
func pciDevicesFromAPI(ctx context.Context, prior types.List, names []string) (types.List, diag.Diagnostics) {
	if len(names) == 0 && !isEmptyKnownList(prior) {
		return types.ListNull(types.StringType), nil
	}
	if names == nil {
		names = []string{}
	}
	return types.ListValueFrom(ctx, types.StringType, names)
}

// checkPCIMigration refuses, at plan time, to migrate a VM that has
// passthrough devices: a physical device cannot follow the guest to
// another machine. Devices the plan adds are not in the way: the VM moves
// first and gets them on its new host. migration = "replace" re-creates it.
func checkPCIMigration(ctx context.Context, plan vmModel, state *vmModel, diags *diag.Diagnostics) {
	if state == nil || plan.Host.IsUnknown() || plan.Host.Equal(state.Host) || plan.Migration.ValueString() == "replace" ||
		!plan.Name.Equal(state.Name) || state.PCIDevices.IsNull() || state.PCIDevices.IsUnknown() {
		return
	}
	var names []string
	diags.Append(state.PCIDevices.ElementsAs(ctx, &names, false)...)
	if len(names) == 0 {
		return
	}
	mode := plan.Migration.ValueString()
	if mode == "" {
		mode = vmDefaultMigration
	}
	diags.AddAttributeError(path.Root("host"), "VM With PCI Devices Cannot Migrate",
		fmt.Sprintf("VM %s has PCI passthrough devices (pci_devices %s), so it cannot move from host %s to host %s with migration = %q: "+
			"a physical device cannot follow the guest to another machine. Remove its pci_devices in an apply that keeps its "+
			"host (one restart) and move it in the next, or set migration = \"replace\" to re-create it on host %s.",
			plan.Name.ValueString(), strings.Join(names, ", "), state.Host.ValueString(), plan.Host.ValueString(), mode,
			plan.Host.ValueString()))
}
