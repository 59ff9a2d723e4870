package service

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"sync"
	"time"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// operations tracks long-running work (downloads, migrations). They live in
// memory: after a restart the objects they produced are read from libvirt,
// and a client polling a vanished operation gets 404 and re-reads the object.
type operations struct {
	mu  sync.Mutex
	ops map[string]*api.Operation
	// byTarget finds the running operation for an object so a retried
	// request joins it instead of starting a second one.
	byTarget map[string]string
}

func newOperations() *operations {
	return &operations{ops: map[string]*api.Operation{}, byTarget: map[string]string{}}
}

func newID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// start registers an operation and runs fn in the background. If an
// operation for target is still running it is returned instead and fn is
// not run.
func (o *operations) start(kind, target string, fn func(ctx context.Context, progress func(float64)) error) *api.Operation {
	o.mu.Lock()
	if id, ok := o.byTarget[target]; ok {
		if op := o.ops[id]; op != nil && op.State == api.OpRunning {
			c := *op
			o.mu.Unlock()
			return &c
		}
	}
	op := &api.Operation{ID: newID(), Kind: kind, Target: target, State: api.OpRunning, StartedAt: time.Now().UTC()}
	o.ops[op.ID] = op
	o.byTarget[target] = op.ID
	c := *op
	o.mu.Unlock()

	go func() {
		// Detached from the request: the client polls, and may go away.
		err := fn(context.Background(), func(p float64) {
			o.mu.Lock()
			op.Progress = p
			o.mu.Unlock()
		})
		o.mu.Lock()
		defer o.mu.Unlock()
		op.EndedAt = time.Now().UTC()
		if err != nil {
			op.State = api.OpFailed
			op.Error = toAPIError(err)
			op.Message = err.Error()
			return
		}
		op.State, op.Progress = api.OpSucceeded, 1
	}()
	return &c
}

// running returns the running operation for target, if any.
func (o *operations) running(target string) *api.Operation {
	if op := o.last(target); op != nil && op.State == api.OpRunning {
		return op
	}
	return nil
}

// last returns the most recent operation for target, if any.
func (o *operations) last(target string) *api.Operation {
	o.mu.Lock()
	defer o.mu.Unlock()
	if id, ok := o.byTarget[target]; ok {
		if op := o.ops[id]; op != nil {
			c := *op
			return &c
		}
	}
	return nil
}

func (o *operations) get(id string) (*api.Operation, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	op, ok := o.ops[id]
	if !ok {
		return nil, false
	}
	c := *op
	return &c, true
}

// Operation returns a long-running operation by id.
func (s *Service) Operation(_ context.Context, id string) (*api.Operation, error) {
	op, ok := s.ops.get(id)
	if !ok {
		return nil, api.Errorf(api.CodeNotFound, "operation %q not found (operations are kept in memory; re-read the object)", id)
	}
	return op, nil
}

// toAPIError keeps a driver's *api.Error and wraps anything else as internal.
func toAPIError(err error) *api.Error {
	if e, ok := asAPIError(err); ok {
		return e
	}
	return &api.Error{Code: api.CodeInternal, Message: err.Error()}
}

// idempotencyCache remembers the result of a keyed POST for a while.
type idempotencyCache struct {
	mu  sync.Mutex
	ttl time.Duration
	m   map[string]idemEntry
}

type idemEntry struct {
	at    time.Time
	value any
}

func newIdempotencyCache(ttl time.Duration) *idempotencyCache {
	return &idempotencyCache{ttl: ttl, m: map[string]idemEntry{}}
}

// Do runs fn once per key within the TTL and returns the first result to
// every caller with the same key.
func (c *idempotencyCache) Do(key string, fn func() (any, error)) (any, error) {
	if key == "" {
		return fn()
	}
	c.mu.Lock()
	now := time.Now()
	for k, e := range c.m {
		if now.Sub(e.at) > c.ttl {
			delete(c.m, k)
		}
	}
	if e, ok := c.m[key]; ok {
		c.mu.Unlock()
		return e.value, nil
	}
	c.mu.Unlock()
	v, err := fn()
	if err == nil {
		c.mu.Lock()
		c.m[key] = idemEntry{at: now, value: v}
		c.mu.Unlock()
	}
	return v, err
}
