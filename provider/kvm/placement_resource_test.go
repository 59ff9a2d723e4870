package kvm

import (
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/knownvalue"
	"github.com/hashicorp/terraform-plugin-testing/plancheck"
	"github.com/hashicorp/terraform-plugin-testing/statecheck"
	"github.com/hashicorp/terraform-plugin-testing/terraform"
	"github.com/hashicorp/terraform-plugin-testing/tfjsonpath"

	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
)

const testAccPlacementName = "kvm_cluster_placement.test"

// testAccPlacementHosts starts host-a, host-b and host-c in zones a, b and
// c. libvirt's test driver reports 16 CPUs and 3 GiB per host, with a sample
// domain already holding 2 vCPU and 8 GiB; a memory overcommit of 10 leaves
// 62 vCPU and 22528 MiB free on each.
func testAccPlacementHosts(t *testing.T) *harness.Cluster {
	return startHosts(t, harness.Options{
		Hosts: []string{"host-a", "host-b", "host-c"},
		Labels: map[string]map[string]string{
			"host-a": {"zone": "a"}, "host-b": {"zone": "b"}, "host-c": {"zone": "c"},
		},
		ExtraArgs: []string{"--memory-overcommit", "10"},
	})
}

// testAccPlacementConfig renders a kvm_cluster_placement with the given
// extra arguments and request entries (HCL map items).
func testAccPlacementConfig(c *harness.Cluster, args string, requests ...string) string {
	return c.ProviderHCL() + fmt.Sprintf(`
resource "kvm_cluster_placement" "test" {
  %s
  request = {
    %s
  }
}
`, args, strings.Join(requests, "\n    "))
}

// testAccPlacementRequest is a request entry of 1 vCPU / 512 MiB with extra attributes.
func testAccPlacementRequest(key, extra string) string {
	return fmt.Sprintf("%q = { vcpu = 1, memory_mib = 512 %s }", key, extra)
}

func assignmentsFromState(s *terraform.State) (map[string]string, error) {
	rs, ok := s.RootModule().Resources[testAccPlacementName]
	if !ok {
		return nil, fmt.Errorf("%s not in state", testAccPlacementName)
	}
	out := map[string]string{}
	for k, v := range rs.Primary.Attributes {
		if key, ok := strings.CutPrefix(k, "assignments."); ok && key != "%" {
			out[key] = v
		}
	}
	return out, nil
}

// testAccCheckPlacementDistinct checks that keys are on pairwise distinct hosts.
func testAccCheckPlacementDistinct(keys ...string) resource.TestCheckFunc {
	return func(s *terraform.State) error {
		a, err := assignmentsFromState(s)
		if err != nil {
			return err
		}
		seen := map[string]string{}
		for _, k := range keys {
			h := a[k]
			if h == "" {
				return fmt.Errorf("%s has no assignment (assignments %v)", k, a)
			}
			if other, dup := seen[h]; dup {
				return fmt.Errorf("%s and %s are both on %s", other, k, h)
			}
			seen[h] = k
		}
		return nil
	}
}

// testAccCheckPlacementSameHost checks that keys share one host.
func testAccCheckPlacementSameHost(keys ...string) resource.TestCheckFunc {
	return func(s *terraform.State) error {
		a, err := assignmentsFromState(s)
		if err != nil {
			return err
		}
		for _, k := range keys {
			if a[k] == "" || a[k] != a[keys[0]] {
				return fmt.Errorf("expected %v on one host, got %v", keys, a)
			}
		}
		return nil
	}
}

func TestAccPlacement_spread(t *testing.T) {
	c := testAccPlacementHosts(t)
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		Steps: []resource.TestStep{
			{
				Config: testAccPlacementConfig(c, "", testAccPlacementRequest("web-1", ""), testAccPlacementRequest("web-2", ""), testAccPlacementRequest("web-3", "")),
				Check:  testAccCheckPlacementDistinct("web-1", "web-2", "web-3"),
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue(testAccPlacementName, tfjsonpath.New("strategy"), knownvalue.StringExact("spread")),
					statecheck.ExpectKnownValue(testAccPlacementName, tfjsonpath.New("id"), knownvalue.StringExact("placement")),
					statecheck.ExpectKnownValue(testAccPlacementName, tfjsonpath.New("hosts"), knownvalue.SetExact([]knownvalue.Check{
						knownvalue.StringExact("host-a"), knownvalue.StringExact("host-b"), knownvalue.StringExact("host-c"),
					})),
				},
			},
			{
				// Nothing changed: the plan must be empty.
				Config: testAccPlacementConfig(c, "", testAccPlacementRequest("web-1", ""), testAccPlacementRequest("web-2", ""), testAccPlacementRequest("web-3", "")),
				ConfigPlanChecks: resource.ConfigPlanChecks{
					PreApply: []plancheck.PlanCheck{plancheck.ExpectEmptyPlan()},
				},
			},
		},
	})
}

