package client

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// Host returns the host's inventory.
func (c *Client) Host(ctx context.Context) (*api.Host, error) {
	var h api.Host
	_, err := c.do(ctx, http.MethodGet, "/host", nil, nil, &h)
	return &h, err
}

// SetMaintenance puts the host into maintenance or takes it out.
func (c *Client) SetMaintenance(ctx context.Context, m api.Maintenance) (*api.Maintenance, error) {
	var out api.Maintenance
	_, err := c.do(ctx, http.MethodPut, "/host/maintenance", nil, m, &out)
	return &out, err
}

// Volumes.

func volPath(pool, name string) string { return "/pools/" + esc(pool) + "/volumes/" + esc(name) }

// ListVolumes lists the volumes of a pool.
func (c *Client) ListVolumes(ctx context.Context, pool string) ([]api.Volume, error) {
	var l api.VolumeList
	_, err := c.do(ctx, http.MethodGet, "/pools/"+esc(pool)+"/volumes", nil, nil, &l)
	return l.Volumes, err
}

// GetVolume reads one volume, without used_by and children (cheap: the
// host looks at this volume only).
func (c *Client) GetVolume(ctx context.Context, pool, name string) (*api.Volume, error) {
	var v api.Volume
	_, err := c.do(ctx, http.MethodGet, volPath(pool, name), url.Values{"usage": {"false"}}, nil, &v)
	return &v, err
}

// GetVolumeUsage reads one volume with used_by (VMs attaching it) and
// children (volumes backed by it), which costs the host a scan.
func (c *Client) GetVolumeUsage(ctx context.Context, pool, name string) (*api.Volume, error) {
	var v api.Volume
	_, err := c.do(ctx, http.MethodGet, volPath(pool, name), nil, nil, &v)
	return &v, err
}

// PutVolume creates a volume (idempotent by name). When the volume is
// filled from a URL the host answers 202 with an operation, which PutVolume
// waits for before reading the volume back.
func (c *Client) PutVolume(ctx context.Context, pool, name string, spec api.VolumeSpec) (*api.Volume, error) {
	var v api.Volume
	if _, err := c.do(ctx, http.MethodPut, volPath(pool, name), nil, spec, &v); err != nil {
		return nil, err
	}
	if v.Operation != nil && v.Operation.State == api.OpRunning {
		if _, err := c.WaitOperation(ctx, v.Operation.ID); err != nil {
			return nil, err
		}
		return c.GetVolume(ctx, pool, name)
	}
	return &v, nil
}

// UpdateVolume grows a volume or changes its I/O limits.
func (c *Client) UpdateVolume(ctx context.Context, pool, name string, u api.VolumeUpdate) (*api.Volume, error) {
	var v api.Volume
	_, err := c.do(ctx, http.MethodPatch, volPath(pool, name), nil, u, &v)
	return &v, err
}

// DeleteVolume deletes a volume; a volume in use is a 409.
func (c *Client) DeleteVolume(ctx context.Context, pool, name string) error {
	_, err := c.do(ctx, http.MethodDelete, volPath(pool, name), nil, nil, nil)
	return err
}

// ContentURL is the URL of a volume's content on this host (GET streams
// its bytes), for another host to copy it from.
func (c *Client) ContentURL(pool, name string) string {
	u := *c.base
	u.Path = "/" + api.Version + volPath(pool, name) + "/content"
	u.RawPath = ""
	return u.String()
}

// Token is the bearer token this client sends, so the provider can let
// another host read this host's volume content for a copy.
func (c *Client) Token() string { return c.token }

// CopyVolume makes this host create a volume and fill it from another
// host's content URL, then waits for the copy operation. A failed copy
// leaves no volume behind. The idempotency key makes the POST safe to retry.
func (c *Client) CopyVolume(ctx context.Context, pool, name string, req api.VolumeCopyRequest, idempotencyKey string) (*api.Operation, error) {
	var op api.Operation
	if _, err := c.do(WithIdempotencyKey(ctx, idempotencyKey), http.MethodPost, volPath(pool, name)+"/copy", nil, req, &op); err != nil {
		return nil, err
	}
	return c.WaitOperation(ctx, op.ID)
}

// VMs.

func vmPath(name string) string { return "/vms/" + esc(name) }

// ListVMs lists the host's domains.
func (c *Client) ListVMs(ctx context.Context) ([]api.VM, error) {
	var l api.VMList
	_, err := c.do(ctx, http.MethodGet, "/vms", nil, nil, &l)
	return l.VMs, err
}

