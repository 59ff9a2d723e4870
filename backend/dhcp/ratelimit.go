package dhcp

import (
	"sync"
	"time"
)

// logLimiter rate-limits log lines triggered by guest frames, so that a
// guest sending DHCP or ARP as fast as it can fills neither the disk nor
// the journal. Each key (the frame's source MAC) has a token bucket; on
// top of that one bucket bounds all keys together, because a guest can
// forge a new source MAC for every frame and each new key starts full.
// The number of keys is capped: past it an arbitrary key is forgotten,
// which at worst lets that key log a burst again, within the global bucket.
type logLimiter struct {
	mu      sync.Mutex
	perKey  bucketSpec
	all     bucket
	allSpec bucketSpec
	maxKeys int
	keys    map[string]*bucket
	now     func() time.Time
}

type bucketSpec struct {
	burst float64       // tokens a full bucket holds
	every time.Duration // one token comes back every this long
}

type bucket struct {
	tokens     float64
	last       time.Time
	suppressed int // lines refused since the last one allowed
}

// take refills b for the time since its last use and takes a token if
// there is one.
func (b *bucket) take(spec bucketSpec, now time.Time) bool {
	if b.last.IsZero() {
		b.tokens = spec.burst
	} else if d := now.Sub(b.last); d > 0 {
		b.tokens = min(spec.burst, b.tokens+float64(d)/float64(spec.every))
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

func newLogLimiter(perKey, all bucketSpec, maxKeys int) *logLimiter {
	return &logLimiter{perKey: perKey, allSpec: all, maxKeys: maxKeys, keys: map[string]*bucket{}, now: time.Now}
}

// allow reports whether a line for key may be logged now and, if so, how
// many lines for key were refused since the last one allowed (to be logged
// with it, so that suppression is visible).
func (l *logLimiter) allow(key string) (ok bool, suppressed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	b := l.keys[key]
	if b == nil {
		if len(l.keys) >= l.maxKeys {
			for k := range l.keys { // map order: an arbitrary victim
				delete(l.keys, k)
				break
			}
		}
		b = &bucket{}
		l.keys[key] = b
	}
	if !b.take(l.perKey, now) {
		b.suppressed++
		return false, 0
	}
	if !l.all.take(l.allSpec, now) {
		// Give the key's token back: it was the global budget that ran out.
		b.tokens++
		b.suppressed++
		return false, 0
	}
	suppressed, b.suppressed = b.suppressed, 0
	return true, suppressed
}

// Defaults for guest-triggered log lines: a guest's ordinary DHCP exchange
// (a handful of lines at boot, one per renewal) always gets through, a
// flood costs at most a line every few seconds per MAC and a few lines a
// second in all.
var (
	guestLogPerMAC = bucketSpec{burst: 10, every: 6 * time.Second}
	guestLogAll    = bucketSpec{burst: 50, every: 200 * time.Millisecond}
)

const guestLogMaxMACs = 4096