func TestAccPlacement_pack(t *testing.T) {
	c := testAccPlacementHosts(t)
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		Steps: []resource.TestStep{{
			Config: testAccPlacementConfig(c, `strategy = "pack"`,
				testAccPlacementRequest("app-1", ""), testAccPlacementRequest("app-2", ""), testAccPlacementRequest("app-3", ""), testAccPlacementRequest("app-4", "")),
			Check: testAccCheckPlacementSameHost("app-1", "app-2", "app-3", "app-4"),
		}},
	})
}

func TestAccPlacement_antiAffinity(t *testing.T) {
	c := testAccPlacementHosts(t)
	three := []string{
		testAccPlacementRequest("web-1", `, anti_affinity_group = "web"`),
		testAccPlacementRequest("web-2", `, anti_affinity_group = "web"`),
		testAccPlacementRequest("web-3", `, anti_affinity_group = "web"`),
	}
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		Steps: []resource.TestStep{
			{
				// pack would put them together if anti-affinity were ignored.
				Config: testAccPlacementConfig(c, `strategy = "pack"`, three...),
				Check:  testAccCheckPlacementDistinct("web-1", "web-2", "web-3"),
			},
			{
				Config:      testAccPlacementConfig(c, `strategy = "pack"`, append(three, testAccPlacementRequest("web-4", `, anti_affinity_group = "web"`))...),
				ExpectError: regexp.MustCompile(`(?s)"web-4".*anti_affinity_group`),
			},
		},
	})
}

func TestAccPlacement_affinity(t *testing.T) {
	c := testAccPlacementHosts(t)
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		Steps: []resource.TestStep{{
			// spread would separate them if affinity were ignored.
			Config: testAccPlacementConfig(c, "",
				testAccPlacementRequest("db-1", `, affinity_group = "db"`), testAccPlacementRequest("db-2", `, affinity_group = "db"`), testAccPlacementRequest("cache", "")),
			Check: testAccCheckPlacementSameHost("db-1", "db-2"),
		}},
	})
}

func TestAccPlacement_hostLabels(t *testing.T) {
	c := testAccPlacementHosts(t)
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		Steps: []resource.TestStep{
			{
				Config: testAccPlacementConfig(c, "", testAccPlacementRequest("web-1", ""), testAccPlacementRequest("zoned", `, host_labels = { zone = "b" }`)),
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue(testAccPlacementName, tfjsonpath.New("assignments").AtMapKey("zoned"), knownvalue.StringExact("host-b")),
				},
			},
			{
				Config:      testAccPlacementConfig(c, "", testAccPlacementRequest("zoned", `, host_labels = { zone = "x" }`)),
				ExpectError: regexp.MustCompile(`(?s)"zoned".*host_labels`),
			},
		},
	})
}

func TestAccPlacement_stability(t *testing.T) {
	c := testAccPlacementHosts(t)
	two := []string{testAccPlacementRequest("web-1", ""), testAccPlacementRequest("web-2", "")}
	three := append(slices.Clone(two), testAccPlacementRequest("web-3", ""))
	var first map[string]string
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		Steps: []resource.TestStep{
			{
				Config: testAccPlacementConfig(c, "", two...),
				Check: resource.ComposeTestCheckFunc(
					testAccCheckPlacementDistinct("web-1", "web-2"),
					func(s *terraform.State) (err error) {
						first, err = assignmentsFromState(s)
						return err
					},
				),
			},
			{
				Config: testAccPlacementConfig(c, "", three...),
				ConfigPlanChecks: resource.ConfigPlanChecks{
					PreApply: []plancheck.PlanCheck{
						plancheck.ExpectResourceAction(testAccPlacementName, plancheck.ResourceActionUpdate),
						plancheck.ExpectKnownValue(testAccPlacementName, tfjsonpath.New("assignments").AtMapKey("web-3"), knownvalue.NotNull()),
					},
				},
				Check: func(s *terraform.State) error {
					a, err := assignmentsFromState(s)
					if err != nil {
						return err
					}
					for _, k := range []string{"web-1", "web-2"} {
						if a[k] != first[k] {
							return fmt.Errorf("adding web-3 moved %s from %s to %s", k, first[k], a[k])
						}
					}
					if a["web-3"] == "" {
						return fmt.Errorf("web-3 has no assignment: %v", a)
					}
					return nil
				},
			},
			{
				Config:   testAccPlacementConfig(c, "", three...),
				PlanOnly: true,
			},
		},
	})
}

