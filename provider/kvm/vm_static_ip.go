package kvm

import (
	"context"
	"fmt"
	"sync"

	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-log/tflog"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// staticIPv4Check is one NIC's static address to check at plan time.
type staticIPv4Check struct {
	index   int
	network string
	ip      string
}

// checkStaticIPv4 validates the static addresses a plan adds or changes
// against what the configured hosts already have: the network's subnet on
// the VM's host (when the network exists there), the DHCP server addresses
// of every host of the network, and the addresses other VMs of any
// reachable host use on the same network. A host that cannot be reached
// is skipped: the VM's host checks again at apply. Two new VMs of one
// apply are not seen here; their host refuses the second if both land on
// it.
func (r *VMResource) checkStaticIPv4(ctx context.Context, plan vmModel, state *vmModel, diags *diag.Diagnostics) {
	if r.fleet == nil || plan.Host.IsUnknown() || plan.Name.IsUnknown() {
		return
	}
	nics, _ := plan.nicsOf(ctx)
	var prior []vmNICModel
	if state != nil {
		prior, _ = state.nicsOf(ctx)
	}
	var checks []staticIPv4Check
	for i, n := range nics {
		ip, network := knownString(n.IPv4Address), knownString(n.Network)
		if ip == "" || network == "" || api.ValidateIPv4Syntax(ip) != nil {
			continue
		}
		if state != nil && state.Host.Equal(plan.Host) && i < len(prior) &&
			prior[i].IPv4Address.Equal(n.IPv4Address) && prior[i].Network.Equal(n.Network) {
			continue // unchanged: checked when it was planned
		}
		checks = append(checks, staticIPv4Check{i, network, ip})
	}
	if len(checks) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, inventoryTimeout)
	defer cancel()
	vmHost, vmName := plan.Host.ValueString(), plan.Name.ValueString()
	networks := map[string]bool{}
	for _, c := range checks {
		networks[c.network] = true
	}

	// Every host's networks and VMs, read concurrently.
	type hostView struct {
		nets map[string]*api.Network
		vms  []api.VM
		err  error
	}
	views := map[string]*hostView{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, name := range r.fleet.Names() {
		h, err := r.fleet.Host(name)
		if err != nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			v := &hostView{nets: map[string]*api.Network{}}
			for n := range networks {
				net, err := h.Client.GetNetwork(ctx, n)
				if err == nil {
					v.nets[n] = net
				} else if !isNotFound(err) {
					v.err = err
				}
			}
			if v.err == nil {
				v.vms, v.err = h.Client.ListVMs(ctx)
			}
			mu.Lock()
			views[name] = v
			mu.Unlock()
		}()
	}
	wg.Wait()

	for _, c := range checks {
		p := path.Root("network_interfaces").AtListIndex(c.index).AtName("ipv4_address")
		var reserved []string
		for _, v := range views {
			if n := v.nets[c.network]; n != nil && n.DHCPServerIP != "" {
				reserved = append(reserved, n.DHCPServerIP)
			}
		}
		if v := views[vmHost]; v != nil && v.err == nil {
			if n := v.nets[c.network]; n != nil {
				if n.Subnet == nil || n.Subnet.CIDR == "" {
					diags.AddAttributeError(p, "Network Has No Subnet", fmt.Sprintf(
						"network_interfaces[%d]: network %s has no subnet on host %s; ipv4_address needs the network's subnet (kvm_network.subnet).",
						c.index, c.network, vmHost))
					continue
				} else if err := api.ValidateStaticIPv4(*n.Subnet, c.ip, reserved...); err != nil {
					diags.AddAttributeError(p, "Invalid IPv4 Address", fmt.Sprintf("network_interfaces[%d]: %s (network %s).", c.index, err, c.network))
					continue
				}
			}
		}
		for _, host := range r.fleet.Names() {
			v := views[host]
			if v == nil || v.err != nil {
				if v != nil {
					tflog.Debug(ctx, "host not checked for static addresses", map[string]any{"host": host, "error": v.err.Error()})
				}
				continue
			}
			for _, other := range v.vms {
				if other.Name == vmName && host == vmHost ||
					state != nil && other.Name == state.Name.ValueString() && host == state.Host.ValueString() {
					continue // this VM, or what it moves or is re-created from
				}
				for _, o := range other.Interfaces {
					if o.Network == c.network && o.IPv4Address == c.ip {
						diags.AddAttributeError(p, "IPv4 Address in Use", fmt.Sprintf(
							"network_interfaces[%d]: ipv4_address %s is already used by VM %s on host %s on network %s.",
							c.index, c.ip, other.Name, host, c.network))
					}
				}
			}
		}
	}
}
