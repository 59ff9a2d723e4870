package kvm

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/knownvalue"
	"github.com/hashicorp/terraform-plugin-testing/querycheck"

	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
)

// foreignNodeXML is a libvirt test-driver node as another tool would have
// left it: a domain defined without kvm-hostd (no metadata), with one disk
// that is a volume of the pool, one that is a file outside every pool, and
// a NIC on a Linux bridge; the pool holds that volume and an unattached
// one. It is what `virsh define` and `virsh vol-create` make on a real host.
const foreignNodeXML = `<node>
  <domain type='test'>
    <name>legacy-db</name>
    <uuid>6695eb01-f6a4-8304-79aa-97f2502e193f</uuid>
    <memory unit='MiB'>256</memory>
    <currentMemory unit='MiB'>256</currentMemory>
    <vcpu>1</vcpu>
    <os><type>hvm</type></os>
    <devices>
      <disk type='file' device='disk'>
        <source file='/foreign-pool/legacy-db.qcow2'/>
        <target dev='vda' bus='virtio'/>
      </disk>
      <disk type='file' device='disk'>
        <source file='/srv/legacy/data.img'/>
        <target dev='vdb' bus='virtio'/>
      </disk>
      <interface type='bridge'>
        <mac address='52:54:00:aa:bb:01'/>
        <source bridge='br0'/>
        <model type='virtio'/>
      </interface>
    </devices>
  </domain>
  <pool type='dir'>
    <name>default</name>
    <uuid>35bb2ad9-388a-cdfe-461a-b8907f6e53fe</uuid>
    <capacity unit='GiB'>100</capacity>
    <allocation>0</allocation>
    <available unit='GiB'>100</available>
    <source/>
    <target><path>/foreign-pool</path></target>
    <volume type='file'>
      <name>legacy-db.qcow2</name>
      <capacity unit='MiB'>512</capacity>
      <allocation>0</allocation>
      <target><path>/foreign-pool/legacy-db.qcow2</path><format type='qcow2'/></target>
    </volume>
    <volume type='file'>
      <name>legacy-spare.raw</name>
      <capacity unit='MiB'>128</capacity>
      <allocation>0</allocation>
      <target><path>/foreign-pool/legacy-spare.raw</path><format type='raw'/></target>
    </volume>
  </pool>
</node>
`

// foreignHosts starts hosts on a test-driver node holding foreignNodeXML
// (each kvm-hostd process loads its own copy).
func foreignHosts(t *testing.T, hosts ...string) *harness.Cluster {
	t.Helper()
	testAccPreCheck(t)
	node := filepath.Join(t.TempDir(), "foreign-node.xml")
	if err := os.WriteFile(node, []byte(foreignNodeXML), 0o644); err != nil {
		t.Fatal(err)
	}
	return startHosts(t, harness.Options{Hosts: hosts, LibvirtURI: "test://" + node, ExtraArgs: vmTestHostArgs})
}

// terraform query lists every VM and disk of the fleet, the ones made
// outside Terraform too, with the filters host, name_prefix and tags.
func TestAccQuery_listFilters(t *testing.T) {
	modernTerraform(t)
	c := foreignHosts(t, "host-a", "host-b")
	own := c.ProviderHCL() + `
resource "kvm_disk" "web" {
  name     = "web-root"
  host     = "host-a"
  size_mib = 64
}

resource "kvm_vm" "web" {
  name       = "web"
  host       = "host-a"
  vcpu       = 1
  memory_mib = 64
  disks      = [{ disk_id = kvm_disk.web.id }]
  tags       = { team = "web" }
}
`
	s := knownvalue.StringExact
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		Steps: []resource.TestStep{
			{Config: own},
			{
				Query: true,
				Config: `
list "kvm_vm" "all" {
  provider = kvm
}
list "kvm_vm" "legacy_a" {
  provider = kvm
  config {
    host        = "host-a"
    name_prefix = "legacy"
  }
}
list "kvm_vm" "web" {
  provider = kvm
  config {
    tags = { team = "web" }
  }
}
list "kvm_disk" "all_b" {
  provider = kvm
  config {
    host = "host-b"
  }
}
list "kvm_disk" "web" {
  provider = kvm
  config {
    tags = { team = "web" }
  }
}
`,
				QueryResultChecks: []querycheck.QueryResultCheck{
					querycheck.ExpectLength("kvm_vm.all", 3),
					querycheck.ExpectIdentity("kvm_vm.all", map[string]knownvalue.Check{"host": s("host-b"), "name": s("legacy-db")}),
					querycheck.ExpectLength("kvm_vm.legacy_a", 1),
					querycheck.ExpectIdentity("kvm_vm.legacy_a", map[string]knownvalue.Check{"host": s("host-a"), "name": s("legacy-db")}),
					querycheck.ExpectLength("kvm_vm.web", 1),
					querycheck.ExpectIdentity("kvm_vm.web", map[string]knownvalue.Check{"host": s("host-a"), "name": s("web")}),
					querycheck.ExpectLength("kvm_disk.all_b", 2),
					querycheck.ExpectIdentity("kvm_disk.all_b", map[string]knownvalue.Check{"host": s("host-b"), "pool": s("default"), "name": s("legacy-spare.raw")}),
					querycheck.ExpectLength("kvm_disk.web", 1),
					querycheck.ExpectIdentity("kvm_disk.web", map[string]knownvalue.Check{"host": s("host-a"), "pool": s("default"), "name": s("web-root")}),
				},
			},
		},
	})
}

