package kvm

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/hashicorp/terraform-plugin-framework/attr"
	dsschema "github.com/hashicorp/terraform-plugin-framework/datasource/schema"
	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/objectplanmodifier"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/planmodifier"
	"github.com/hashicorp/terraform-plugin-framework/schema/validator"
	"github.com/hashicorp/terraform-plugin-framework/types"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// Encrypted disks: kvm_disk.encryption names a master key that the hosts
// hold (kvm-hostd --key-dir); the key itself never passes through
// Terraform. Hosts report the names of their keys (kvm_host.keys), which
// is what the plan checks.

var diskEncryptionAttrTypes = map[string]attr.Type{"key": types.StringType}

func diskEncryptionAttribute() schema.SingleNestedAttribute {
	return schema.SingleNestedAttribute{
		MarkdownDescription: "Encrypts the disk with LUKS, QEMU's native qcow2 encryption (AES-XTS, accelerated by AES-NI " +
			"where the CPU has it). The host derives a key for this disk from the named master key, which it holds itself " +
			"(kvm-hostd `--key-dir`, file `<key>.key`): no key ever passes through Terraform, the state, the API or the " +
			"domain XML. Unset (the default): not encrypted. The disk's host, and every host its VM may move to, must hold " +
			"the key (see `kvm_host.keys`); the plan fails otherwise, naming host and key. It may be on a local or a shared " +
			"directory pool (`pool`; a VM moving to another host opens a shared one in place, with the secret the new host " +
			"registers before the move), not on an rbd pool. An encrypted disk is an empty " +
			"qcow2: it cannot have `base_disk_id` or `source_url`, nor be the base of a linked clone, and a VM with an " +
			"encrypted disk cannot be snapshotted. Changing it replaces the disk (its data is lost).",
		Optional: true,
		Attributes: map[string]schema.Attribute{
			"key": schema.StringAttribute{
				MarkdownDescription: "Name of the master key on the host: kvm-hostd reads it from `<key-dir>/<key>.key`.",
				Required:            true,
				Validators:          []validator.String{validName("key")},
			},
		},
		PlanModifiers: []planmodifier.Object{objectplanmodifier.RequiresReplace()},
	}
}

// encryption converts the attribute (nil: not encrypted).
func (m *diskModel) encryption() *api.VolumeEncryption {
	if m.Encryption.IsNull() || m.Encryption.IsUnknown() {
		return nil
	}
	k, ok := m.Encryption.Attributes()["key"].(types.String)
	if !ok || k.IsNull() || k.IsUnknown() {
		return nil
	}
	return &api.VolumeEncryption{Key: k.ValueString()}
}

// encryptionKnown reports whether the key name is known (not computed
// from something unknown at plan time).
func (m *diskModel) encryptionKnown() bool {
	if m.Encryption.IsUnknown() {
		return false
	}
	if m.Encryption.IsNull() {
		return true
	}
	k, ok := m.Encryption.Attributes()["key"].(types.String)
	return ok && !k.IsUnknown()
}

func diskEncryptionValue(e *api.VolumeEncryption) types.Object {
	if e == nil {
		return types.ObjectNull(diskEncryptionAttrTypes)
	}
	return types.ObjectValueMust(diskEncryptionAttrTypes, map[string]attr.Value{"key": types.StringValue(e.Key)})
}

// validateDiskEncryption refuses, from the configuration alone, what the
// host would refuse: an encrypted disk is an empty qcow2.
func validateDiskEncryption(cfg *diskModel, diags *diag.Diagnostics) {
	if cfg.Encryption.IsNull() || cfg.Encryption.IsUnknown() {
		return
	}
	at := path.Root("encryption")
	if !cfg.BaseDiskID.IsNull() {
		diags.AddAttributeError(at, "Encrypted Linked Clone Not Supported",
			"an encrypted disk cannot be a linked clone (base_disk_id): each layer of the chain would need its own key in the "+
				"VM's definition on every host it moves to. Create the encrypted disk empty (size_mib).")
	}
	if !cfg.SourceURL.IsNull() {
		diags.AddAttributeError(at, "Encrypted Image Download Not Supported",
			"an encrypted disk cannot be downloaded from source_url (the image would be stored as it is, unencrypted). "+
				"Create the encrypted disk empty (size_mib).")
	}
	if cfg.Format.ValueString() == api.FormatRaw {
		diags.AddAttributeError(at, "Encrypted Disk Format",
			"an encrypted disk uses QEMU's LUKS encryption in qcow2; format must be \"qcow2\", not \"raw\".")
	}
}

// checkEncryptionKey fails the plan when the disk's host does not hold the
// disk's key, or when the disk would be a linked clone of an encrypted
// disk, reading the host's inventory and the base volume. An unreachable
// host is not an error here: the apply reports it.
func (r *DiskResource) checkEncryptionKey(ctx context.Context, plan *diskModel, diags *diag.Diagnostics) {
	if r.fleet == nil || plan.Host.IsNull() || plan.Host.IsUnknown() {
		return
	}
	h, err := r.fleet.Host(plan.Host.ValueString())
	if err != nil {
		return
	}
	if e := plan.encryption(); e != nil && plan.encryptionKnown() {
		inv := h.PlanInventory(ctx)
		if inv.Healthy && !slices.Contains(inv.Keys, e.Key) {
			held := "none"
			if len(inv.Keys) > 0 {
				held = strings.Join(inv.Keys, ", ")
			}
			diags.AddAttributeError(path.Root("encryption").AtName("key"), "Encryption Key Not on Host",
				fmt.Sprintf("host %s does not hold encryption key %q (its keys: %s), so it cannot create or open this disk. "+
					"Put the same %s.key in the host's kvm-hostd --key-dir (and restart it), or place the disk on a host that has the key.",
					h.Name, e.Key, held, e.Key))
		}
	}
	if !plan.BaseDiskID.IsNull() && !plan.BaseDiskID.IsUnknown() {
		_, pool, base, err := ParseDiskID(plan.BaseDiskID.ValueString())
		if err != nil {
			return
		}
		if v, err := h.ReadVolume(ctx, pool, base); err == nil && v.Encryption != nil {
			diags.AddAttributeError(path.Root("base_disk_id"), "Linked Clone of an Encrypted Disk",
				fmt.Sprintf("base disk %s is encrypted (key %q); linked clones of encrypted disks are not supported.",
					plan.BaseDiskID.ValueString(), v.Encryption.Key))
		}
	}
}

// hostKeysAttribute describes kvm_host.keys / kvm_hosts.hosts[*].keys.
func hostKeysAttribute() dsschema.ListAttribute {
	return dsschema.ListAttribute{Computed: true, ElementType: types.StringType,
		MarkdownDescription: "Names of the disk-encryption master keys the host holds (kvm-hostd `--key-dir`, files `<name>.key`), " +
			"sorted; the keys themselves never leave the host. A `kvm_disk` with `encryption = { key = ... }` can only be on, " +
			"and its VM only move to, a host listing that key."}
}

func hostKeysValue(keys []string) types.List {
	vals := make([]attr.Value, 0, len(keys))
	for _, k := range keys {
		vals = append(vals, types.StringValue(k))
	}
	return types.ListValueMust(types.StringType, vals)
}
