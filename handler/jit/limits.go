package jit

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"
)

// ETOOMANY is the code of a refusal by a limit: the caller asked for more
// than one principal may. RetryAfter tells when asking again can succeed.
const ETOOMANY = "too_many"

// Limits bound what one principal may ask of the service, so that one
// requester, by mistake or on purpose, cannot fill the store or the memory
// of the instances that serve everyone else.
type Limits struct {
	// MaxOpenRequests bounds a principal's open (Active) plus Pending
	// requests; DefaultMaxOpenRequests when zero, none when negative (the
	// store is then not read to count them). It is counted in the
	// store, so it holds across instances.
	MaxOpenRequests int
	// WritesPerMinute is the sustained rate of changes (initiate, extend,
	// revoke, approve, deny, policy writes) one principal may make on one
	// instance, WriteBurst at once; DefaultWritesPerMinute and
	// DefaultWriteBurst when zero. A negative rate turns the limit off.
	// The buckets are kept in the instance's memory: with N instances
	// serving, a principal may make up to N times as many.
	WritesPerMinute float64
	WriteBurst      int
}

// Default limits.
const (
	DefaultMaxOpenRequests = 20
	DefaultWritesPerMinute = 60
	DefaultWriteBurst      = 20
)

// maxWriteBuckets bounds the principals whose write rate an instance keeps.
const maxWriteBuckets = 10000

func (l Limits) maxOpen() int       { return cmp.Or(l.MaxOpenRequests, DefaultMaxOpenRequests) }
func (l Limits) burst() int         { return cmp.Or(l.WriteBurst, DefaultWriteBurst) }
func (l Limits) perMinute() float64 { return cmp.Or(l.WritesPerMinute, DefaultWritesPerMinute) }

// retryAfter is the cause of an ETOOMANY error: how long to wait.
type retryAfter time.Duration

func (r retryAfter) Error() string { return "retry after " + time.Duration(r).String() }

// RetryAfter reports how long the caller of a refused ask should wait
// before asking again, for errors of code ETOOMANY.
func RetryAfter(err error) (time.Duration, bool) {
	var r retryAfter
	if errors.As(err, &r) {
		return time.Duration(r), true
	}
	return 0, false
}

func tooMany(wait time.Duration, format string, args ...any) *Error {
	return &Error{Code: ETOOMANY, Message: fmt.Sprintf(format, args...), Err: retryAfter(max(wait, time.Second))}
}

// AllowWrite takes one change from p's budget on this instance, or refuses
// it with ETOOMANY once p has spent it. Front doors call it before every
// change a caller asks for.
func (s *API) AllowWrite(p Principal) error {
	l := s.cfg.Limits
	if p.ID == "" || l.perMinute() < 0 {
		return nil
	}
	wait, ok := s.writes.take(p.ID, s.now(), l.perMinute()/60, l.burst())
	if ok {
		return nil
	}
	return tooMany(wait, "too many changes from %s: at most %d at once and %g a minute; try again in %s",
		p.ID, l.burst(), l.perMinute(), roundUp(wait))
}

// checkOpenRequests refuses a new request for subject when they already
// have the most open and pending requests one principal may have. It reads
// at most MaxOpenRequests+1 of their requests from the store, by their
// status, so it holds across instances. On this instance it holds under
// concurrency too, without making one person's asks wait for each other:
// the asks admitted and not yet stored are counted with the store's, and
// so are the ones stored since the count was read (which it may or may not
// hold: near the limit an ask may be refused that would just fit, never
// the other way). The caller calls release once the new request is stored
// or has failed. Asks made at the same moment on several instances may
// pass it together, one per instance at most.
func (s *API) checkOpenRequests(ctx context.Context, subject Principal) (release func(), err error) {
	if s.cfg.Limits.MaxOpenRequests < 0 {
		return func() {}, nil
	}
	since := s.asking.begin(subject.ID)
	n, next, err := s.countOpenRequests(ctx, subject)
	if err != nil {
		s.asking.done(subject.ID)
		return nil, err
	}
	limit := s.cfg.Limits.maxOpen()
	release, total, ok := s.asking.admit(subject.ID, since, n, limit)
	if ok {
		return release, nil
	}
	s.cfg.Log.Info().Str("requestor", subject.ID).Int("open", total).Msg("request refused: too many open requests")
	return nil, tooMany(next, "%s has %d open or pending requests, the most one person may have: revoke one or wait until one ends or expires (the next in %s)",
		subject.ID, min(total, limit), roundUp(next))
}

