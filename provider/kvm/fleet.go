package kvm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/path"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/client"
)

// Fleet is the configured set of hosts, shared by every resource and data
// source of one provider instance.
type Fleet struct {
	hosts map[string]*FleetHost
	// evacPools caches the pools shared by the hosts that are not
	// evacuated, for evacuation warnings.
	evacPools sharedPoolCache
}

// FleetHost is one configured host.
type FleetHost struct {
	Name     string
	Endpoint string
	// Labels from the provider configuration; merged over the labels the
	// host reports itself.
	Labels map[string]string
	Client *client.Client
	// Evacuate: the operator fenced the host and asks for its objects to
	// be re-created elsewhere (see evacuate.go).
	Evacuate bool
	fence    fenceCheck
	// reads coalesces refresh reads (readcache.go).
	reads hostReads
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

// hostUnreachable reports whether err means the host gave no answer about
// the object: the connection failed, was cut or timed out, or kvm-hostd (or
// a proxy in front of it) answered that it is unavailable (502/503/504,
// e.g. its libvirt is restarting). Any other answer (404, 409, 401, ...) is
// an answer, and a TLS handshake the host refused is a misconfiguration:
// neither is an outage.
func hostUnreachable(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	var apiErr *api.Error
	if errors.As(err, &apiErr) {
		switch apiErr.Status {
		case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
			return true
		}
		return false
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return true
	}
	var opErr *net.OpError
	if errors.As(err, &opErr) {
		// crypto/tls reports an alert from the peer (e.g. a client
		// certificate it rejects) as a "remote error" OpError.
		return opErr.Op != "remote error"
	}
	var netErr net.Error
	return errors.As(err, &netErr) && netErr.Timeout()
}

// warnHostUnreachable is the one warning for an object whose host did not
// answer a refresh or a plan-time check: its last known state is kept, so
// one host being down does not break plans for resources on other hosts,
// and neither plans its objects away nor re-creates them.
func warnHostUnreachable(diags *diag.Diagnostics, host, what string, err error) {
	diags.AddWarning("Host Unreachable",
		fmt.Sprintf("Host %s did not answer, so %s was not refreshed; its last known state is kept. "+
			"Changes to it will fail until the host is back.\n\n%s", host, what, err))
}

// warnHostUnhealthy is the warning for a host whose inventory could not be
// read or that reports itself unhealthy.
func warnHostUnhealthy(diags *diag.Diagnostics, inv api.Host, consequence string) {
	diags.AddWarning("Host Unhealthy", fmt.Sprintf("Host %s is unhealthy (%s); %s", inv.Name, inv.Message, consequence))
}