// GetVM reads one domain.
func (c *Client) GetVM(ctx context.Context, name string) (*api.VM, error) {
	var v api.VM
	_, err := c.do(ctx, http.MethodGet, vmPath(name), nil, nil, &v)
	return &v, err
}

// VMConsole reads the tail of a VM's serial log, at most maxBytes of it
// (0: the host's default, 64 KiB), escaped for display: the guest wrote
// it, so its control characters are never handed on raw (see
// api.EscapeTerminal). A host that does not escape it is escaped here.
func (c *Client) VMConsole(ctx context.Context, name string, maxBytes int64) (*api.Console, error) {
	q := url.Values{"escape": {"true"}}
	if maxBytes > 0 {
		q.Set("bytes", strconv.FormatInt(maxBytes, 10))
	}
	var v api.Console
	_, err := c.do(ctx, http.MethodGet, vmPath(name)+"/console", q, nil, &v)
	if err == nil && !v.Escaped {
		v.Text, v.Escaped = api.EscapeTerminal([]byte(v.Text)), true
	}
	return &v, err
}

// PutVM creates a domain (idempotent by name; a different spec is a 409).
func (c *Client) PutVM(ctx context.Context, name string, spec api.VMSpec) (*api.VM, error) {
	var v api.VM
	_, err := c.do(ctx, http.MethodPut, vmPath(name), nil, spec, &v)
	return &v, err
}

// UpdateVM converges a domain to spec, live where possible.
func (c *Client) UpdateVM(ctx context.Context, name string, spec api.VMSpec) (*api.VM, error) {
	var v api.VM
	// The full desired spec makes a repeated PATCH converge to the same
	// result, so it is safe to retry.
	ctx = WithIdempotencyKey(ctx, "patch-"+NewRequestID())
	_, err := c.do(ctx, http.MethodPatch, vmPath(name), nil, spec, &v)
	return &v, err
}

// DeleteVM stops (gracefully, up to shutdownTimeout) and undefines a domain.
func (c *Client) DeleteVM(ctx context.Context, name string, shutdownTimeout time.Duration) error {
	q := url.Values{"shutdown_timeout": {strconv.Itoa(int(shutdownTimeout / time.Second))}}
	_, err := c.do(ctx, http.MethodDelete, vmPath(name), q, nil, nil)
	return err
}

// MigrateVM starts a migration and waits for it.
func (c *Client) MigrateVM(ctx context.Context, name string, req api.MigrateRequest, idempotencyKey string) (*api.Operation, error) {
	var op api.Operation
	if _, err := c.do(WithIdempotencyKey(ctx, idempotencyKey), http.MethodPost, vmPath(name)+"/migrate", nil, req, &op); err != nil {
		return nil, err
	}
	return c.WaitOperation(ctx, op.ID)
}

// Snapshots.

func snapPath(vm, name string) string { return vmPath(vm) + "/snapshots/" + esc(name) }

// ListSnapshots lists the snapshots of a domain.
func (c *Client) ListSnapshots(ctx context.Context, vm string) ([]api.Snapshot, error) {
	var l api.SnapshotList
	_, err := c.do(ctx, http.MethodGet, vmPath(vm)+"/snapshots", nil, nil, &l)
	return l.Snapshots, err
}

// GetSnapshot reads one snapshot.
func (c *Client) GetSnapshot(ctx context.Context, vm, name string) (*api.Snapshot, error) {
	var s api.Snapshot
	_, err := c.do(ctx, http.MethodGet, snapPath(vm, name), nil, nil, &s)
	return &s, err
}

// PutSnapshot creates a snapshot (idempotent by name).
func (c *Client) PutSnapshot(ctx context.Context, vm, name string, spec api.SnapshotSpec) (*api.Snapshot, error) {
	var s api.Snapshot
	_, err := c.do(ctx, http.MethodPut, snapPath(vm, name), nil, spec, &s)
	return &s, err
}

// RevertSnapshot reverts a domain to a snapshot. Reverting twice to the same
// snapshot has the same result, so the request is retryable.
func (c *Client) RevertSnapshot(ctx context.Context, vm, name string) (*api.Snapshot, error) {
	var s api.Snapshot
	ctx = WithIdempotencyKey(ctx, "revert-"+NewRequestID())
	_, err := c.do(ctx, http.MethodPost, snapPath(vm, name)+"/revert", nil, nil, &s)
	return &s, err
}

