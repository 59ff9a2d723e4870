package api

import "time"

// ReservationSpec is the body of PUT /v1/reservations/{vm}: room on the
// target host for a VM about to arrive by migration. The target admits it
// like a create (409 "full" with the numbers) and counts it until the VM is
// defined there, the reservation is released, or it expires.
type ReservationSpec struct {
	VCPU int64 `json:"vcpu"`
	// MemoryMiB is what the VM counts: max(memory_mib, max_memory_mib).
	MemoryMiB int64 `json:"memory_mib"`
	// TTLSec bounds the reservation's life in case nobody releases it
	// (0 or absent: DefaultReservationTTLSec; at most MaxReservationTTLSec).
	TTLSec int64 `json:"ttl_sec,omitempty"`
	// SourceHost is the host the VM comes from, for logs and listings.
	SourceHost string `json:"source_host,omitempty"`
	// SharedDisks are the VM's volumes on shared pools, which the target
	// opens in place. The target checks that it serves each as a shared
	// pool and sees the volume, and registers the secret of each encrypted
	// one (409 naming host and key when it lacks the key): QEMU opens the
	// disk there before anything else would.
	SharedDisks []ReservationDisk `json:"shared_disks,omitempty"`
}

// ReservationDisk names one volume of an arriving VM.
type ReservationDisk struct {
	Pool   string `json:"pool"`
	Volume string `json:"volume"`
}

// Reservation is one entry of a host's admission ledger.
type Reservation struct {
	ID string `json:"id"`
	VM string `json:"vm"`
	// Kind is "incoming" (a migration target's reservation), "create" or
	// "update" (a request in flight).
	Kind       string `json:"kind"`
	VCPU       int64  `json:"vcpu"`
	MemoryMiB  int64  `json:"memory_mib"`
	SourceHost string `json:"source_host,omitempty"`
	// ExpiresAt is absent for reservations of requests in flight.
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
}

// ReservationList is the body of GET /v1/reservations.
type ReservationList struct {
	Reservations []Reservation `json:"reservations"`
}

// Bounds of a reservation's ttl_sec.
const (
	DefaultReservationTTLSec = 15 * 60
	MaxReservationTTLSec     = 24 * 60 * 60
)

// ReservationTTL is the lifetime of a reservation asked for with ttl_sec:
// 0 means the default; anything outside 1..MaxReservationTTLSec is
// refused, checked before converting (see Seconds).
func ReservationTTL(ttlSec int64) (time.Duration, error) {
	if ttlSec == 0 {
		return DefaultReservationTTLSec * time.Second, nil
	}
	return Seconds("ttl_sec", ttlSec, 1, MaxReservationTTLSec)
}
