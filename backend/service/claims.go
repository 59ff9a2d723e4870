package service

import (
	"context"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// The lock discipline for volumes, one for every path:
//
//   - s.lockPool(pool) serialises what depends on the pool's listing
//     (creating a volume, a clone on its base, deleting one that must have
//     no clones). It is only held for short steps, and always before any
//     volume claim.
//   - Every path that writes, resizes, deletes, attaches, downloads into,
//     copies into or reads out a volume claims it: exclusively, or shared
//     for reading its content. A request that finds the volume claimed
//     waits only briefly (claimGrace), then gets a 409 naming what holds
//     it (a download of hours must not hold a delete, nor the pool lock
//     behind it, hanging).
//     The background half of a download or copy, which the request already
//     registered as a running operation, waits for its claim instead
//     (every request refuses a volume with a running operation, so it only
//     ever waits for a refusal to finish).
type volumeClaims struct {
	mu sync.Mutex
	m  map[string]*volumeClaim
}

type volumeClaim struct {
	holder  string         // the exclusive holder, "" when shared
	readers map[string]int // shared holders
	freed   chan struct{}  // closed when the last holder lets go
}

func (c *volumeClaim) String() string {
	if c.holder != "" {
		return c.holder
	}
	names := make([]string, 0, len(c.readers))
	for r := range c.readers {
		names = append(names, r)
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

func (s *Service) lockPool(pool string) func() { return s.locks.Lock("pool/" + pool) }

// claimGrace is how long a request waits for a volume's claim before it
// answers 409: long enough for a short step (a define, a resize, the tail
// of a content read whose last bytes the reader already has) to finish,
// short enough never to hang behind a transfer.
const claimGrace = 2 * time.Second

// lockVolume claims pool/name exclusively for purpose (e.g. "being
// resized"), or returns a 409 naming what holds it.
func (s *Service) lockVolume(pool, name, purpose string) (func(), error) {
	return s.claims.acquire(context.Background(), pool, name, purpose, false, claimGrace)
}

// shareVolume claims pool/name for reading its content, alongside other
// readers; a writer's claim makes it a 409.
func (s *Service) shareVolume(pool, name, purpose string) (func(), error) {
	return s.claims.acquire(context.Background(), pool, name, purpose, true, claimGrace)
}

// waitVolume claims pool/name exclusively, waiting for other holders as
// long as ctx lets it, for the background half of an operation that owns
// the volume.
func (s *Service) waitVolume(ctx context.Context, pool, name, purpose string) (func(), error) {
	return s.claims.acquire(ctx, pool, name, purpose, false, 0)
}

// acquire takes the claim, waiting up to grace for the holders (without
// limit when grace is 0).
func (c *volumeClaims) acquire(ctx context.Context, pool, name, purpose string, shared bool, grace time.Duration) (func(), error) {
	key := pool + "/" + name
	var timeout <-chan time.Time
	if grace > 0 {
		t := time.NewTimer(grace)
		defer t.Stop()
		timeout = t.C
	}
	for {
		c.mu.Lock()
		if c.m == nil {
			c.m = map[string]*volumeClaim{}
		}
		e := c.m[key]
		switch {
		case e == nil:
			e = &volumeClaim{readers: map[string]int{}, freed: make(chan struct{})}
			c.m[key] = e
			fallthrough
		case shared && e.holder == "" || e.holder == "" && len(e.readers) == 0:
			if shared {
				e.readers[purpose]++
			} else {
				e.holder = purpose
			}
			c.mu.Unlock()
			var once sync.Once
			return func() { once.Do(func() { c.drop(key, e, purpose, shared) }) }, nil
		}
		freed := e.freed
		c.mu.Unlock()
		select {
		case <-freed:
		case <-timeout:
			c.mu.Lock()
			held := "in use"
			if e := c.m[key]; e != nil {
				held = e.String()
			}
			c.mu.Unlock()
			return nil, conflict("volume %s is busy: it is %s", key, held)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (c *volumeClaims) drop(key string, e *volumeClaim, purpose string, shared bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if shared {
		if e.readers[purpose]--; e.readers[purpose] == 0 {
			delete(e.readers, purpose)
		}
	} else {
		e.holder = ""
	}
	if e.holder == "" && len(e.readers) == 0 {
		delete(c.m, key)
		close(e.freed)
	}
}

// lockVolumes claims several volumes exclusively, all or none, in a fixed
// order so that two requests never wait for each other.
func (s *Service) lockVolumes(keys [][2]string, purpose string) (func(), error) {
	keys = slices.Clone(keys)
	slices.SortFunc(keys, func(a, b [2]string) int { return strings.Compare(a[0]+"/"+a[1], b[0]+"/"+b[1]) })
	var held []func()
	unlock := func() {
		for _, u := range held {
			u()
		}
	}
	for _, k := range keys {
		u, err := s.lockVolume(k[0], k[1], purpose)
		if err != nil {
			unlock()
			return nil, err
		}
		held = append(held, u)
	}
	return unlock, nil
}

// claimBase claims the base of a new linked clone (shared: several clones
// of one base may be created at once) and checks that it exists and that
// no VM attaches it: a guest writing to a base corrupts its clones.
func (s *Service) claimBase(ctx context.Context, pool, base, clone string) (func(), error) {
	unclaim, err := s.shareVolume(pool, base, "being cloned")
	if err != nil {
		return nil, err
	}
	v, err := s.hv.GetVolume(ctx, pool, base)
	if err == nil {
		var users map[string][]string
		if users, err = s.hv.DiskUsers(ctx); err == nil && len(users[v.Path]) > 0 {
			err = conflict("base volume %s/%s is attached to VM(s) %s; a linked clone %s of it would be corrupted by their writes",
				pool, base, strings.Join(users[v.Path], ", "), clone)
		}
	} else if api.IsNotFound(err) {
		err = api.Errorf(api.CodeNotFound, "base volume %s/%s not found", pool, base)
	}
	if err != nil {
		unclaim()
		return nil, err
	}
	return unclaim, nil
}
