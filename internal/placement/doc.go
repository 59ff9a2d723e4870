// Package placement decides which KVM host each requested VM goes on. It is
// the pure engine behind the kvm_cluster_placement resource: no Terraform, no
// HTTP, no clock, no randomness, so a plan computed in CI is reproducible and
// the same inputs always give the same assignments.
//
// # Capacity model
//
// A host's capacity is floor(CPUs × CPUOvercommit) vCPU and
// floor(MemoryMiB × MemoryOvercommit) MiB (an overcommit of 0 means 1, the
// hosts' own default). Its free capacity is that minus AllocatedVCPU /
// AllocatedMemoryMiB (what the host reports as already admitted) minus
// whatever this computation has placed on it so far.
//
// A key whose VM already runs on its previous host is already included in
// that host's Allocated* numbers. The caller says so through
// Input.Existing[key], giving the resources the running VM holds. Such a key,
// if kept on its previous host, is charged only its growth
// (max(0, requested − existing) per dimension), so it is not counted twice.
// A key without an Existing entry is charged in full wherever it lands. When
// an existing VM is moved away, its resources are NOT credited back to the old
// host in this computation: until the move is applied they are still held
// there (live migration needs both ends), so the plan stays conservative.
// Callers that do not know a running VM's size should pass its requested size.
//
// # Stability
//
// Previous holds the assignments of the last plan. A key keeps its previous
// host while that host is listed, healthy, carries the key's host_labels, and
// the kept keys together still respect affinity, anti-affinity and capacity.
// New keys never displace kept ones; only new and displaced keys are placed.
// When kept keys conflict among themselves the rules are, in order:
//
//  1. Affinity coherence: if kept members of an affinity group sit on several
//     hosts, the host with the most members wins (then the one with more
//     existing VMs, then the smaller name); members elsewhere are displaced.
//  2. Anti-affinity: if two kept members of an anti-affinity group share a
//     host, the one with an existing VM wins, then the smaller key.
//  3. Capacity, per host: existing VMs first, then in key order; a key (or an
//     affinity group's kept members, as a unit) whose charge does not fit is
//     displaced. A zero charge always fits, so a running VM that did not grow
//     is never displaced just because its host is over-committed.
//
// When rule 2 or 3 displaces a member of an affinity group, all of that
// group's kept members are displaced with it and the group is re-placed as a
// unit, so a group is never split by the engine.
//
// # Affinity groups
//
// Members of an affinity group are placed together as one unit whose size is
// the sum of its members and whose host_labels are the union of theirs. If
// some members are kept, the host they are on anchors the group: the other
// members (new or displaced) must join that host, and if they cannot the plan
// fails with an error naming the anchor. Kept members are never moved to make
// room for new ones, because "new keys never displace old ones" is the
// guarantee users rely on to read a plan.
//
// # Placing new and displaced keys
//
// Units (single keys, or affinity groups) are placed anchored ones first, then
// largest first by dominant share of the largest host's capacity, then by key:
// best-fit-decreasing for "pack" and worst-fit-decreasing for "spread".
//
//   - spread picks the host whose smaller of (free vCPU fraction, free memory
//     fraction) after placement is largest;
//   - pack picks the host whose sum of those fractions after placement is
//     smallest, i.e. the fullest host that still fits.
//
// Remaining ties are broken by the other measure, then by host name. A unit
// that fits nowhere yields an *UnsatisfiableError naming its keys, the failing
// constraint and the numbers behind it; the remaining units are still tried,
// so one error reports every unsatisfiable key at once.
//
// # Maintenance
//
// A host in maintenance (Host.Maintenance) is treated like an unhealthy one:
// every key on it is displaced (ReasonMaintenance) and placed elsewhere, and
// no key is placed on it. Leaving maintenance moves nothing back; only
// rebalancing does, when asked to.
//
// # Rebalancing
//
// With Input.Rebalance (MaxMoves > 0), once every key is placed, kept keys
// move to even out memory use. The measure is the imbalance: over the
// eligible hosts (healthy, not in maintenance, with memory capacity), the
// largest allocated-memory share (MiB held after apply / memory capacity)
// minus the smallest. After apply a moved VM is no longer held by its old
// host, so this measure credits the source with what the key holds there
// (the larger of its existing and requested memory), while capacity checks
// stay conservative as above.
//
// While the imbalance exceeds Threshold and fewer than MaxMoves keys have
// moved, the move that yields the smallest imbalance is made (among equal
// ones, the smallest sum of squared shares: with several hosts equally full,
// a move off one of them leaves the imbalance as is but evens the load) —
// a single key,
// or a whole affinity group kept on one host (counting one move per
// member), to any eligible host that carries its host_labels, holds no
// member of its anti-affinity groups and has room for its full size. Ties
// go to the smaller key, then the smaller host name. A move is made only if
// it strictly reduces the imbalance or, failing that, the sum of squared
// shares, and each unit moves at most once per
// plan. The result is deterministic, and once the imbalance is at most
// Threshold a plan of the applied result proposes nothing. When this plan
// stopped above it (MaxMoves reached, or room still held by VMs that are
// moving away blocked a move), the next plan continues, again with at most
// MaxMoves moves; every plan strictly lowers the imbalance (or, at equal
// imbalance, the sum of squared shares), so repeated plans never flap and
// come to rest.
package placement
