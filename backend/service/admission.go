package service

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// Reservation lifetimes for VMs arriving by migration.
const (
	DefaultReservationTTL = api.DefaultReservationTTLSec * time.Second
	MaxReservationTTL     = api.MaxReservationTTLSec * time.Second
)

// Kinds of reservation in the admission ledger.
const (
	reserveCreate   = "create"   // a PUT /vms until the domain is defined
	reserveUpdate   = "update"   // a PATCH /vms until the new size counts
	reserveIncoming = "incoming" // a PUT /reservations until released or expired
)

// reservation is room admitted for one VM that libvirt does not count yet:
// a domain about to be defined, a grow about to be applied, or a VM about
// to arrive by migration. want is the VM's whole size once the change is
// done, not a delta: while it is held the VM counts as
// max(what libvirt counts for it, want), so the moment the change becomes
// visible in libvirt nothing is counted twice, and nothing is counted zero
// times either.
type reservation struct {
	id      string
	vm      string
	kind    string
	want    Allocation
	source  string    // the host a migration comes from, for listing
	expires time.Time // zero: released by the request that made it
}

// admissionLedger is the host's ledger of reservations. Every admission check
// and every release happen under mu, together with the libvirt read the
// check is based on, so a check sees each admitted VM exactly once: either
// in libvirt, or in the ledger.
type admissionLedger struct {
	byID map[string]*reservation
}

// allocation is what the host has given away: libvirt's domains plus the
// ledger, each VM counted once at the larger of the two. Callers hold
// s.admission.
func (s *Service) allocationLocked(res Resources, now time.Time) (total, reserved Allocation, perVM map[string]Allocation) {
	for id, r := range s.ledger.byID {
		if !r.expires.IsZero() && now.After(r.expires) {
			s.log.Info("reservation expired", "vm", r.vm, "id", r.id, "kind", r.kind)
			delete(s.ledger.byID, id)
		}
	}
	total = Allocation{VCPU: res.AllocatedVCPU, MemoryMiB: res.AllocatedMemoryMiB}
	perVM = map[string]Allocation{}
	for _, r := range s.ledger.byID {
		cur, ok := perVM[r.vm]
		if !ok {
			cur = res.Domains[r.vm]
		}
		n := Allocation{VCPU: max(cur.VCPU, r.want.VCPU), MemoryMiB: max(cur.MemoryMiB, r.want.MemoryMiB)}
		reserved.VCPU += n.VCPU - cur.VCPU
		reserved.MemoryMiB += n.MemoryMiB - cur.MemoryMiB
		perVM[r.vm] = n
	}
	total.VCPU += reserved.VCPU
	total.MemoryMiB += reserved.MemoryMiB
	return total, reserved, perVM
}

// resources is libvirt's view of the host with the ledger's reservations
// added to the allocation, as the inventory reports it.
func (s *Service) resources(ctx context.Context) (Resources, error) {
	s.admission.Lock()
	defer s.admission.Unlock()
	res, err := s.hv.Resources(ctx)
	if err != nil {
		return res, err
	}
	total, _, _ := s.allocationLocked(res, time.Now())
	res.AllocatedVCPU, res.AllocatedMemoryMiB = total.VCPU, total.MemoryMiB
	return res, nil
}

// admit is the host's one capacity check: creates, grows and arriving
// migrations all pass through it. It checks that VM vm at size want stays
// within the overcommitted capacity and, in the same step, records a
// reservation for it that counts until release (or, with ttl > 0, until it
// expires). The caller releases it once libvirt counts the change.
func (s *Service) admit(ctx context.Context, vm, kind string, want Allocation, ttl time.Duration) (*reservation, error) {
	s.admission.Lock()
	defer s.admission.Unlock()
	res, err := s.hv.Resources(ctx)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	if _, exists := res.Domains[vm]; !exists && (kind == reserveCreate || kind == reserveIncoming) {
		// A retried create of a VM that is already here is not new.
		if err := s.refuseInMaintenance(vm); err != nil {
			return nil, err
		}
	}
	var replaced *reservation
	if kind == reserveIncoming {
		// A repeated reservation for the same VM replaces the earlier one.
		if replaced = s.incomingLocked(vm); replaced != nil {
			delete(s.ledger.byID, replaced.id)
		} else if _, exists := res.Domains[vm]; exists {
			return nil, conflict("VM %s already exists on host %s; there is nothing to reserve for it", vm, s.cfg.Name)
		}
	}
	total, reserved, perVM := s.allocationLocked(res, now)
	cur, ok := perVM[vm]
	if !ok {
		cur = res.Domains[vm]
	}
	add := Allocation{VCPU: max(want.VCPU-cur.VCPU, 0), MemoryMiB: max(want.MemoryMiB-cur.MemoryMiB, 0)}
	err = s.fits(vm, add, total, reserved, res)
	if err == nil && want.HugepageMiB > 0 {
		err = s.fitsHugepages(vm, want.HugepageMiB, res)
	}
	if err != nil {
		if replaced != nil {
			s.ledger.byID[replaced.id] = replaced
		}
		return nil, err
	}
	r := &reservation{id: "rsv-" + newID()[:16], vm: vm, kind: kind, want: want}
	if ttl > 0 {
		r.expires = now.Add(ttl)
	}
	if s.ledger.byID == nil {
		s.ledger.byID = map[string]*reservation{}
	}
	s.ledger.byID[r.id] = r
	return r, nil
}

