package service

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strings"
	"sync"
	"time"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// operations tracks long-running work (downloads, copies, migrations).
// They live in memory. Work that fills a volume writes it under a
// temporary name and renames it only once it is complete, so a restart
// never leaves a volume that looks complete; the startup sweep deletes
// what such work left behind. An operation id carries the id of the
// process that started it, so a client polling an operation from before a
// restart is told it was lost (CodeOperationLost) rather than "not found".
type operations struct {
	mu  sync.Mutex
	ops map[string]*api.Operation
	// byTarget finds the running operation for an object so a retried
	// request joins it instead of starting a second one.
	byTarget map[string]string
	cancels  map[string]context.CancelFunc
	boot     string
	// base is cancelled when the host stops waiting for operations at
	// shutdown; every operation's context derives from it.
	base    context.Context
	stopAll context.CancelFunc
	closed  bool
	wg      sync.WaitGroup
	// ended holds a channel per running operation, closed once its state
	// is final (wait).
	ended map[string]chan struct{}
	// onDone, when set, is told how every operation ended (the audit
	// log records it: the request that started it only said "accepted").
	onDone func(api.Operation)
}

func newOperations() *operations {
	base, stop := context.WithCancel(context.Background())
	return &operations{ops: map[string]*api.Operation{}, byTarget: map[string]string{},
		cancels: map[string]context.CancelFunc{}, ended: map[string]chan struct{}{}, boot: newID()[:8], base: base, stopAll: stop}
}

func newID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// errShuttingDown refuses new operations once shutdown has begun.
var errShuttingDown = api.Errorf(api.CodeUnavailable, "kvm-hostd is shutting down; retry on its restart")

// start registers an operation and runs fn in the background. If an
// operation for target is still running it is returned instead and fn is
// not run. fn's context is cancelled by cancel(target) and at shutdown.
func (o *operations) start(kind, target string, fn func(ctx context.Context, progress func(float64)) error) *api.Operation {
	o.mu.Lock()
	if id, ok := o.byTarget[target]; ok {
		if op := o.ops[id]; op != nil && op.State == api.OpRunning {
			c := *op
			o.mu.Unlock()
			return &c
		}
	}
	op := &api.Operation{ID: o.boot + "-" + newID(), Kind: kind, Target: target, State: api.OpRunning, StartedAt: time.Now().UTC()}
	o.ops[op.ID] = op
	o.byTarget[target] = op.ID
	if o.closed {
		op.State, op.EndedAt = api.OpFailed, op.StartedAt
		op.Error, op.Message = toAPIError(errShuttingDown), errShuttingDown.Error()
		c := *op
		o.mu.Unlock()
		return &c
	}
	// Detached from the request: the client polls, and may go away.
	ctx, cancel := context.WithCancel(o.base)
	o.cancels[op.ID] = cancel
	o.ended[op.ID] = make(chan struct{})
	o.wg.Add(1)
	c := *op
	o.mu.Unlock()

	go func() {
		defer o.wg.Done()
		defer cancel()
		err := fn(ctx, func(p float64) {
			o.mu.Lock()
			op.Progress = p
			o.mu.Unlock()
		})
		o.mu.Lock()
		delete(o.cancels, op.ID)
		op.EndedAt = time.Now().UTC()
		if err != nil {
			op.State = api.OpFailed
			op.Error = toAPIError(err)
			op.Message = err.Error()
		} else {
			op.State, op.Progress = api.OpSucceeded, 1
		}
		done, final := o.onDone, *op
		if ch, ok := o.ended[op.ID]; ok {
			close(ch)
			delete(o.ended, op.ID)
		}
		o.mu.Unlock()
		if done != nil {
			done(final)
		}
	}()
	return &c
}