// countOpenRequests counts subject's open and pending requests in the
// store, and says when the first of them stops counting.
func (s *API) countOpenRequests(ctx context.Context, subject Principal) (int, time.Duration, error) {
	limit := s.cfg.Limits.maxOpen()
	live, err := s.store.ListRequests(ctx, RequestFilter{Requestor: subject.ID,
		Statuses: []string{RequestActive, RequestPending}, Limit: limit + 1})
	if err != nil {
		return 0, 0, fmt.Errorf("counting open requests: %w", err)
	}
	now := s.now()
	n, next := 0, time.Duration(math.MaxInt64)
	for _, r := range live {
		until, open := openUntil(r, now)
		if !open {
			continue
		}
		n++
		next = min(next, until.Sub(now))
	}
	if n == 0 {
		next = time.Second // only asks in flight: they are stored within a second
	}
	return n, next, nil
}

// openUntil reports whether r still counts as open at now (pending, or a
// grant not yet ended), and when it stops counting.
func openUntil(r Request, now time.Time) (time.Time, bool) {
	if r.Status == RequestPending {
		if r.Approval != nil && r.Approval.PendingUntil.After(now) {
			return r.Approval.PendingUntil, true
		}
		return now, r.Approval == nil
	}
	var until time.Time
	for i := range r.Grants {
		if g := &r.Grants[i]; !g.Ended(now) && (until.IsZero() || g.End.Before(until)) {
			until = g.End
		}
	}
	return until, !until.IsZero()
}

func roundUp(d time.Duration) time.Duration {
	return max(d.Round(time.Second), time.Second)
}

// writeLimiter keeps a token bucket of changes per principal.
type writeLimiter struct {
	mu      sync.Mutex
	buckets map[string]*tokenBucket
}

type tokenBucket struct {
	tokens float64
	at     time.Time
}

// take takes a token from key's bucket (refilled at perSecond up to burst),
// or reports how long until one is there.
func (l *writeLimiter) take(key string, now time.Time, perSecond float64, burst int) (time.Duration, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets[key]
	if !ok {
		if l.buckets == nil {
			l.buckets = map[string]*tokenBucket{}
		}
		if len(l.buckets) >= maxWriteBuckets {
			l.evict(now, perSecond, burst)
		}
		b = &tokenBucket{tokens: float64(burst), at: now}
		l.buckets[key] = b
	}
	if now.After(b.at) {
		b.tokens = min(float64(burst), b.tokens+now.Sub(b.at).Seconds()*perSecond)
		b.at = now
	}
	if b.tokens >= 1 {
		b.tokens--
		return 0, true
	}
	if perSecond <= 0 {
		return time.Hour, false
	}
	return time.Duration((1 - b.tokens) / perSecond * float64(time.Second)), false
}

// evict forgets the buckets that have refilled (forgetting them changes
// nothing); when too few have, it forgets others at random, so memory
// stays bounded at the price of some budgets starting afresh. It frees a
// tenth of the room at least, so that its scan is rare.
func (l *writeLimiter) evict(now time.Time, perSecond float64, burst int) {
	for k, b := range l.buckets {
		if b.tokens+now.Sub(b.at).Seconds()*perSecond >= float64(burst) {
			delete(l.buckets, k)
		}
	}
	for k := range l.buckets {
		if len(l.buckets) < maxWriteBuckets*9/10 {
			break
		}
		delete(l.buckets, k)
	}
}

// asking counts, per principal, the asks admitted on this instance and not
// yet stored, and those released since an ask began counting; it keeps an
// entry only while asks are counting or in flight.
type asking struct {
	mu sync.Mutex
	m  map[string]*inFlight
}

type inFlight struct {
	counting int    // asks between begin and admit (or done)
	admitted int    // admitted, not yet released
	released uint64 // releases while the entry has existed
}

// begin starts an ask of key: it returns the releases so far, for admit.
func (a *asking) begin(key string) uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.m == nil {
		a.m = map[string]*inFlight{}
	}
	e := a.m[key]
	if e == nil {
		e = &inFlight{}
		a.m[key] = e
	}
	e.counting++
	return e.released
}

// done ends an ask that begin started and admit did not.
func (a *asking) done(key string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	e := a.m[key]
	e.counting--
	a.forget(key, e)
}

func (a *asking) forget(key string, e *inFlight) {
	if e.counting == 0 && e.admitted == 0 {
		delete(a.m, key)
	}
}

// admit admits the ask of key that begin started if stored (the store's
// count, read after begin) plus the asks in flight plus those released
// since begin stay below limit. It returns the count it judged by.
func (a *asking) admit(key string, since uint64, stored, limit int) (release func(), total int, ok bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	e := a.m[key]
	e.counting--
	total = stored + e.admitted + int(e.released-since)
	if total >= limit {
		a.forget(key, e)
		return nil, total, false
	}
	e.admitted++
	var once sync.Once
	return func() {
		once.Do(func() {
			a.mu.Lock()
			defer a.mu.Unlock()
			e.admitted--
			e.released++
			a.forget(key, e)
		})
	}, total, true
}
