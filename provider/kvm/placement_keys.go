package kvm

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/path"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// keyNeed is one encrypted disk of a placed VM: the master key a host
// must hold to open it.
type keyNeed struct {
	key    string
	vm     string
	volume string // pool/volume
}

// encryptedDisksOf lists the encrypted disks of vm on its host fh. A disk
// that cannot be read is skipped: the VM's own plan reports it.
func encryptedDisksOf(ctx context.Context, fh *FleetHost, vm *api.VM) []keyNeed {
	var out []keyNeed
	for _, d := range vm.Disks {
		pool := d.Pool
		if pool == "" {
			pool = "default"
		}
		v, err := fh.Client.GetVolume(ctx, pool, d.Volume)
		if err != nil {
			continue
		}
		if k := v.Encryption.KeyName(); k != "" {
			out = append(out, keyNeed{key: k, vm: vm.Name, volume: pool + "/" + d.Volume})
		}
	}
	return out
}

// keysUnheld adds a plan error, per placement key, for each encryption
// key its VM's disks need that no candidate host holds: placement would
// otherwise fail with a bare label constraint, and moving the VM to a
// host without the key would leave its disks unreadable there. It reports
// whether it added any.
func keysUnheld(diags *diag.Diagnostics, needs map[string][]keyNeed, invs []api.Host) bool {
	failed := false
	for _, pk := range slices.Sorted(maps.Keys(needs)) {
		for _, n := range needs[pk] {
			held := false
			var hosts []string
			for _, inv := range invs {
				if inv.Labels[api.KeyLabel(n.key)] == "true" {
					held = true
				}
				keys := "none"
				if len(inv.Keys) > 0 {
					keys = strings.Join(inv.Keys, ", ")
				}
				hosts = append(hosts, fmt.Sprintf("%s (keys: %s)", inv.Name, keys))
			}
			if held {
				continue
			}
			failed = true
			diags.AddAttributeError(path.Root("request").AtMapKey(pk), "Encryption Key Not Held",
				fmt.Sprintf("Cannot place %q: its VM %s has the encrypted disk %s (encryption key %q), and none of the candidate hosts holds key %q: %s. "+
					"Put %s.key in the --key-dir of the hosts that may run it, or add such a host to hosts.",
					pk, n.vm, n.volume, n.key, n.key, strings.Join(hosts, "; "), n.key))
		}
	}
	return failed
}
