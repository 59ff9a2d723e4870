package kvm

import (
	"context"
	"maps"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/placement"
)

// sharedPoolLabel is the label placement gives, internally, to a host for
// each pool it serves as shared, and requires of the hosts a key may move
// to when the key's VM has disks on that pool. It never shows in a host's
// labels.
func sharedPoolLabel(pool string) string { return "shared-pool." + pool }

// withSharedPools keeps a VM on hosts that serve its shared pools: for
// each key already placed whose VM (the VM named like the key, on the
// key's host) has disks on pools that host serves as shared, the key may
// only go to hosts serving those pools as shared too; moving it anywhere
// else would leave its disks behind. Likewise a key whose VM has
// encrypted disks may only go to hosts holding their keys (label
// key.NAME, which hosts carry for each key they hold); needs lists those
// keys per placement key. Keys without such a VM (new keys, keys not
// named like their VM) are unconstrained.
func withSharedPools(ctx context.Context, fleet *Fleet, reqs map[string]placement.Request, invs []api.Host, previous map[string]string) (map[string]placement.Request, []placement.Host, map[string][]keyNeed) {
	hosts := make([]placement.Host, 0, len(invs))
	byName := map[string]api.Host{}
	for _, inv := range invs {
		byName[inv.Name] = inv
		h := placementHost(inv)
		labels := maps.Clone(h.Labels)
		if labels == nil {
			labels = map[string]string{}
		}
		for _, p := range inv.Pools {
			if p.Shared {
				labels[sharedPoolLabel(p.Name)] = "true"
			}
		}
		h.Labels = labels
		hosts = append(hosts, h)
	}
	out := maps.Clone(reqs)
	needs := map[string][]keyNeed{}
	for key, host := range previous {
		q, ok := out[key]
		if !ok || fleet == nil {
			continue
		}
		fh, err := fleet.Host(host)
		if err != nil {
			continue
		}
		inv, known := byName[host]
		if !known {
			// A host no longer among the candidates: the key must
			// move, and its VM's disks are still there.
			inv = fh.Inventory(ctx)
			byName[host] = inv
		}
		if !inv.Healthy {
			continue
		}
		vm, err := fh.Client.GetVM(ctx, key)
		if err != nil {
			continue
		}
		require := func(label string) {
			if q.HostLabels == nil {
				q.HostLabels = map[string]string{}
			} else {
				q.HostLabels = maps.Clone(q.HostLabels)
			}
			q.HostLabels[label] = "true"
		}
		for _, d := range vm.Disks {
			if poolShared(inv, d.Pool) {
				require(sharedPoolLabel(d.Pool))
			}
		}
		// Only a host holding keys can have encrypted disks in use: the
		// volume reads (one per disk) are spared elsewhere.
		if len(inv.Keys) > 0 {
			for _, n := range encryptedDisksOf(ctx, fh, vm) {
				require(api.KeyLabel(n.key))
				needs[key] = append(needs[key], n)
			}
		}
		out[key] = q
	}
	return out, hosts, needs
}
