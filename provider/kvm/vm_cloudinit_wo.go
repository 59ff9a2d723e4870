package kvm

import (
	"context"

	"github.com/hashicorp/terraform-plugin-framework-validators/int64validator"
	"github.com/hashicorp/terraform-plugin-framework-validators/stringvalidator"
	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema"
	"github.com/hashicorp/terraform-plugin-framework/schema/validator"
	"github.com/hashicorp/terraform-plugin-framework/tfsdk"
	"github.com/hashicorp/terraform-plugin-framework/types"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// cloud_init.user_data_wo is user data that never reaches plan or state
// (Terraform >= 1.11 write-only attributes): only the configuration carries
// it, so it is read from there at apply, like graphics.password_wo. The
// host already keeps user data out of its API (it returns a hash), so the
// only copy left was Terraform's state; user_data_wo_version is what state
// keeps instead, and changing it is what makes Terraform apply a new value.

func cloudInitUserDataWOAttribute() schema.Attribute {
	return schema.StringAttribute{
		MarkdownDescription: "`user-data` like `user_data`, but write-only (Terraform ≥ 1.11): never stored in " +
			"state or plan, for user data that carries secrets. Sent to the host on create and on every update (the host " +
			"rewrites the seed ISO from it, as it does for `user_data`); change `user_data_wo_version` to make Terraform apply " +
			"a new value, which, like a change of `user_data`, takes effect at the guest's next boot, without a restart. " +
			"Conflicts with `user_data`; needs `user_data_wo_version`.",
		Optional: true, WriteOnly: true, Sensitive: true,
		Validators: []validator.String{
			stringvalidator.ConflictsWith(path.MatchRelative().AtParent().AtName("user_data")),
			stringvalidator.AlsoRequires(path.MatchRelative().AtParent().AtName("user_data_wo_version")),
		},
	}
}

func cloudInitUserDataWOVersionAttribute() schema.Attribute {
	return schema.Int64Attribute{
		MarkdownDescription: "Any number, stored in state in place of `user_data_wo`: changing it applies the current " +
			"`user_data_wo` (at the guest's next boot, no restart). Needs `user_data_wo`.",
		Optional:   true,
		Validators: []validator.Int64{int64validator.AlsoRequires(path.MatchRelative().AtParent().AtName("user_data_wo"))},
	}
}

// cloudInitUserDataFromConfig puts the write-only user data, which only
// the configuration carries, into spec.
func cloudInitUserDataFromConfig(ctx context.Context, config tfsdk.Config, spec *api.VMSpec) diag.Diagnostics {
	if spec.CloudInit == nil {
		return nil
	}
	var ud types.String
	diags := config.GetAttribute(ctx, path.Root("cloud_init").AtName("user_data_wo"), &ud)
	if v := knownString(ud); v != "" {
		spec.CloudInit.UserData = v
	}
	return diags
}

// userDataReadBack reads user_data back for a VM whose prior state is p:
// with write-only user data the host's hash is of a value state never
// held, so user_data stays null instead of reading as drift.
func userDataReadBack(hash string, p vmCloudInitModel) types.String {
	if hash != "" && p.UserData.IsNull() && !p.UserDataWOVersion.IsNull() && !p.UserDataWOVersion.IsUnknown() {
		return types.StringNull()
	}
	return userDataFromHash(hash, p.UserData)
}

// int64OrNullValue keeps a known prior value; unknown becomes null.
func int64OrNullValue(v types.Int64) types.Int64 {
	if v.IsUnknown() {
		return types.Int64Null()
	}
	return v
}
