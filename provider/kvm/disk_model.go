package kvm

import (
	"context"

	"github.com/hashicorp/terraform-plugin-framework-timeouts/resource/timeouts"
	"github.com/hashicorp/terraform-plugin-framework/attr"
	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/types"
	"github.com/hashicorp/terraform-plugin-framework/types/basetypes"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// diskModel is the Terraform shape of kvm_disk.
type diskModel struct {
	ID             types.String   `tfsdk:"id"`
	Name           types.String   `tfsdk:"name"`
	Host           types.String   `tfsdk:"host"`
	Pool           types.String   `tfsdk:"pool"`
	SizeMiB        types.Int64    `tfsdk:"size_mib"`
	Format         types.String   `tfsdk:"format"`
	BaseDiskID     types.String   `tfsdk:"base_disk_id"`
	SourceURL      types.String   `tfsdk:"source_url"`
	SourceChecksum types.String   `tfsdk:"source_checksum"`
	IOTune         types.Object   `tfsdk:"iotune"`
	Encryption     types.Object   `tfsdk:"encryption"`
	Path           types.String   `tfsdk:"path"`
	AllocatedMiB   types.Int64    `tfsdk:"allocated_mib"`
	Timeouts       timeouts.Value `tfsdk:"timeouts"`
}

type iotuneModel struct {
	ReadBytesSec  types.Int64 `tfsdk:"read_bytes_sec"`
	WriteBytesSec types.Int64 `tfsdk:"write_bytes_sec"`
	ReadIOPSSec   types.Int64 `tfsdk:"read_iops_sec"`
	WriteIOPSSec  types.Int64 `tfsdk:"write_iops_sec"`
}

var iotuneAttrTypes = map[string]attr.Type{
	"read_bytes_sec":  types.Int64Type,
	"write_bytes_sec": types.Int64Type,
	"read_iops_sec":   types.Int64Type,
	"write_iops_sec":  types.Int64Type,
}

// location returns the disk's host, pool and volume name.
func (m *diskModel) location() (host, pool, name string) {
	return m.Host.ValueString(), m.Pool.ValueString(), m.Name.ValueString()
}

// iotune converts the iotune attribute; a null one is nil.
func (m *diskModel) iotune(ctx context.Context) (*api.IOTune, diag.Diagnostics) {
	if m.IOTune.IsNull() || m.IOTune.IsUnknown() {
		return nil, nil
	}
	var t iotuneModel
	diags := m.IOTune.As(ctx, &t, basetypes.ObjectAsOptions{})
	if diags.HasError() {
		return nil, diags
	}
	return &api.IOTune{
		ReadBytesSec:  t.ReadBytesSec.ValueInt64(),
		WriteBytesSec: t.WriteBytesSec.ValueInt64(),
		ReadIOPSSec:   t.ReadIOPSSec.ValueInt64(),
		WriteIOPSSec:  t.WriteIOPSSec.ValueInt64(),
	}, nil
}

// toAPI builds the create request.
func (m *diskModel) toAPI(ctx context.Context) (api.VolumeSpec, diag.Diagnostics) {
	spec := api.VolumeSpec{
		SizeMiB:        m.SizeMiB.ValueInt64(), // 0 when unknown: read back
		Format:         m.Format.ValueString(),
		SourceURL:      m.SourceURL.ValueString(),
		SourceChecksum: m.SourceChecksum.ValueString(),
	}
	if !m.BaseDiskID.IsNull() && !m.BaseDiskID.IsUnknown() {
		_, _, base, err := ParseDiskID(m.BaseDiskID.ValueString())
		if err != nil {
			var d diag.Diagnostics
			d.AddError("Invalid base_disk_id", err.Error())
			return spec, d
		}
		spec.BaseVolume = base
	}
	spec.Encryption = m.encryption()
	t, diags := m.iotune(ctx)
	if !t.IsZero() {
		spec.IOTune = t
	}
	return spec, diags
}

// fromAPI fills the model from a volume read back from host. Attributes
// the host does not echo keep what the configuration said when they mean
// the same thing (an all-zero iotune object is "no limits").
func (m *diskModel) fromAPI(host string, v *api.Volume) {
	m.Host = types.StringValue(host)
	m.Pool = types.StringValue(v.Pool)
	m.Name = types.StringValue(v.Name)
	m.ID = types.StringValue(DiskID(host, v.Pool, v.Name))
	m.SizeMiB = types.Int64Value(v.SizeMiB)
	m.Format = types.StringValue(v.Format)
	m.Path = types.StringValue(v.Path)
	m.AllocatedMiB = types.Int64Value(v.AllocatedMiB)
	m.BaseDiskID = types.StringNull()
	if v.BaseVolume != "" {
		m.BaseDiskID = types.StringValue(DiskID(host, v.Pool, v.BaseVolume))
	}
	// The host returns source_url redacted (no user info or query: they
	// may be credentials, e.g. a signed URL); the configured one stands
	// while it redacts to what the host has.
	prior := m.SourceURL
	m.SourceURL = apiString(v.SourceURL)
	if !prior.IsNull() && !prior.IsUnknown() && v.SourceURL != "" && api.RedactURL(prior.ValueString()) == v.SourceURL {
		m.SourceURL = prior
	}
	m.SourceChecksum = apiString(v.SourceChecksum)
	m.Encryption = diskEncryptionValue(v.Encryption)

	t := v.IOTune
	if t.IsZero() {
		if m.IOTune.IsNull() || m.IOTune.IsUnknown() {
			m.IOTune = types.ObjectNull(iotuneAttrTypes)
			return
		}
		t = &api.IOTune{}
	}
	m.IOTune = types.ObjectValueMust(iotuneAttrTypes, map[string]attr.Value{
		"read_bytes_sec":  types.Int64Value(t.ReadBytesSec),
		"write_bytes_sec": types.Int64Value(t.WriteBytesSec),
		"read_iops_sec":   types.Int64Value(t.ReadIOPSSec),
		"write_iops_sec":  types.Int64Value(t.WriteIOPSSec),
	})
}

// apiString maps the API's "" (absent) to null.
func apiString(s string) types.String {
	if s == "" {
		return types.StringNull()
	}
	return types.StringValue(s)
}