// wait blocks until operation id has ended, its state final (at once
// when it is not running), or until ctx is done.
func (o *operations) wait(ctx context.Context, id string) error {
	o.mu.Lock()
	ch, ok := o.ended[id]
	o.mu.Unlock()
	if !ok {
		return nil
	}
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// cancel cancels the running operation for target, if any, and returns it.
// The operation ends (failed) once its work has cleaned up.
func (o *operations) cancel(target string) *api.Operation {
	o.mu.Lock()
	defer o.mu.Unlock()
	id, ok := o.byTarget[target]
	if !ok {
		return nil
	}
	op := o.ops[id]
	cancel := o.cancels[id]
	if op == nil || op.State != api.OpRunning || cancel == nil {
		return nil
	}
	cancel()
	c := *op
	return &c
}

// drain refuses new operations, waits up to ctx for the running ones to
// end, then cancels those still running and waits up to grace for them to
// clean up. It returns how many were cancelled.
func (o *operations) drain(ctx context.Context, grace time.Duration) (cancelled int) {
	o.mu.Lock()
	o.closed = true
	o.mu.Unlock()
	done := make(chan struct{})
	go func() {
		o.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return 0
	case <-ctx.Done():
	}
	o.mu.Lock()
	cancelled = len(o.cancels)
	o.mu.Unlock()
	o.stopAll()
	select {
	case <-done:
	case <-time.After(grace):
	}
	return cancelled
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

// Operation returns a long-running operation by id. An id from before this
// process started is CodeOperationLost: the work it tracked was cancelled
// by the restart, and what it left unfinished was deleted at startup.
func (s *Service) Operation(_ context.Context, id string) (*api.Operation, error) {
	op, ok := s.ops.get(id)
	if !ok {
		if boot, _, found := strings.Cut(id, "-"); found && boot != s.ops.boot {
			return nil, api.Errorf(api.CodeOperationLost, "operation %q was lost: kvm-hostd on %s restarted while it ran, and its unfinished work was discarded; re-read the object and retry", id, s.cfg.Name)
		}
		return nil, api.Errorf(api.CodeNotFound, "operation %q not found", id)
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

// idempotencyCache remembers the result of a keyed POST for a while, so a
// retried request (its response was lost) gets the first result instead of
// starting the work again.
//
// A key is bound to the request it first came with (its fingerprint: what
// is done, to what, with which parameters): the same key on another request
// is a conflict, never the first request's result. Concurrent requests with
// one key run the work once (single flight). Keys are bounded in size and
// the cache in entries.
type idempotencyCache struct {
	mu  sync.Mutex
	ttl time.Duration
	max int
	m   map[string]*idemEntry
}

type idemEntry struct {
	at          time.Time
	fingerprint string
	done        chan struct{} // closed when value/err are set
	value       any
	err         error
}

// Bounds of the idempotency cache.
const (
	maxIdempotencyKeyLen  = 128
	maxIdempotencyEntries = 4096
)

func newIdempotencyCache(ttl time.Duration) *idempotencyCache {
	return &idempotencyCache{ttl: ttl, max: maxIdempotencyEntries, m: map[string]*idemEntry{}}
}

// idemFingerprint identifies a request for the idempotency cache.
func idemFingerprint(parts ...any) string {
	b, _ := json.Marshal(parts)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// Do runs fn once per key within the TTL and returns its result to every
// caller with the same key and fingerprint; callers that arrive while it
// runs wait for it. A failed run is not remembered, so a retry runs again.
func (c *idempotencyCache) Do(key, fingerprint string, fn func() (any, error)) (any, error) {
	if key == "" {
		return fn()
	}
	if len(key) > maxIdempotencyKeyLen || strings.ContainsFunc(key, func(r rune) bool { return r < 0x21 || r > 0x7e }) {
		return nil, invalid("%s must be 1-%d printable ASCII characters", api.HeaderIdempotencyKey, maxIdempotencyKeyLen)
	}
	c.mu.Lock()
	now := time.Now()
	c.evictLocked(now)
	if e, ok := c.m[key]; ok {
		c.mu.Unlock()
		if e.fingerprint != fingerprint {
			return nil, conflict("%s %q was already used for another request", api.HeaderIdempotencyKey, key)
		}
		<-e.done
		return e.value, e.err
	}
	e := &idemEntry{at: now, fingerprint: fingerprint, done: make(chan struct{})}
	c.m[key] = e
	c.mu.Unlock()

	e.value, e.err = fn()
	close(e.done)
	if e.err != nil {
		c.mu.Lock()
		if c.m[key] == e {
			delete(c.m, key)
		}
		c.mu.Unlock()
	}
	return e.value, e.err
}

// evictLocked drops expired entries and, when the cache is full, the
// oldest finished ones.
func (c *idempotencyCache) evictLocked(now time.Time) {
	var oldestKey string
	var oldest time.Time
	for k, e := range c.m {
		finished := isClosed(e.done)
		if finished && now.Sub(e.at) > c.ttl {
			delete(c.m, k)
			continue
		}
		if finished && (oldestKey == "" || e.at.Before(oldest)) {
			oldestKey, oldest = k, e.at
		}
	}
	for len(c.m) >= c.max && oldestKey != "" {
		delete(c.m, oldestKey)
		oldestKey = ""
		for k, e := range c.m {
			if isClosed(e.done) && (oldestKey == "" || e.at.Before(oldest)) {
				oldestKey, oldest = k, e.at
			}
		}
	}
}

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
