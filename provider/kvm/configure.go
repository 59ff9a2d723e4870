package kvm

import (
	"fmt"

	"github.com/hashicorp/terraform-plugin-framework/diag"
)

// fleetFrom extracts the provider's Fleet from ProviderData. It is nil
// during validation, before the provider is configured.
func fleetFrom(data any, diags *diag.Diagnostics) *Fleet {
	if data == nil {
		return nil
	}
	f, ok := data.(*Fleet)
	if !ok {
		diags.AddError("Unexpected Provider Data", fmt.Sprintf("expected *kvm.Fleet, got %T; please report this issue to the provider developers", data))
		return nil
	}
	return f
}