// The acceptance test of `terraform query` on the test driver: it finds a
// domain and volumes made outside Terraform; -generate-config-out writes
// configuration that imports them with an empty plan after; what kvm_vm
// cannot describe is named in a warning and stays on the domain.
func TestAccQuery_generateConfigImports(t *testing.T) {
	tf := modernTerraform(t)
	c := foreignHosts(t, "host-a")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	queryAdopt(ctx, t, c, tf, "legacy",
		[]string{"host-a/legacy-db", "host-a/default/legacy-db.qcow2", "host-a/default/legacy-spare.raw"},
		[]string{"vdb", "br0"})
	vm, err := testAccVMClient(t, c, "host-a").GetVM(ctx, "legacy-db")
	if err != nil {
		t.Fatal(err)
	}
	if len(vm.Disks) != 2 || len(vm.Interfaces) != 1 {
		t.Errorf("legacy-db now has %d disks and %d NICs, want 2 and 1", len(vm.Disks), len(vm.Interfaces))
	}
}

// queryAdopt runs `terraform query` for the VMs and disks of host-a named
// with prefix, checks that it finds every one of want (display names) and
// warns about every one of warn (in one "Cannot Describe" warning), then
// writes their configuration with -generate-config-out, applies it (only
// imports) and checks the plan after is empty. The adopted objects are
// removed from the state at the end, not destroyed.
func queryAdopt(ctx context.Context, t *testing.T, c *harness.Cluster, tf, prefix string, want, warn []string) {
	t.Helper()
	w, err := harness.NewWorkdir(t.TempDir(), "adopt", tf)
	if err != nil {
		t.Fatal(err)
	}
	mainTF := "terraform {\n  required_providers {\n    kvm = { source = \"kvmfleet/kvm\" }\n  }\n}\n" + c.ProviderHCL()
	if err := w.WriteConfig(mainTF); err != nil {
		t.Fatal(err)
	}
	query := fmt.Sprintf(`
list "kvm_vm" "found" {
  provider         = kvm
  include_resource = true
  config {
    host        = "host-a"
    name_prefix = %[1]q
  }
}
list "kvm_disk" "found" {
  provider         = kvm
  include_resource = true
  config {
    host        = "host-a"
    name_prefix = %[1]q
  }
}
`, prefix)
	if err := os.WriteFile(filepath.Join(w.Dir, "adopt.tfquery.hcl"), []byte(query), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := w.Stdout(ctx, "query", "-json", "-no-color")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	var found []string
	var warned bool
	for _, line := range strings.Split(out, "\n") {
		var msg struct {
			Type         string `json:"type"`
			ListResource struct {
				DisplayName string `json:"display_name"`
			} `json:"list_resource_found"`
			Diagnostic struct {
				Summary string `json:"summary"`
				Detail  string `json:"detail"`
			} `json:"diagnostic"`
		}
		if json.Unmarshal([]byte(line), &msg) != nil {
			continue
		}
		if msg.Type == "list_resource_found" {
			found = append(found, msg.ListResource.DisplayName)
		}
		if msg.Type == "diagnostic" && strings.Contains(msg.Diagnostic.Summary, "Cannot Describe") {
			all := true
			for _, wv := range warn {
				all = all && strings.Contains(msg.Diagnostic.Detail, wv)
			}
			warned = warned || all
		}
	}
	if len(found) != len(want) {
		t.Errorf("terraform query found %v, want %v", found, want)
	}
	for _, id := range want {
		if !slices.Contains(found, id) {
			t.Errorf("terraform query did not find %s; found %v", id, found)
		}
	}
	if len(warn) > 0 && !warned {
		t.Errorf("terraform query named no warning with %v", warn)
	}
	if t.Failed() {
		t.Fatalf("terraform query output:\n%s", out)
	}

	if out, err := w.Run(ctx, "query", "-generate-config-out=generated.tf", "-no-color"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	gen, err := os.ReadFile(filepath.Join(w.Dir, "generated.tf"))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("generated configuration:\n%s", gen)
	out, err = w.Run(ctx, "apply", "-auto-approve", "-input=false", "-no-color")
	if err != nil {
		t.Fatalf("importing the generated configuration: %v\n%s", err, out)
	}
	if !strings.Contains(out, fmt.Sprintf("%d imported, 0 added, 0 changed, 0 destroyed", len(want))) {
		t.Fatalf("the import of the generated configuration did more than import:\n%s", out)
	}
	if out, err := w.Run(ctx, "plan", "-detailed-exitcode", "-input=false", "-no-color"); err != nil {
		t.Fatalf("plan after import is not empty: %v\n%s", err, out)
	}
	addrs, err := w.Stdout(ctx, "state", "list")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := w.Run(ctx, append([]string{"state", "rm"}, strings.Fields(addrs)...)...); err != nil {
		t.Logf("%v\n%s", err, out)
	}
}
