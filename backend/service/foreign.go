package service

import (
	"strings"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// refuseUnmodelledDevices refuses to redefine a domain that has devices a
// VMSpec cannot describe: a disk that is no volume of a served pool, an
// interface on no network of ours (a domain defined with virsh, adopted
// with terraform import). UpdateVM rebuilds the domain from the spec,
// which would silently drop them.
func refuseUnmodelledDevices(cur *api.VM) error {
	var what []string
	for _, d := range cur.Disks {
		if d.Pool == "" || d.Volume == "" {
			what = append(what, "disk "+d.Target+" (not a volume of a served pool)")
		}
	}
	for _, n := range cur.Interfaces {
		if n.Network == "" {
			w := "interface " + n.MAC + " (on no network of this host"
			if n.Bridge != "" {
				w += ": bridge " + n.Bridge
			}
			what = append(what, w+")")
		}
	}
	if len(what) == 0 {
		return nil
	}
	return api.Errorf(api.CodeConflict, "VM %s has devices kvm-hostd does not manage: %s; changing the VM would drop them. "+
		"Detach them or move them (disks into a pool, interfaces onto a network) with virsh first", cur.Name, strings.Join(what, ", "))
}
