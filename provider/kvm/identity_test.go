package kvm

import (
	"context"
	"fmt"
	"regexp"
	"testing"

	"github.com/hashicorp/terraform-plugin-framework/providerserver"
	"github.com/hashicorp/terraform-plugin-go/tfprotov6"
	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/knownvalue"
	"github.com/hashicorp/terraform-plugin-testing/plancheck"
	"github.com/hashicorp/terraform-plugin-testing/statecheck"
	"github.com/hashicorp/terraform-plugin-testing/tfjsonpath"

	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
)

// identityTestConfig declares one of every resource, all on host-a.
func identityTestConfig(c *harness.Cluster) string {
	return c.ProviderHCL() + `
resource "kvm_network" "lan" {
  name  = "idlan"
  hosts = ["host-a"]
}

resource "kvm_disk" "root" {
  name     = "id-root"
  host     = "host-a"
  size_mib = 64
}

resource "kvm_vm" "web" {
  name               = "id-web"
  host               = "host-a"
  vcpu               = 1
  memory_mib         = 64
  disks              = [{ disk_id = kvm_disk.root.id }]
  network_interfaces = [{ network = kvm_network.lan.name }]
}

resource "kvm_snapshot" "s1" {
  vm_id          = "${kvm_vm.web.host}/${kvm_vm.web.name}" # as an import reads it back
  name           = "s1"
  include_memory = true
}

resource "kvm_cluster_placement" "p" {
  hosts   = ["host-a"]
  request = { "id-web" = { vcpu = 1, memory_mib = 64 } }
}
`
}

func identityTestChecks() []statecheck.StateCheck {
	s := knownvalue.StringExact
	return []statecheck.StateCheck{
		statecheck.ExpectIdentity("kvm_vm.web", map[string]knownvalue.Check{"host": s("host-a"), "name": s("id-web")}),
		statecheck.ExpectIdentity("kvm_disk.root", map[string]knownvalue.Check{"host": s("host-a"), "pool": s("default"), "name": s("id-root")}),
		statecheck.ExpectIdentity("kvm_network.lan", map[string]knownvalue.Check{"name": s("idlan")}),
		statecheck.ExpectIdentity("kvm_snapshot.s1", map[string]knownvalue.Check{"host": s("host-a"), "vm": s("id-web"), "name": s("s1")}),
		statecheck.ExpectIdentity("kvm_cluster_placement.p", map[string]knownvalue.Check{"assignments": s("id-web=host-a")}),
	}
}

// Every resource stores its identity, and an import block with only that
// identity adopts each with an empty plan (Terraform >= 1.12).
func TestAccIdentity_importByIdentity(t *testing.T) {
	modernTerraform(t)
	c := startHosts(t, harness.Options{Hosts: []string{"host-a", "host-b"}, ExtraArgs: vmTestHostArgs})
	cfg := identityTestConfig(c)
	byIdentity := func(addr string) resource.TestStep {
		return resource.TestStep{
			Config: cfg, ResourceName: addr,
			ImportState: true, ImportStateKind: resource.ImportBlockWithResourceIdentity,
		}
	}
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		CheckDestroy:             testAccCheckVMDestroy(c),
		Steps: []resource.TestStep{
			{Config: cfg, ConfigStateChecks: identityTestChecks()},
			byIdentity("kvm_vm.web"),
			byIdentity("kvm_disk.root"),
			byIdentity("kvm_network.lan"),
			byIdentity("kvm_snapshot.s1"),
			{
				// A placement import keeps every key's host; the request
				// and hosts come from the configuration (an update that
				// moves nothing), as with an import by ID.
				Config: cfg, ResourceName: "kvm_cluster_placement.p",
				ImportState: true, ImportStateKind: resource.ImportBlockWithResourceIdentity,
				ExpectNonEmptyPlan: true,
				ImportPlanChecks: resource.ImportPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectResourceAction("kvm_cluster_placement.p", plancheck.ResourceActionUpdate),
					plancheck.ExpectKnownValue("kvm_cluster_placement.p", tfjsonpath.New("assignments"),
						knownvalue.MapExact(map[string]knownvalue.Check{"id-web": knownvalue.StringExact("host-a")})),
				}},
			},
			{
				// The generated configuration of an identity import is
				// the object as it is: importing it plans nothing.
				Config: cfg, ResourceName: "kvm_vm.web",
				ImportState: true, ImportStateKind: resource.ImportBlockWithResourceIdentity, GenerateConfig: true,
				ImportPlanChecks: resource.ImportPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectResourceAction("kvm_vm.generated", plancheck.ResourceActionNoop),
				}},
			},
		},
	})
}

