package kvm

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/plancheck"
	"github.com/hashicorp/terraform-plugin-testing/terraform"

	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
)

// hostRequests reads a host's request counters from /metrics, by route
// ("GET /v1/vms/{name}").
func hostRequests(t *testing.T, c *harness.Cluster, host string) map[string]int {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, c.Host(host).URL+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+c.Token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out := map[string]int{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		labels, val, ok := strings.Cut(strings.TrimPrefix(sc.Text(), "kvm_hostd_http_requests_total{"), "} ")
		if !ok || labels == sc.Text() {
			continue
		}
		n, err := strconv.ParseFloat(val, 64)
		if err != nil {
			continue
		}
		for _, kv := range strings.Split(labels, ",") {
			if k, v, _ := strings.Cut(kv, "="); k == "route" {
				out[strings.Trim(v, `"`)] += int(n)
			}
		}
	}
	return out
}

func testAccCoalesceConfig(c *harness.Cluster, perHost int) string {
	return c.ProviderHCL() + fmt.Sprintf(`
locals {
  hosts = ["host-a", "host-b"]
  names = [for i in range(%d * 2) : format("cv-%%s-%%d", local.hosts[i %% 2], i)]
}

resource "kvm_network" "lan" {
  name = "coalesce"
}

resource "kvm_disk" "d" {
  count    = length(local.names)
  name     = "${local.names[count.index]}-root"
  host     = local.hosts[count.index %% 2]
  size_mib = 16
}

resource "kvm_vm" "v" {
  count              = length(local.names)
  name               = local.names[count.index]
  host               = local.hosts[count.index %% 2]
  vcpu               = 1
  memory_mib         = 64
  shutdown_timeout   = 0
  disks              = [{ disk_id = kvm_disk.d[count.index].id }]
  network_interfaces = [{ network = kvm_network.lan.name }]
}
`, perHost)
}

// A refresh costs one list per host and kind, not one GET per resource;
// drift made out of band is still seen, and corrected.
func TestAccPlanCoalescesReads(t *testing.T) {
	const perHost = 4
	c := startHosts(t, harness.Options{Hosts: []string{"host-a", "host-b"}, ExtraArgs: vmTestHostArgs})
	cfg := testAccCoalesceConfig(c, perHost)
	before := map[string]map[string]int{}
	record := func() {
		for _, h := range []string{"host-a", "host-b"} {
			before[h] = hostRequests(t, c, h)
		}
	}
	checkCoalesced := func() {
		for _, h := range []string{"host-a", "host-b"} {
			after := hostRequests(t, c, h)
			d := func(route string) int { return after[route] - before[h][route] }
			// The refreshing plan(s) of the step read every VM, disk
			// and network of the host; none of them by a GET of its own.
			for _, one := range []string{"GET /v1/vms/{name}", "GET /v1/pools/{pool}/volumes/{name}", "GET /v1/networks/{name}"} {
				if n := d(one); n != 0 {
					t.Errorf("host %s: %d requests %s during a no-op plan of %d VMs, want 0 (coalesced into lists)", h, n, one, perHost)
				}
			}
			// Each refreshing command of the step reads the one network
			// once per host, so its reads count the refreshes; VMs and
			// disks (perHost of each) must cost one list per refresh
			// too, not one GET each. (A refresh slower than
			// snapshotMaxAge may take one list more.)
			refreshes := d("GET /v1/networks")
			if refreshes < 1 {
				t.Errorf("host %s: the no-op plan step did not read the network", h)
			}
			for _, list := range []string{"GET /v1/vms", "GET /v1/pools/{pool}/volumes"} {
				if n := d(list); n < 1 || n > refreshes+1 {
					t.Errorf("host %s: %d requests %s in %d refreshes of %d VMs, want one per refresh", h, n, list, refreshes, perHost)
				}
			}
		}
	}
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		CheckDestroy:             testAccCheckVMDestroy(c),
		Steps: []resource.TestStep{
			{Config: cfg},
			{PreConfig: record, Config: cfg, PlanOnly: true},
			{
				// Out of band: a VM deleted on one host, another changed
				// on the other, a disk's volume deleted.
				PreConfig: func() {
					checkCoalesced()
					ctx := context.Background()
					a, b := testAccVMClient(t, c, "host-a"), testAccVMClient(t, c, "host-b")
					if err := a.DeleteVM(ctx, "cv-host-a-0", 0); err != nil {
						t.Fatal(err)
					}
					if err := a.DeleteVolume(ctx, "default", "cv-host-a-0-root"); err != nil {
						t.Fatal(err)
					}
					vm, err := b.GetVM(ctx, "cv-host-b-1")
					if err != nil {
						t.Fatal(err)
					}
					spec := vm.VMSpec
					spec.Description = "changed behind terraform's back"
					if _, err := b.UpdateVM(ctx, "cv-host-b-1", spec); err != nil {
						t.Fatal(err)
					}
				},
				Config: cfg,
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectResourceAction("kvm_vm.v[0]", plancheck.ResourceActionCreate),
					plancheck.ExpectResourceAction("kvm_disk.d[0]", plancheck.ResourceActionCreate),
					plancheck.ExpectResourceAction("kvm_vm.v[1]", plancheck.ResourceActionUpdate),
					plancheck.ExpectResourceAction("kvm_vm.v[2]", plancheck.ResourceActionNoop),
				}},
				Check: func(*terraform.State) error {
					vm, err := testAccVMClient(t, c, "host-b").GetVM(context.Background(), "cv-host-b-1")
					if err != nil {
						return err
					}
					if vm.Description != "" {
						return fmt.Errorf("drift not corrected: description %q", vm.Description)
					}
					if _, err := testAccVMClient(t, c, "host-a").GetVM(context.Background(), "cv-host-a-0"); err != nil {
						return fmt.Errorf("deleted VM not re-created: %w", err)
					}
					return nil
				},
			},
		},
	})
}
