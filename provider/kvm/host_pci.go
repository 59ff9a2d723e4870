package kvm

import (
	"context"

	"github.com/hashicorp/terraform-plugin-framework/attr"
	"github.com/hashicorp/terraform-plugin-framework/datasource/schema"
	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/types"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// hostPCIModel is one named PCI device of a host.
type hostPCIModel struct {
	Name       types.String `tfsdk:"name"`
	Address    types.String `tfsdk:"address"`
	Vendor     types.String `tfsdk:"vendor"`
	VendorID   types.String `tfsdk:"vendor_id"`
	Product    types.String `tfsdk:"product"`
	ProductID  types.String `tfsdk:"product_id"`
	Driver     types.String `tfsdk:"driver"`
	IOMMUGroup types.Int64  `tfsdk:"iommu_group"`
	UsedBy     types.String `tfsdk:"used_by"`
	Present    types.Bool   `tfsdk:"present"`
}

var hostPCIAttrTypes = map[string]attr.Type{
	"name": types.StringType, "address": types.StringType, "vendor": types.StringType, "vendor_id": types.StringType,
	"product": types.StringType, "product_id": types.StringType, "driver": types.StringType,
	"iommu_group": types.Int64Type, "used_by": types.StringType, "present": types.BoolType,
}

func hostPCIDevicesFromAPI(ctx context.Context, devs []api.HostPCIDevice) (types.List, diag.Diagnostics) {
	out := make([]hostPCIModel, 0, len(devs))
	for _, d := range devs {
		out = append(out, hostPCIModel{
			Name: types.StringValue(d.Name), Address: types.StringValue(d.Address),
			Vendor: types.StringValue(d.Vendor), VendorID: types.StringValue(d.VendorID),
			Product: types.StringValue(d.Product), ProductID: types.StringValue(d.ProductID),
			Driver: types.StringValue(d.Driver), IOMMUGroup: types.Int64Value(d.IOMMUGroup),
			UsedBy: types.StringValue(d.UsedBy), Present: types.BoolValue(d.Present),
		})
	}
	return types.ListValueFrom(ctx, types.ObjectType{AttrTypes: hostPCIAttrTypes}, out)
}

func hostPCIDevicesAttribute() schema.ListNestedAttribute {
	str := func(desc string) schema.StringAttribute {
		return schema.StringAttribute{Computed: true, MarkdownDescription: desc}
	}
	return schema.ListNestedAttribute{
		Computed: true,
		MarkdownDescription: "The PCI devices the host names for passthrough (`kvm-hostd --pci-device NAME=ADDRESS`), as its " +
			"libvirt's node devices describe them; a `kvm_vm` asks for them by name in `pci_devices`. The host carries the " +
			"label `pci.NAME = \"true\"` for each one that is `present` (unless its `--labels` set that key), which " +
			"`kvm_cluster_placement`'s `host_labels` can require. Empty when it names none or is down.",
		NestedObject: schema.NestedAttributeObject{Attributes: map[string]schema.Attribute{
			"name":        str("The operator's name for the device, e.g. `gpu0`."),
			"address":     str("Its PCI address, domain:bus:slot.function, e.g. `0000:01:00.0`."),
			"vendor":      str("Vendor name, e.g. `NVIDIA Corporation`; empty when libvirt knows none."),
			"vendor_id":   str("Vendor ID, e.g. `0x10de`."),
			"product":     str("Product name; empty when libvirt knows none."),
			"product_id":  str("Product ID, e.g. `0x1eb8`."),
			"driver":      str("Host driver bound to it now (`vfio-pci` while a running VM has it); empty when none."),
			"iommu_group": schema.Int64Attribute{Computed: true, MarkdownDescription: "Its IOMMU group; `-1` when it has none (no IOMMU enabled: it cannot be passed through)."},
			"used_by":     str("The VM of the host defined with it (running or not); empty when free."),
			"present":     schema.BoolAttribute{Computed: true, MarkdownDescription: "Whether the host's libvirt knows a PCI device at `address`; `false` when the operator named an address the host does not have."},
		}},
	}
}