// fits refuses add when it does not fit next to total, with the numbers.
func (s *Service) fits(vm string, add, total, reserved Allocation, res Resources) error {
	capVCPU := api.Capacity(res.CPUs, s.cfg.CPUOvercommit)
	capMem := api.Capacity(res.MemoryMiB, s.cfg.MemoryOvercommit)
	held := func(n int64, unit string) string {
		if n == 0 {
			return ""
		}
		return fmt.Sprintf(" incl. %d%s reserved for VMs being created, resized or migrated here", n, unit)
	}
	if add.VCPU > 0 && total.VCPU+add.VCPU > capVCPU {
		return api.Errorf(api.CodeFull, "host %s is full: VM %s needs %d vCPU but only %d of %d are free (%d CPUs × cpu_overcommit %g, %d allocated%s)",
			s.cfg.Name, vm, add.VCPU, max(capVCPU-total.VCPU, 0), capVCPU, res.CPUs, s.cfg.CPUOvercommit, total.VCPU, held(reserved.VCPU, ""))
	}
	if add.MemoryMiB > 0 && total.MemoryMiB+add.MemoryMiB > capMem {
		return api.Errorf(api.CodeFull, "host %s is full: VM %s needs %d MiB of memory but only %d of %d MiB are free (%d MiB × memory_overcommit %g, %d MiB allocated%s)",
			s.cfg.Name, vm, add.MemoryMiB, max(capMem-total.MemoryMiB, 0), capMem, res.MemoryMiB, s.cfg.MemoryOvercommit, total.MemoryMiB, held(reserved.MemoryMiB, " MiB"))
	}
	return nil
}

// release drops a reservation (nil is fine).
func (s *Service) release(r *reservation) {
	if r == nil {
		return
	}
	s.admission.Lock()
	delete(s.ledger.byID, r.id)
	s.admission.Unlock()
}

func (s *Service) incomingLocked(vm string) *reservation {
	for _, r := range s.ledger.byID {
		if r.vm == vm && r.kind == reserveIncoming {
			return r
		}
	}
	return nil
}

func apiReservation(r *reservation) api.Reservation {
	out := api.Reservation{ID: r.id, VM: r.vm, Kind: r.kind, VCPU: r.want.VCPU, MemoryMiB: r.want.MemoryMiB, SourceHost: r.source}
	if !r.expires.IsZero() {
		t := r.expires.UTC()
		out.ExpiresAt = &t
	}
	return out
}

// PutReservation admits a VM that is about to arrive by migration, exactly
// as a create would be admitted, and holds its room until it is released,
// expires, or (as a VM counts itself once libvirt defines it here) stops
// mattering. libvirt's peer-to-peer migration never passes through this
// kvm-hostd, so the migration's orchestrator reserves here first.
// Reserving again for the same VM replaces the reservation.
func (s *Service) PutReservation(ctx context.Context, vm string, spec api.ReservationSpec) (*api.Reservation, error) {
	if err := validateVMName(vm); err != nil {
		return nil, err
	}
	if spec.VCPU < 1 || spec.VCPU > 512 {
		return nil, invalid("vcpu %d is out of range (1..512)", spec.VCPU)
	}
	if spec.MemoryMiB < 16 || spec.MemoryMiB > 16<<20 {
		return nil, invalid("memory_mib %d is out of range (16..%d)", spec.MemoryMiB, 16<<20)
	}
	// Bounded before it becomes a duration: an unchecked huge ttl_sec
	// overflows into a reservation that holds the room for ever.
	ttl, err := api.ReservationTTL(spec.TTLSec)
	if err != nil {
		return nil, err
	}
	if spec.SourceHost != "" {
		if err := api.ValidateName("host", spec.SourceHost); err != nil {
			return nil, invalid("source_host: %s", err)
		}
	}
	if err := s.prepareSharedDisks(ctx, vm, spec.SharedDisks); err != nil {
		return nil, err
	}
	r, err := s.admit(ctx, vm, reserveIncoming, Allocation{VCPU: spec.VCPU, MemoryMiB: spec.MemoryMiB}, ttl)
	if err != nil {
		return nil, err
	}
	s.admission.Lock()
	r.source = spec.SourceHost
	out := apiReservation(r)
	s.admission.Unlock()
	s.log.Info("reserved room for an arriving VM", "vm", vm, "id", r.id, "vcpu", spec.VCPU, "memory_mib", spec.MemoryMiB,
		"from", spec.SourceHost, "expires", out.ExpiresAt)
	return &out, nil
}

// DeleteReservation releases the reservation for an arriving VM.
func (s *Service) DeleteReservation(_ context.Context, vm string) error {
	if err := validateVMName(vm); err != nil {
		return err
	}
	s.admission.Lock()
	defer s.admission.Unlock()
	r := s.incomingLocked(vm)
	if r == nil {
		return api.Errorf(api.CodeNotFound, "no reservation for VM %s on host %s", vm, s.cfg.Name)
	}
	delete(s.ledger.byID, r.id)
	s.log.Info("reservation released", "vm", vm, "id", r.id)
	return nil
}

// ListReservations lists the ledger: reservations for arriving VMs, and
// those of creates and resizes in flight.
func (s *Service) ListReservations(_ context.Context) []api.Reservation {
	s.admission.Lock()
	defer s.admission.Unlock()
	now := time.Now()
	out := []api.Reservation{}
	for _, r := range s.ledger.byID {
		if r.expires.IsZero() || !now.After(r.expires) {
			out = append(out, apiReservation(r))
		}
	}
	slices.SortFunc(out, func(a, b api.Reservation) int { return strings.Compare(a.VM+a.ID, b.VM+b.ID) })
	return out
}
