package vswitch

import (
	"context"
	"fmt"

	"github.com/ovn-kubernetes/libovsdb/model"
	"github.com/ovn-kubernetes/libovsdb/ovsdb"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// txn accumulates the operations of one call's transaction.
type txn struct {
	s   *OVS
	ops []ovsdb.Operation
	err error
	n   int // named-uuid counter
	// deleted holds the uuids of rows this transaction already deletes, so
	// none is deleted twice (the embedded server mishandles that).
	deleted map[string]bool
}

// del queues the deletion of one row, once.
func (t *txn) del(uuid string, m model.Model) {
	if t.deleted[uuid] {
		return
	}
	if t.deleted == nil {
		t.deleted = map[string]bool{}
	}
	t.deleted[uuid] = true
	t.add(t.s.client.Where(m).Delete())
}

func (t *txn) add(ops []ovsdb.Operation, err error) {
	if t.err == nil && err != nil {
		t.err = err
	}
	t.ops = append(t.ops, ops...)
}

func (t *txn) name(prefix string) string {
	t.n++
	return fmt.Sprintf("%s%d", prefix, t.n)
}

// insertPort queues a Port with one Interface and returns the port's named
// uuid, for the caller to reference from a bridge. Owned rows left behind
// under the same name (unreferenced, e.g. in the embedded server which
// does no garbage collection) are deleted first so the name index holds.
func (t *txn) insertPort(ctx context.Context, p Port, i Interface) string {
	t.dropOrphans(ctx, p.Name)
	i.UUID = t.name("iface")
	p.UUID = t.name("port")
	p.Interfaces = []string{i.UUID}
	t.add(t.s.client.Create(&i))
	t.add(t.s.client.Create(&p))
	return p.UUID
}

func (t *txn) dropOrphans(ctx context.Context, name string) {
	p := &Port{Name: name}
	if err := t.s.client.Get(ctx, p); err == nil {
		if !owned(p.ExternalIDs) {
			t.add(nil, api.Errorf(api.CodeConflict, "port %s exists and is not managed by kvm-hostd", name))
			return
		}
		t.del(p.UUID, &Port{UUID: p.UUID})
		for _, iu := range p.Interfaces {
			t.del(iu, &Interface{UUID: iu})
		}
		return
	}
	i := &Interface{Name: name}
	if err := t.s.client.Get(ctx, i); err == nil {
		if !owned(i.ExternalIDs) {
			t.add(nil, api.Errorf(api.CodeConflict, "interface %s exists and is not managed by kvm-hostd", name))
			return
		}
		t.del(i.UUID, &Interface{UUID: i.UUID})
	}
}

// deletePort queues deletion of a port row and its interfaces; the caller
// removes the reference from the bridge.
func (t *txn) deletePort(p *portState) {
	t.del(p.port.UUID, &Port{UUID: p.port.UUID})
	for _, iu := range p.port.Interfaces {
		t.del(iu, &Interface{UUID: iu})
	}
}

// bridgePorts queues one mutation of a bridge's port set.
func (t *txn) bridgePorts(br *Bridge, add, del []string) {
	b := &Bridge{UUID: br.UUID}
	var muts []model.Mutation
	if len(del) > 0 {
		muts = append(muts, model.Mutation{Field: &b.Ports, Mutator: ovsdb.MutateOperationDelete, Value: del})
	}
	if len(add) > 0 {
		muts = append(muts, model.Mutation{Field: &b.Ports, Mutator: ovsdb.MutateOperationInsert, Value: add})
	}
	if len(muts) > 0 {
		t.add(t.s.client.Where(b).Mutate(b, muts...))
	}
}

func (t *txn) commit(ctx context.Context) ([]ovsdb.OperationResult, error) {
	if t.err != nil {
		return nil, t.err
	}
	return t.s.transact(ctx, t.ops)
}

func intPtr(v int64) *int {
	if v <= 0 {
		return nil
	}
	i := int(v)
	return &i
}

func eqIntPtr(a, b *int) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}
