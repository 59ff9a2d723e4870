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

func TestAccHostsDataSource_basic(t *testing.T) {
	c := startHosts(t, harness.Options{
		Hosts:     []string{"host-a", "host-b"},
		Labels:    map[string]map[string]string{"host-a": {"zone": "a"}, "host-b": {"zone": "b", "gpu": "yes"}},
		TunnelIPs: map[string]string{"host-a": "10.0.0.11"},
		ExtraArgs: []string{"--cpu-overcommit", "3"},
	})
	cfg := c.ProviderHCL() + `data "kvm_hosts" "all" {}`
	first := tfjsonpath.New("hosts").AtSliceIndex(0)
	second := tfjsonpath.New("hosts").AtSliceIndex(1)
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		Steps: []resource.TestStep{{
			Config: cfg,
			ConfigStateChecks: []statecheck.StateCheck{
				statecheck.ExpectKnownValue("data.kvm_hosts.all", first.AtMapKey("name"), knownvalue.StringExact("host-a")),
				statecheck.ExpectKnownValue("data.kvm_hosts.all", first.AtMapKey("healthy"), knownvalue.Bool(true)),
				statecheck.ExpectKnownValue("data.kvm_hosts.all", first.AtMapKey("labels"), knownvalue.MapExact(map[string]knownvalue.Check{"zone": knownvalue.StringExact("a")})),
				statecheck.ExpectKnownValue("data.kvm_hosts.all", first.AtMapKey("tunnel_ip"), knownvalue.StringExact("10.0.0.11")),
				statecheck.ExpectKnownValue("data.kvm_hosts.all", first.AtMapKey("cpu_overcommit"), knownvalue.Float64Exact(3)),
				statecheck.ExpectKnownValue("data.kvm_hosts.all", first.AtMapKey("memory_overcommit"), knownvalue.Float64Exact(1)),
				statecheck.ExpectKnownValue("data.kvm_hosts.all", first.AtMapKey("cpus"), positiveInt()),
				statecheck.ExpectKnownValue("data.kvm_hosts.all", first.AtMapKey("memory_mib"), positiveInt()),
				statecheck.ExpectKnownValue("data.kvm_hosts.all", first.AtMapKey("version"), knownvalue.StringRegexp(regexp.MustCompile(`^\S+$`))),
				// The embedded default runs on libvirt's test driver: no
				// guests run, so there is nothing to probe.
				statecheck.ExpectKnownValue("data.kvm_hosts.all", first.AtMapKey("domain_type"), knownvalue.StringExact("test")),
				statecheck.ExpectKnownValue("data.kvm_hosts.all", first.AtMapKey("cpu_mode"), knownvalue.StringExact("")),
				statecheck.ExpectKnownValue("data.kvm_hosts.all", second.AtMapKey("domain_type"), knownvalue.StringExact("test")),
				statecheck.ExpectKnownValue("data.kvm_hosts.all", second.AtMapKey("name"), knownvalue.StringExact("host-b")),
				statecheck.ExpectKnownValue("data.kvm_hosts.all", second.AtMapKey("labels"), knownvalue.MapExact(map[string]knownvalue.Check{
					"zone": knownvalue.StringExact("b"), "gpu": knownvalue.StringExact("yes"),
				})),
			},
		}},
	})
}

// A host that is down must show healthy = false and not fail the plan.
func TestAccHostsDataSource_hostDown(t *testing.T) {
	c := startHosts(t, harness.Options{Hosts: []string{"host-a", "host-b"}})
	cfg := c.ProviderHCL() + `
data "kvm_hosts" "all" {}
data "kvm_host" "b" { name = "host-b" }
output "health" { value = { for h in data.kvm_hosts.all.hosts : h.name => h.healthy } }
`
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		Steps: []resource.TestStep{{
			PreConfig: func() {
				if err := c.Host("host-b").Stop(); err != nil {
					t.Fatal(err)
				}
			},
			Config: cfg,
			ConfigStateChecks: []statecheck.StateCheck{
				statecheck.ExpectKnownOutputValue("health", knownvalue.MapExact(map[string]knownvalue.Check{
					"host-a": knownvalue.Bool(true), "host-b": knownvalue.Bool(false),
				})),
				statecheck.ExpectKnownValue("data.kvm_host.b", tfjsonpath.New("healthy"), knownvalue.Bool(false)),
				statecheck.ExpectKnownValue("data.kvm_host.b", tfjsonpath.New("domain_type"), knownvalue.StringExact("")),
			},
		}},
	})
}

func TestAccHostDataSource_basic(t *testing.T) {
	c := startHosts(t, harness.Options{Hosts: []string{"host-a"}, Labels: map[string]map[string]string{"host-a": {"rack": "r1"}}})
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		Steps: []resource.TestStep{
			{
				Config: c.ProviderHCL() + `data "kvm_host" "a" { name = "host-a" }`,
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue("data.kvm_host.a", tfjsonpath.New("healthy"), knownvalue.Bool(true)),
					statecheck.ExpectKnownValue("data.kvm_host.a", tfjsonpath.New("vm_count"), knownvalue.Int64Exact(0)),
					statecheck.ExpectKnownValue("data.kvm_host.a", tfjsonpath.New("domain_type"), knownvalue.StringExact("test")),
					statecheck.ExpectKnownValue("data.kvm_host.a", tfjsonpath.New("cpu_mode"), knownvalue.StringExact("")),
					statecheck.ExpectKnownValue("data.kvm_host.a", tfjsonpath.New("labels"), knownvalue.MapExact(map[string]knownvalue.Check{"rack": knownvalue.StringExact("r1")})),
				},
			},
			{
				Config:      c.ProviderHCL() + `data "kvm_host" "x" { name = "nope" }`,
				ExpectError: regexp.MustCompile(`host "nope" is not configured`),
			},
		},
	})
}

func TestAccProvider_badEndpoint(t *testing.T) {
	testAccPreCheck(t)
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		Steps: []resource.TestStep{{
			Config: `
provider "kvm" {
  token = "x"
  hosts = { host-a = { endpoint = "10.0.0.11:7443" } }
}
data "kvm_hosts" "all" {}`,
			ExpectError: regexp.MustCompile(`(?s)Invalid Host Endpoint.*must start with http`),
		}},
	})
}

func positiveInt() knownvalue.Check {
	return int64Check(func(v int64) bool { return v > 0 }, "a positive number")
}
