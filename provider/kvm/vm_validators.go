package kvm

import (
	"context"
	"fmt"
	"regexp"

	"github.com/hashicorp/terraform-plugin-framework/schema/validator"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// Value sets kvm-hostd accepts for a VM (backend/service/vms.go); checking
// them here makes a typo fail the plan instead of the apply.
var (
	vmBuses        = []string{"virtio", "sata", "scsi", "ide"}
	vmNICModels    = []string{"virtio", "e1000", "e1000e", "rtl8139"}
	vmCPUModes     = []string{"host-passthrough", "host-model", "maximum", "custom"}
	vmMigrations   = []string{"live", "offline", "replace"}
	vmMACPattern   = regexp.MustCompile(`^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$`)
	vmCPUSetRegexp = regexp.MustCompile(`^\^?[0-9]+(-[0-9]+)?(,\^?[0-9]+(-[0-9]+)?)*$`)
)

// vmObjectName validates a name with api.ValidateName, the same rule the
// host enforces, so hostile names never leave the plan.
type vmObjectName struct{ kind string }

var _ validator.String = vmObjectName{}

func (v vmObjectName) Description(_ context.Context) string {
	return fmt.Sprintf("%s name: %s", v.kind, api.NamePatternDescription)
}

func (v vmObjectName) MarkdownDescription(ctx context.Context) string { return v.Description(ctx) }

func (v vmObjectName) ValidateString(_ context.Context, req validator.StringRequest, resp *validator.StringResponse) {
	if req.ConfigValue.IsNull() || req.ConfigValue.IsUnknown() {
		return
	}
	if err := api.ValidateName(v.kind, req.ConfigValue.ValueString()); err != nil {
		resp.Diagnostics.AddAttributeError(req.Path, "Invalid "+v.kind+" Name", err.Error())
	}
}

// vmDiskIDFormat validates a kvm_disk ID "<host>/<pool>/<name>".
type vmDiskIDFormat struct{}

var _ validator.String = vmDiskIDFormat{}

func (vmDiskIDFormat) Description(_ context.Context) string {
	return "a kvm_disk ID: <host>/<pool>/<name>"
}

func (v vmDiskIDFormat) MarkdownDescription(ctx context.Context) string { return v.Description(ctx) }

func (vmDiskIDFormat) ValidateString(_ context.Context, req validator.StringRequest, resp *validator.StringResponse) {
	if req.ConfigValue.IsNull() || req.ConfigValue.IsUnknown() {
		return
	}
	_, pool, name, err := ParseDiskID(req.ConfigValue.ValueString())
	if err == nil {
		if err = api.ValidateName("pool", pool); err == nil {
			err = api.ValidateName("volume", name)
		}
	}
	if err != nil {
		resp.Diagnostics.AddAttributeError(req.Path, "Invalid Disk ID", err.Error()+" (use the id of a kvm_disk, e.g. kvm_disk.root.id)")
	}
}
