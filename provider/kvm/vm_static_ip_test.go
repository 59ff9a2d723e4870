package kvm

import (
	"regexp"
	"testing"

	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/knownvalue"
	"github.com/hashicorp/terraform-plugin-testing/statecheck"
	"github.com/hashicorp/terraform-plugin-testing/tfjsonpath"

	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
)

func TestAccVM_staticIPv4OnSubnet(t *testing.T) {
	c := startHosts(t, harness.Options{Hosts: []string{"host-a", "host-b"}, ExtraArgs: vmTestHostArgs})
	base := c.ProviderHCL() + `
resource "kvm_network" "lan" {
  name   = "lan"
  subnet = { cidr = "10.20.0.0/24", gateway = "10.20.0.1", dns_servers = ["10.20.0.1"] }
}
resource "kvm_vm" "a" {
  name       = "a"
  host       = "host-a"
  vcpu       = 1
  memory_mib = 64
  network_interfaces = [{ network = kvm_network.lan.name, ipv4_address = "10.20.0.10" }]
  cloud_init = { user_data = "#cloud-config\n" }
}
`
	b := func(ip string) string {
		return base + `
resource "kvm_vm" "b" {
  name       = "b"
  host       = "host-b"
  vcpu       = 1
  memory_mib = 64
  network_interfaces = [{ network = kvm_network.lan.name, ipv4_address = "` + ip + `" }]
}
`
	}
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		Steps: []resource.TestStep{
			{
				Config: base,
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue("kvm_vm.a", tfjsonpath.New("network_interfaces").AtSliceIndex(0).AtMapKey("ipv4_address"), knownvalue.StringExact("10.20.0.10")),
				},
			},
			{Config: b("10.20.0.10"), PlanOnly: true, ExpectError: regexp.MustCompile(`(?s)IPv4 Address in Use.*already used by VM a on\s+host host-a on network lan`)},
			{Config: b("10.30.0.5"), PlanOnly: true, ExpectError: regexp.MustCompile(`outside the network's subnet`)},
			{Config: b("10.20.0.1"), PlanOnly: true, ExpectError: regexp.MustCompile(`gateway`)},
			{Config: b("10.20.0.11")},
			{ResourceName: "kvm_vm.b", ImportState: true, ImportStateId: "host-b/b", ImportStateVerify: true},
		},
	})
}