func TestAccPlacement_hostDown(t *testing.T) {
	c := testAccPlacementHosts(t)
	var reqs []string
	for i := 1; i <= 6; i++ {
		reqs = append(reqs, testAccPlacementRequest(fmt.Sprintf("web-%d", i), ""))
	}
	cfg := testAccPlacementConfig(c, "", reqs...)
	var before map[string]string
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		Steps: []resource.TestStep{
			{
				Config: cfg,
				Check: func(s *terraform.State) (err error) {
					before, err = assignmentsFromState(s)
					if err == nil && !slices.Contains(slices.Collect(maps.Values(before)), "host-b") {
						err = fmt.Errorf("spread left host-b empty: %v", before)
					}
					return err
				},
			},
			{
				PreConfig: func() {
					if err := c.Host("host-b").Stop(); err != nil {
						t.Fatal(err)
					}
				},
				Config: cfg,
				ConfigPlanChecks: resource.ConfigPlanChecks{
					PreApply: []plancheck.PlanCheck{plancheck.ExpectResourceAction(testAccPlacementName, plancheck.ResourceActionUpdate)},
				},
				Check: func(s *terraform.State) error {
					after, err := assignmentsFromState(s)
					if err != nil {
						return err
					}
					for k, was := range before {
						switch now := after[k]; {
						case was == "host-b" && (now == "host-b" || now == ""):
							return fmt.Errorf("%s stayed on stopped host-b (%q)", k, now)
						case was != "host-b" && now != was:
							return fmt.Errorf("%s moved from %s to %s although only host-b went down", k, was, now)
						}
					}
					return nil
				},
			},
		},
	})
}

func TestAccPlacement_capacity(t *testing.T) {
	c := testAccPlacementHosts(t)
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		Steps: []resource.TestStep{{
			Config:      testAccPlacementConfig(c, "", testAccPlacementRequest("web-1", ""), `"huge" = { vcpu = 1, memory_mib = 1048576 }`),
			ExpectError: regexp.MustCompile(`(?s)"huge".*capacity`),
		}},
	})
}

func TestAccPlacement_validation(t *testing.T) {
	c := testAccPlacementHosts(t)
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		Steps: []resource.TestStep{
			{
				Config:      testAccPlacementConfig(c, `hosts = ["host-a", "nope"]`, testAccPlacementRequest("web-1", "")),
				ExpectError: regexp.MustCompile(`(?s)Unknown Hosts.*"nope"`),
			},
			{
				Config:      testAccPlacementConfig(c, `strategy = "random"`, testAccPlacementRequest("web-1", "")),
				ExpectError: regexp.MustCompile(`(?s)strategy.*spread`),
			},
			{
				Config:      testAccPlacementConfig(c, "", `"web-1" = { vcpu = 0, memory_mib = 512 }`),
				ExpectError: regexp.MustCompile(`(?s)vcpu.*at least 1`),
			},
			{
				// A subset of hosts is honored.
				Config: testAccPlacementConfig(c, `hosts = ["host-c"]`, testAccPlacementRequest("web-1", ""), testAccPlacementRequest("web-2", "")),
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue(testAccPlacementName, tfjsonpath.New("assignments"), knownvalue.MapExact(map[string]knownvalue.Check{
						"web-1": knownvalue.StringExact("host-c"), "web-2": knownvalue.StringExact("host-c"),
					})),
				},
			},
		},
	})
}

func TestAccPlacement_import(t *testing.T) {
	c := startHosts(t, harness.Options{Hosts: []string{"host-a", "host-b"}, ExtraArgs: []string{"--memory-overcommit", "10"}})
	cfg := c.ProviderHCL() + `
resource "kvm_cluster_placement" "web" {
  request = {
    "web-1" = { vcpu = 1, memory_mib = 64, anti_affinity_group = "web" }
    "web-2" = { vcpu = 1, memory_mib = 64, anti_affinity_group = "web" }
  }
}
`
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		Steps: []resource.TestStep{
			{
				// Adopt an existing layout that is the opposite of what a
				// fresh placement would pick; the keys must keep it.
				Config:             cfg,
				ResourceName:       "kvm_cluster_placement.web",
				ImportState:        true,
				ImportStateId:      "web-1=host-b,web-2=host-a",
				ImportStatePersist: true,
				ImportStateCheck: func(s []*terraform.InstanceState) error {
					if len(s) != 1 || s[0].Attributes["assignments.web-1"] != "host-b" {
						return fmt.Errorf("imported state: %+v", s)
					}
					return nil
				},
			},
			{
				Config: cfg,
				Check: resource.ComposeTestCheckFunc(
					resource.TestCheckResourceAttr("kvm_cluster_placement.web", "assignments.web-1", "host-b"),
					resource.TestCheckResourceAttr("kvm_cluster_placement.web", "assignments.web-2", "host-a"),
				),
			},
			{
				Config:        cfg,
				ResourceName:  "kvm_cluster_placement.web",
				ImportState:   true,
				ImportStateId: "web-1",
				ExpectError:   regexp.MustCompile(`key=host`),
			},
		},
	})
}
