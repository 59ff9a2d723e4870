package kvm

import (
	"github.com/hashicorp/terraform-plugin-framework/attr"
	"github.com/hashicorp/terraform-plugin-framework/datasource/schema"
	"github.com/hashicorp/terraform-plugin-framework/types"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

var hostHugepagesAttrTypes = map[string]attr.Type{"size_kib": types.Int64Type, "total": types.Int64Type, "free": types.Int64Type}

// hostHugepagesAttribute is kvm_host.hugepages (and each of kvm_hosts.hosts).
func hostHugepagesAttribute() schema.SingleNestedAttribute {
	return schema.SingleNestedAttribute{
		Computed: true,
		MarkdownDescription: "The host's huge pages of its default size, which VMs with `hugepages = true` use: `size_kib`, " +
			"`total` (reserved by the operator, `vm.nr_hugepages`) and `free` (not held by running guests). The host refuses " +
			"a hugepage VM that `free` cannot hold. Null when the host is down.",
		Attributes: map[string]schema.Attribute{
			"size_kib": schema.Int64Attribute{Computed: true, MarkdownDescription: "Huge page size in KiB (2048 on most x86 hosts)."},
			"total":    schema.Int64Attribute{Computed: true, MarkdownDescription: "Huge pages of that size on the host."},
			"free":     schema.Int64Attribute{Computed: true, MarkdownDescription: "Of those, the pages no running guest holds."},
		},
	}
}

func hostHugepagesValue(h *api.HostHugepages) types.Object {
	if h == nil {
		return types.ObjectNull(hostHugepagesAttrTypes)
	}
	return types.ObjectValueMust(hostHugepagesAttrTypes, map[string]attr.Value{
		"size_kib": types.Int64Value(h.SizeKiB), "total": types.Int64Value(h.Total), "free": types.Int64Value(h.Free),
	})
}
