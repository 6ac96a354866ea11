package azurenet

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
)

// pacer is a per-retry pipeline policy that paces each subscription's
// writes (PUT, PATCH, POST) and deletes by ARM's token buckets, so that ARM
// need not answer 429. ARM says in every answer how many tokens are left
// (x-ms-ratelimit-remaining-subscription-writes / -deletes); the pacer
// keeps that figure per subscription and kind, adds the refill since (rate
// a second, up to the most ARM ever reported), and subtracts the requests
// it let go whose answers have not come back. While more than reserve
// tokens remain, requests go at once; within the reserve they go one per
// 1/rate; with under one token left they wait for the refill. Until the
// first answer tells the budget, one request at a time goes, so that a
// burst cannot spend a bucket it knows nothing of. A 429 (other than a busy
// NSG's) stops the subscription's requests of its kind until its
// Retry-After has passed. Reads are not paced.
type pacer struct {
	reserve float64
	every   time.Duration // 1/rate
	rate    float64

	mu      sync.Mutex
	budgets map[string]*budget // lower-case subscription + " " + kind
}

// budget is what the pacer knows of one subscription's bucket of one kind.
type budget struct {
	kind      string  // "writes" or "deletes"
	known     bool    // an answer has said how many tokens are left
	remaining float64 // tokens left at 'at', as ARM last said plus refill
	at        time.Time
	most      float64 // the most tokens ARM ever said were left (0: unknown)
	inflight  int     // requests let go whose answers have not come back
	next      time.Time
	until     time.Time     // a 429's Retry-After ends
	changed   chan struct{} // closed when an answer comes back
}

func newPacer(reserve int, rate float64) *pacer {
	return &pacer{reserve: float64(reserve), rate: rate, every: time.Duration(float64(time.Second) / rate), budgets: map[string]*budget{}}
}

// budgetKind is the bucket a request draws from, or "" for reads.
func budgetKind(method string) string {
	switch method {
	case http.MethodPut, http.MethodPatch, http.MethodPost:
		return "writes"
	case http.MethodDelete:
		return "deletes"
	}
	return ""
}

// subscriptionOf finds the subscription id in an ARM request path (which
// may carry a prefix, as the simulator's /_arm does).
func subscriptionOf(path string) string {
	i := strings.Index(strings.ToLower(path), "/subscriptions/")
	if i < 0 {
		return ""
	}
	sub, _, _ := strings.Cut(path[i+len("/subscriptions/"):], "/")
	return strings.ToLower(sub)
}

// Do implements policy.Policy.
func (p *pacer) Do(req *policy.Request) (*http.Response, error) {
	kind := budgetKind(req.Raw().Method)
	sub := subscriptionOf(req.Raw().URL.Path)
	if kind == "" || sub == "" {
		return req.Next()
	}
	b := p.budget(sub, kind)
	if err := p.acquire(req.Raw().Context(), b); err != nil {
		return nil, err
	}
	resp, err := req.Next()
	p.record(b, resp)
	return resp, err
}

func (p *pacer) budget(sub, kind string) *budget {
	p.mu.Lock()
	defer p.mu.Unlock()
	k := sub + " " + kind
	b := p.budgets[k]
	if b == nil {
		b = &budget{kind: kind, changed: make(chan struct{})}
		p.budgets[k] = b
	}
	return b
}

