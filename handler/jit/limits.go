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
	// requests; DefaultMaxOpenRequests when zero. It is counted in the
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
func (s *Service) AllowWrite(p Principal) error {
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
// concurrency too: it returns holding subject's turn, which the caller
// gives back (release) once the new request is stored, so their asks are
// counted one after the other. Asks made at the same moment on several
// instances may pass it together, one per instance at most.
func (s *Service) checkOpenRequests(ctx context.Context, subject Principal) (release func(), err error) {
	release, err = s.turns.take(ctx, subject.ID)
	if err != nil {
		return nil, err
	}
	if err := s.countOpenRequests(ctx, subject); err != nil {
		release()
		return nil, err
	}
	return release, nil
}

func (s *Service) countOpenRequests(ctx context.Context, subject Principal) error {
	limit := s.cfg.Limits.maxOpen()
	live, err := s.store.ListRequests(ctx, RequestFilter{Requestor: subject.ID,
		Statuses: []string{RequestActive, RequestPending}, Limit: limit + 1})
	if err != nil {
		return fmt.Errorf("counting open requests: %w", err)
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
	if n < limit {
		return nil
	}
	s.cfg.Log.Info().Str("requestor", subject.ID).Int("open", n).Msg("request refused: too many open requests")
	return tooMany(next, "%s has %d open or pending requests, the most one person may have: revoke one or wait until one ends or expires (the next in %s)",
		subject.ID, n, roundUp(next))
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

// turns lets one ask at a time per principal through; it keeps an entry
// only while someone holds or waits for a principal's turn.
type turns struct {
	mu sync.Mutex
	m  map[string]*turn
}

type turn struct {
	ch   chan struct{} // holds a token while the turn is taken
	refs int
}

// take waits for key's turn, or for ctx to end.
func (t *turns) take(ctx context.Context, key string) (func(), error) {
	t.mu.Lock()
	if t.m == nil {
		t.m = map[string]*turn{}
	}
	e := t.m[key]
	if e == nil {
		e = &turn{ch: make(chan struct{}, 1)}
		t.m[key] = e
	}
	e.refs++
	t.mu.Unlock()
	leave := func() {
		t.mu.Lock()
		if e.refs--; e.refs == 0 {
			delete(t.m, key)
		}
		t.mu.Unlock()
	}
	select {
	case e.ch <- struct{}{}:
	case <-ctx.Done():
		leave()
		return nil, ctx.Err()
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			<-e.ch
			leave()
		})
	}, nil
}
