package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/client"
)

// Known is what Terraform state holds: the objects an orphan sweep must not
// report. Keys are the resources' natural names, not their IDs (a VM's ID is
// its UUID).
type Known struct {
	VMs      map[string]bool // "<host>/<name>"
	Volumes  map[string]bool // "<host>/<pool>/<name>"
	Networks map[string]bool // "<name>"
}

// NewKnown returns an empty Known.
func NewKnown() Known {
	return Known{VMs: map[string]bool{}, Volumes: map[string]bool{}, Networks: map[string]bool{}}
}

// AddResource records one resource of state by its type and attributes
// (host, name, pool); other types are ignored.
func (k Known) AddResource(typ string, attr func(string) string) {
	switch typ {
	case "kvm_vm":
		k.VMs[attr("host")+"/"+attr("name")] = true
	case "kvm_disk":
		pool := attr("pool")
		if pool == "" {
			pool = "default"
		}
		k.Volumes[attr("host")+"/"+pool+"/"+attr("name")] = true
	case "kvm_network":
		k.Networks[attr("name")] = true
	}
}

// AddStateJSON records the resources of `terraform show -json` output. Several states
// may be merged by calling it on the same Known.
func (k Known) AddStateJSON(b []byte) error {
	var st struct {
		Values *struct {
			RootModule struct {
				Resources []struct {
					Mode   string         `json:"mode"`
					Type   string         `json:"type"`
					Values map[string]any `json:"values"`
				} `json:"resources"`
			} `json:"root_module"`
		} `json:"values"`
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("reading terraform show -json: %w", err)
	}
	if st.Values == nil {
		return nil // empty state
	}
	for _, r := range st.Values.RootModule.Resources {
		if r.Mode != "managed" {
			continue
		}
		k.AddResource(r.Type, func(a string) string { s, _ := r.Values[a].(string); return s })
	}
	return nil
}

// seedSuffix names the NoCloud seed ISO kvm-hostd builds for a VM with
// cloud_init ("<vm>-cidata.iso" in the pool directory).
const seedSuffix = "-cidata.iso"

// Orphans are objects named with a test's prefix that no state holds.
type Orphans struct {
	Domains  []string // "<host>/<name>"
	Volumes  []string // "<host>/<pool>/<name>"
	Networks []string // "<host>/<name>"
	// Ports are switch ports beyond what the known VMs' interfaces
	// account for: "<host>/<network>: <ports> (<n> expected)".
	Ports []string
}

// Empty reports whether nothing was orphaned.
func (o Orphans) Empty() bool {
	return len(o.Domains)+len(o.Volumes)+len(o.Networks)+len(o.Ports) == 0
}

func (o Orphans) String() string {
	if o.Empty() {
		return "no orphans"
	}
	var parts []string
	add := func(kind string, l []string) {
		if len(l) > 0 {
			parts = append(parts, fmt.Sprintf("%d orphan %s (%s)", len(l), kind, strings.Join(l, ", ")))
		}
	}
	add("domains", o.Domains)
	add("volumes", o.Volumes)
	add("networks", o.Networks)
	add("port sets", o.Ports)
	return strings.Join(parts, "; ")
}

// FindOrphans lists, on every host, the domains, volumes (of pool) and
// networks whose names start with prefix but are not in known, and the
// switch ports of prefixed networks that no known VM's interface explains.
// It looks at the hosts through their API (libvirt and OVSDB as kvm-hostd
// reads them), so it works on the embedded default and on the real stack.
//
// A port is explained by a known VM on the same host with an interface on
// that network; on the real stack libvirt adds a VM's ports only while the
// domain runs, so a stopped known VM explains none. Ports are counted per
// network, as their names (libvirt's vnetN) do not name the VM.
func FindOrphans(ctx context.Context, hosts map[string]*client.Client, pool, prefix string, known Known) (Orphans, error) {
	var o Orphans
	names := make([]string, 0, len(hosts))
	for h := range hosts {
		names = append(names, h)
	}
	sort.Strings(names)
	for _, host := range names {
		cl := hosts[host]
		info, err := cl.Host(ctx)
		if err != nil {
			return o, fmt.Errorf("host %s: %w", host, err)
		}
		// On real QEMU, libvirt plugs a NIC's port at start and unplugs it
		// at stop; on the test driver kvm-hostd records ports for every
		// defined domain.
		portsWhileRunning := !strings.HasPrefix(info.LibvirtURI, "test:")
		vms, err := cl.ListVMs(ctx)
		if err != nil {
			return o, fmt.Errorf("host %s: listing VMs: %w", host, err)
		}
		nicsOn := map[string]int{} // network -> interfaces of known VMs
		for _, vm := range vms {
			if !strings.HasPrefix(vm.Name, prefix) {
				continue
			}
			if !known.VMs[host+"/"+vm.Name] {
				o.Domains = append(o.Domains, host+"/"+vm.Name)
				continue
			}
			if vm.State != "running" && portsWhileRunning {
				continue
			}
			for _, n := range vm.Interfaces {
				nicsOn[n.Network]++
			}
		}
		vols, err := cl.ListVolumes(ctx, pool)
		if err != nil {
			return o, fmt.Errorf("host %s: listing volumes of pool %s: %w", host, pool, err)
		}
		for _, v := range vols {
			if vm, ok := strings.CutSuffix(v.Name, seedSuffix); ok && known.VMs[host+"/"+vm] {
				continue // the cloud-init seed kvm-hostd keeps beside a known VM
			}
			if strings.HasPrefix(v.Name, prefix) && !known.Volumes[host+"/"+pool+"/"+v.Name] {
				o.Volumes = append(o.Volumes, host+"/"+pool+"/"+v.Name)
			}
		}
		nets, err := cl.ListNetworks(ctx)
		if err != nil && !api.IsCode(err, api.CodeUnsupported) {
			return o, fmt.Errorf("host %s: listing networks: %w", host, err)
		}
		for _, n := range nets {
			if !strings.HasPrefix(n.Name, prefix) {
				continue
			}
			if !known.Networks[n.Name] {
				o.Networks = append(o.Networks, host+"/"+n.Name)
			}
			if len(n.Ports) > nicsOn[n.Name] {
				o.Ports = append(o.Ports, fmt.Sprintf("%s/%s: %s (%d expected)", host, n.Name, strings.Join(n.Ports, " "), nicsOn[n.Name]))
			}
		}
	}
	return o, nil
}
