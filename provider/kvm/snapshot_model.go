package kvm

import (
	"time"

	"github.com/hashicorp/terraform-plugin-framework-timeouts/resource/timeouts"
	"github.com/hashicorp/terraform-plugin-framework/types"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// snapshotModel is the Terraform shape of kvm_snapshot.
type snapshotModel struct {
	ID            types.String   `tfsdk:"id"`
	VMID          types.String   `tfsdk:"vm_id"`
	Name          types.String   `tfsdk:"name"`
	Description   types.String   `tfsdk:"description"`
	IncludeMemory types.Bool     `tfsdk:"include_memory"`
	RevertTrigger types.String   `tfsdk:"revert_trigger"`
	CreatedAt     types.String   `tfsdk:"created_at"`
	Parent        types.String   `tfsdk:"parent"`
	Timeouts      timeouts.Value `tfsdk:"timeouts"`
}

func (m *snapshotModel) toAPI() api.SnapshotSpec {
	return api.SnapshotSpec{Description: m.Description.ValueString(), IncludeMemory: m.IncludeMemory.ValueBool()}
}

// fromAPI fills the model from a snapshot of VM vm on host. vm_id keeps
// the form the configuration used ("<host>/<vm>" or the VM's UUID); after
// an import it is "<host>/<vm>".
func (m *snapshotModel) fromAPI(host, vm string, s *api.Snapshot) {
	m.ID = types.StringValue(SnapshotID(host, vm, s.Name))
	if m.VMID.IsNull() || m.VMID.IsUnknown() {
		m.VMID = types.StringValue(VMID(host, vm))
	}
	m.Name = types.StringValue(s.Name)
	// The API does not distinguish an empty description from none.
	if s.Description != "" || m.Description.IsNull() || m.Description.IsUnknown() || m.Description.ValueString() != "" {
		m.Description = apiString(s.Description)
	}
	m.IncludeMemory = types.BoolValue(s.IncludeMemory)
	m.CreatedAt = types.StringNull()
	if !s.CreatedAt.IsZero() {
		m.CreatedAt = types.StringValue(s.CreatedAt.UTC().Format(time.RFC3339))
	}
	m.Parent = apiString(s.Parent)
}