// acquire waits until b lets one more request go.
func (p *pacer) acquire(ctx context.Context, b *budget) error {
	for {
		p.mu.Lock()
		wait, ok := p.takeLocked(b, time.Now())
		changed := b.changed
		p.mu.Unlock()
		if ok {
			return nil
		}
		if wait > maxThrottleWait {
			return throttledError{wait}
		}
		var timer *time.Timer
		var fired <-chan time.Time
		if wait > 0 {
			timer = time.NewTimer(wait)
			fired = timer.C
		}
		select {
		case <-ctx.Done():
		case <-fired:
		case <-changed:
		}
		if timer != nil {
			timer.Stop()
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}

// throttledError is the pacer's refusal of a request ARM would refuse
// anyway: the subscription's 429 asked for longer than the driver waits
// (maxThrottleWait).
type throttledError struct{ wait time.Duration }

func (e throttledError) Error() string {
	return fmt.Sprintf("ARM throttles this subscription's writes for another %v", e.wait.Round(time.Second))
}

// takeLocked lets one request go (true), or says how long to wait before
// asking again (0: until an answer comes back).
func (p *pacer) takeLocked(b *budget, now time.Time) (time.Duration, bool) {
	if now.Before(b.until) {
		return b.until.Sub(now), false
	}
	if !b.known {
		if b.inflight > 0 {
			return 0, false
		}
		b.inflight++
		return 0, true
	}
	p.refillLocked(b, now)
	left := b.remaining - float64(b.inflight)
	if left < p.reserve+1 {
		if left < 1 {
			return max(time.Duration((1-left)/p.rate*float64(time.Second)), time.Millisecond), false
		}
		if now.Before(b.next) {
			return b.next.Sub(now), false
		}
		b.next = now.Add(p.every)
	}
	b.inflight++
	return 0, true
}

// refillLocked adds to b what ARM has refilled since b.at.
func (p *pacer) refillLocked(b *budget, now time.Time) {
	if b.remaining < math.Inf(1) && now.After(b.at) {
		b.remaining += now.Sub(b.at).Seconds() * p.rate
		if b.most > 0 {
			b.remaining = min(b.remaining, b.most)
		}
		b.at = now
	}
}

// record learns from one answer (nil when the request failed without one).
func (p *pacer) record(b *budget, resp *http.Response) {
	var throttled bool
	var wait time.Duration
	if resp != nil && resp.StatusCode == http.StatusTooManyRequests && !busyAnswer(resp) {
		throttled, wait = true, retryAfter(resp)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	b.inflight--
	if resp != nil {
		if v, err := strconv.Atoi(resp.Header.Get("x-ms-ratelimit-remaining-subscription-" + b.kind)); err == nil && v >= 0 {
			// Concurrent answers come back in any order, and an older one
			// tells of more tokens than a newer one: the lower of what the
			// answers said (refilled since) holds. Refill alone raises it.
			p.refillLocked(b, now)
			if !b.known || float64(v) < b.remaining {
				b.remaining = float64(v)
			}
			b.known, b.at, b.most = true, now, max(b.most, float64(v))
		} else if !b.known && resp.StatusCode < 300 {
			// ARM says nothing of this budget: nothing to pace by.
			b.known, b.remaining = true, math.Inf(1)
		}
	}
	if throttled {
		b.known, b.remaining, b.at = true, 0, now
		if until := now.Add(wait); until.After(b.until) {
			b.until = until
		}
	}
	close(b.changed)
	b.changed = make(chan struct{})
}

// busyAnswer reports whether a 429 refuses a write to a busy NSG
// (RetryableErrorDueToAnotherOperation) rather than the subscription's
// budget: only the NSG must wait then.
func busyAnswer(resp *http.Response) bool {
	body, err := runtime.Payload(resp)
	if err != nil {
		return false
	}
	var e struct {
		Error struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	return json.Unmarshal(body, &e) == nil && busyCodes[e.Error.Code]
}

// retryAfter is how long an answer asks the client to wait: the same
// headers, in the same order, as azcore's retry policy reads.
func retryAfter(resp *http.Response) time.Duration {
	for _, h := range []string{"retry-after-ms", "x-ms-retry-after-ms"} {
		if v := resp.Header.Get(h); v != "" {
			if ms, err := strconv.Atoi(v); err == nil && ms > 0 {
				return time.Duration(ms) * time.Millisecond
			}
		}
	}
	v := resp.Header.Get("Retry-After")
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(v); err == nil && s > 0 {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(time.Until(t), 0)
	}
	return 0
}
