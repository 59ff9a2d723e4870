package kvm

import (
	"os"
	"testing"

	"github.com/kvmfleet/terraform-provider-kvm/internal/realstack"
)

// modernTerraformEnv names the Terraform binary for features the oldest
// supported Terraform lacks: import by identity (>= 1.12), `terraform query`
// and actions (>= 1.14). scripts/test.sh sets it from
// `scripts/terraform-path.sh --modern`.
const modernTerraformEnv = "TF_ACC_TERRAFORM_MODERN_PATH"

// modernTerraform switches the calling test to the modern Terraform binary:
// terraform-plugin-testing reads TF_ACC_TERRAFORM_PATH at every
// resource.Test, so the switch lasts until the test ends. Tests that call it
// cannot be parallel (t.Setenv). Without the binary the test skips, except
// under CI, where a silently skipped feature would pass unseen.
func modernTerraform(t *testing.T) string {
	t.Helper()
	testAccPreCheck(t)
	path := os.Getenv(modernTerraformEnv)
	if path == "" {
		if realstack.CI() {
			t.Fatalf("%s is not set (make test sets it from scripts/terraform-path.sh --modern)", modernTerraformEnv)
		}
		t.Skipf("set %s to a Terraform >= 1.14 (scripts/terraform-path.sh --modern)", modernTerraformEnv)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("%s: %v", modernTerraformEnv, err)
	}
	t.Setenv("TF_ACC_TERRAFORM_PATH", path)
	return path
}
