package kvm

import (
	"context"
	"fmt"
	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/client"
)

// Fleet is the configured set of hosts, shared by every resource and data
// source of one provider instance.
type Fleet struct {
	hosts map[string]*FleetHost
}

// FleetHost is one configured host.
type FleetHost struct {
	Name     string
	Endpoint string
	// Labels from the provider configuration; merged over the labels the
	// host reports itself.
	Labels map[string]string
	Client *client.Client
}

// Names returns host names in sorted order.
func (f *Fleet) Names() []string {
	if f == nil {
		return nil
	}
	return slices.Sorted(maps.Keys(f.hosts))
}

// Host returns a configured host or an error naming the configured ones.
// A nil Fleet (provider not configured yet) has no hosts.
func (f *Fleet) Host(name string) (*FleetHost, error) {
	if f == nil {
		return nil, fmt.Errorf("the kvm provider is not configured, so host %q is unknown", name)
	}
	h, ok := f.hosts[name]
	if !ok {
		return nil, fmt.Errorf("host %q is not configured in the provider's hosts (configured: %v)", name, f.Names())
	}
	return h, nil
}

// inventoryTimeout bounds one host's inventory read, so a host that is down
// costs a plan seconds, not minutes.
const inventoryTimeout = 8 * time.Second

// Inventory reads one host. A host that cannot be reached is returned as
// unhealthy with the reason, never as an error: one host being down must
// not break plans for resources on other hosts.
func (h *FleetHost) Inventory(ctx context.Context) api.Host {
	ctx, cancel := context.WithTimeout(ctx, inventoryTimeout)
	defer cancel()
	inv, err := h.Client.Host(ctx)
	if err != nil {
		return api.Host{Name: h.Name, Labels: maps.Clone(h.Labels), Healthy: false, Message: err.Error()}
	}
	if inv.Name != h.Name {
		// The provider's name is what users reference; keep it, but say
		// when the host calls itself something else.
		inv.Message = fmt.Sprintf("host reports its name as %q", inv.Name)
		inv.Name = h.Name
	}
	labels := maps.Clone(inv.Labels)
	if labels == nil {
		labels = map[string]string{}
	}
	maps.Copy(labels, h.Labels)
	inv.Labels = labels
	return *inv
}

// Inventories reads the given hosts concurrently, in the order given.
func (f *Fleet) Inventories(ctx context.Context, names []string) []api.Host {
	out := make([]api.Host, len(names))
	var wg sync.WaitGroup
	for i, n := range names {
		h, ok := f.hosts[n]
		if !ok {
			out[i] = api.Host{Name: n, Healthy: false, Message: "not configured in the provider"}
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = h.Inventory(ctx)
		}()
	}
	wg.Wait()
	return out
}

// lookupHost is Fleet.Host for resource methods: an unknown host becomes an
// error diagnostic on the host attribute and a nil result.
func lookupHost(f *Fleet, name string, diags *diag.Diagnostics) *FleetHost {
	h, err := f.Host(name)
	if err != nil {
		diags.AddAttributeError(path.Root("host"), "Unknown Host", err.Error())
		return nil
	}
	return h
}
