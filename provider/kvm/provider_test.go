package kvm

import (
	"os"
	"testing"

	"github.com/hashicorp/terraform-plugin-framework/providerserver"
	"github.com/hashicorp/terraform-plugin-go/tfprotov6"

	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
	"github.com/kvmfleet/terraform-provider-kvm/internal/realstack"
)

// testAccProtoV6ProviderFactories runs the provider in-process, served to
// the real terraform binary over the plugin protocol.
var testAccProtoV6ProviderFactories = map[string]func() (tfprotov6.ProviderServer, error){
	"kvm": providerserver.NewProtocol6WithError(New("test")()),
}

// testAccPreCheck skips unless acceptance tests were asked for (TF_ACC=1,
// as make testacc and make test set).
func testAccPreCheck(t *testing.T) {
	t.Helper()
	if os.Getenv("TF_ACC") == "" {
		if realstack.CI() {
			t.Fatal("acceptance test: CI=true but TF_ACC is not set (make test sets it)")
		}
		t.Skip("acceptance test: set TF_ACC=1 (make testacc)")
	}
}

// startHosts starts kvm-hostd processes on the embedded default.
func startHosts(t *testing.T, opts harness.Options) *harness.Cluster {
	t.Helper()
	testAccPreCheck(t)
	return harness.Start(t, opts)
}