// An identity that is incomplete or names something malformed is refused
// with the identity attribute named.
func TestAccIdentity_invalid(t *testing.T) {
	modernTerraform(t)
	c := startHosts(t, harness.Options{Hosts: []string{"host-a"}, ExtraArgs: vmTestHostArgs})
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		Steps: []resource.TestStep{{
			Config: c.ProviderHCL() + `
import {
  to       = kvm_vm.x
  identity = { host = "host-a", name = "not/a/name" }
}
resource "kvm_vm" "x" {
  name       = "not-a-name"
  host       = "host-a"
  vcpu       = 1
  memory_mib = 64
}
`,
			PlanOnly:    true,
			ExpectError: regexp.MustCompile(`Invalid Import ID`),
		}},
	})
}

// noIdentityServer serves the provider as a version without resource
// identity did: no identity schemas, no identity in any response.
type noIdentityServer struct{ tfprotov6.ProviderServer }

func (s noIdentityServer) GetResourceIdentitySchemas(context.Context, *tfprotov6.GetResourceIdentitySchemasRequest) (*tfprotov6.GetResourceIdentitySchemasResponse, error) {
	return &tfprotov6.GetResourceIdentitySchemasResponse{IdentitySchemas: map[string]*tfprotov6.ResourceIdentitySchema{}}, nil
}

func (s noIdentityServer) ReadResource(ctx context.Context, req *tfprotov6.ReadResourceRequest) (*tfprotov6.ReadResourceResponse, error) {
	resp, err := s.ProviderServer.ReadResource(ctx, req)
	if resp != nil {
		resp.NewIdentity = nil
	}
	return resp, err
}

func (s noIdentityServer) PlanResourceChange(ctx context.Context, req *tfprotov6.PlanResourceChangeRequest) (*tfprotov6.PlanResourceChangeResponse, error) {
	resp, err := s.ProviderServer.PlanResourceChange(ctx, req)
	if resp != nil {
		resp.PlannedIdentity = nil
	}
	return resp, err
}

func (s noIdentityServer) ApplyResourceChange(ctx context.Context, req *tfprotov6.ApplyResourceChangeRequest) (*tfprotov6.ApplyResourceChangeResponse, error) {
	resp, err := s.ProviderServer.ApplyResourceChange(ctx, req)
	if resp != nil {
		resp.NewIdentity = nil
	}
	return resp, err
}

func (s noIdentityServer) ImportResourceState(ctx context.Context, req *tfprotov6.ImportResourceStateRequest) (*tfprotov6.ImportResourceStateResponse, error) {
	resp, err := s.ProviderServer.ImportResourceState(ctx, req)
	if resp != nil {
		for _, r := range resp.ImportedResources {
			r.Identity = nil
		}
	}
	return resp, err
}

// expectNoIdentity checks that Terraform stored no identity for addr.
type expectNoIdentity string

func (e expectNoIdentity) CheckState(_ context.Context, req statecheck.CheckStateRequest, resp *statecheck.CheckStateResponse) {
	if req.State == nil || req.State.Values == nil || req.State.Values.RootModule == nil {
		resp.Error = fmt.Errorf("no state")
		return
	}
	for _, r := range req.State.Values.RootModule.Resources {
		if r.Address == string(e) {
			if len(r.IdentityValues) > 0 {
				resp.Error = fmt.Errorf("%s has identity %v, want none", e, r.IdentityValues)
			}
			return
		}
	}
	resp.Error = fmt.Errorf("%s not in state", e)
}

// State written by a provider version without identity gains the identity
// at the next refresh, with nothing to change: the identity is derived from
// the state's own attributes, so no identity upgrade is involved (the
// identity schemas are at version 0).
func TestAccIdentity_gainedOnRefresh(t *testing.T) {
	modernTerraform(t)
	c := startHosts(t, harness.Options{Hosts: []string{"host-a", "host-b"}, ExtraArgs: vmTestHostArgs})
	cfg := identityTestConfig(c)
	previous := map[string]func() (tfprotov6.ProviderServer, error){
		"kvm": func() (tfprotov6.ProviderServer, error) {
			s, err := providerserver.NewProtocol6WithError(New("test")())()
			return noIdentityServer{s}, err
		},
	}
	resource.Test(t, resource.TestCase{
		CheckDestroy: testAccCheckVMDestroy(c),
		Steps: []resource.TestStep{
			{
				ProtoV6ProviderFactories: previous,
				Config:                   cfg,
				ConfigStateChecks: []statecheck.StateCheck{
					expectNoIdentity("kvm_vm.web"),
					expectNoIdentity("kvm_disk.root"),
				},
			},
			{
				ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
				Config:                   cfg,
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectEmptyPlan(),
				}},
				ConfigStateChecks: identityTestChecks(),
			},
		},
	})
}