// PowerVM starts, stops or reboots a VM (state: one of api.PowerStates).
// Starting and stopping are idempotent and retried like other writes; a
// reboot is not retried, since a retry after a lost response would reboot
// the guest a second time.
func (c *Client) PowerVM(ctx context.Context, name, state string) (*api.VM, error) {
	var vm api.VM
	if state != api.PowerRebooted {
		ctx = WithIdempotencyKey(ctx, "power-"+NewRequestID())
	}
	_, err := c.do(ctx, http.MethodPost, vmPath(name)+"/power", nil, api.PowerRequest{State: state}, &vm)
	return &vm, err
}

// DeleteSnapshot deletes a snapshot.
func (c *Client) DeleteSnapshot(ctx context.Context, vm, name string) error {
	_, err := c.do(ctx, http.MethodDelete, snapPath(vm, name), nil, nil, nil)
	return err
}

// Networks.

func netPath(name string) string { return "/networks/" + esc(name) }

// ListNetworks lists the networks realized on the host.
func (c *Client) ListNetworks(ctx context.Context) ([]api.Network, error) {
	var l api.NetworkList
	_, err := c.do(ctx, http.MethodGet, "/networks", nil, nil, &l)
	return l.Networks, err
}

// GetNetwork reads one network.
func (c *Client) GetNetwork(ctx context.Context, name string) (*api.Network, error) {
	var n api.Network
	_, err := c.do(ctx, http.MethodGet, netPath(name), nil, nil, &n)
	return &n, err
}

// PutNetwork creates or converges a network (idempotent).
func (c *Client) PutNetwork(ctx context.Context, name string, spec api.NetworkSpec) (*api.Network, error) {
	var n api.Network
	_, err := c.do(ctx, http.MethodPut, netPath(name), nil, spec, &n)
	return &n, err
}

// DeleteNetwork deletes a network; one still used by VM ports is a 409.
func (c *Client) DeleteNetwork(ctx context.Context, name string) error {
	_, err := c.do(ctx, http.MethodDelete, netPath(name), nil, nil, nil)
	return err
}

// Operations.

// GetOperation reads a long-running operation.
func (c *Client) GetOperation(ctx context.Context, id string) (*api.Operation, error) {
	var op api.Operation
	_, err := c.do(ctx, http.MethodGet, "/operations/"+esc(id), nil, nil, &op)
	return &op, err
}

// WaitOperation polls an operation until it ends or ctx is done. A failed
// operation returns its error.
func (c *Client) WaitOperation(ctx context.Context, id string) (*api.Operation, error) {
	delay := 100 * time.Millisecond
	for {
		op, err := c.GetOperation(ctx, id)
		if err != nil {
			return nil, err
		}
		switch op.State {
		case api.OpSucceeded:
			return op, nil
		case api.OpFailed:
			if op.Error != nil {
				return op, op.Error
			}
			return op, fmt.Errorf("operation %s (%s %s) failed: %s", op.ID, op.Kind, op.Target, op.Message)
		}
		select {
		case <-ctx.Done():
			return op, fmt.Errorf("waiting for operation %s (%s %s, %.0f%% done): %w", op.ID, op.Kind, op.Target, op.Progress*100, ctx.Err())
		case <-time.After(delay):
		}
		if delay < 2*time.Second {
			delay *= 2
		}
	}
}

// Reservations.

func reservationPath(vm string) string { return "/reservations/" + esc(vm) }

// PutReservation reserves room on this host for VM vm, about to arrive by
// migration: admitted like a create (a full host is a 409 "full" naming the
// numbers) and held until DeleteReservation or its TTL. A repeated PUT
// replaces the reservation, so it is safe to retry.
func (c *Client) PutReservation(ctx context.Context, vm string, spec api.ReservationSpec) (*api.Reservation, error) {
	var r api.Reservation
	_, err := c.do(ctx, http.MethodPut, reservationPath(vm), nil, spec, &r)
	return &r, err
}

// DeleteReservation releases the reservation for VM vm (404 when there is
// none, e.g. it expired).
func (c *Client) DeleteReservation(ctx context.Context, vm string) error {
	_, err := c.do(ctx, http.MethodDelete, reservationPath(vm), nil, nil, nil)
	return err
}

// ListReservations lists the host's admission ledger.
func (c *Client) ListReservations(ctx context.Context) ([]api.Reservation, error) {
	var l api.ReservationList
	_, err := c.do(ctx, http.MethodGet, "/reservations", nil, nil, &l)
	return l.Reservations, err
}
