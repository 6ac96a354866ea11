package azurenet

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

func answer(status int, header map[string]string, body string) *http.Response {
	h := http.Header{}
	for k, v := range header {
		h.Set(k, v)
	}
	return &http.Response{StatusCode: status, Header: h, Body: io.NopCloser(strings.NewReader(body))}
}

// The pacer's arithmetic, with the clock in the test's hands: one probe
// until ARM tells the budget, free spending down to the reserve, then one
// write per 1/rate, a wait for the refill when the bucket is dry, and a
// subscription's 429 (not a busy NSG's) holding it until its Retry-After.
func TestPacerTakes(t *testing.T) {
	p := newPacer(2, 10) // reserve 2, 10 a second
	b := p.budget("sub-a", "writes")
	if p.budget("sub-a", "deletes") == b || p.budget("sub-b", "writes") == b {
		t.Error("budgets shared across kinds or subscriptions")
	}
	if got := subscriptionOf("/_arm/Subscriptions/ABC/resourceGroups/x"); got != "abc" {
		t.Errorf("subscriptionOf = %q", got)
	}
	t0 := time.Now()
	take := func(at time.Duration) (time.Duration, bool) { return p.takeLocked(b, t0.Add(at)) }

	// Unknown budget: one request at a time.
	if _, ok := take(0); !ok {
		t.Fatal("the probe was held")
	}
	if wait, ok := take(0); ok || wait != 0 {
		t.Fatalf("a second request before the probe's answer: %v %v, want to wait for the answer", wait, ok)
	}
	p.record(b, answer(http.StatusOK, map[string]string{"x-ms-ratelimit-remaining-subscription-writes": "6"}, ""))
	b.at = t0 // the answer came at t0
	// 6 left, reserve 2: four go at once (leaving the reserve), then one
	// per 100 ms.
	for i := range 4 {
		if _, ok := take(0); !ok {
			t.Fatalf("request %d held with budget to spare", i)
		}
	}
	if _, ok := take(0); !ok {
		t.Fatal("the first paced request was held")
	}
	if wait, ok := take(0); ok || wait != 100*time.Millisecond {
		t.Fatalf("second paced request: %v %v, want a wait of 100ms", wait, ok)
	}
	if _, ok := take(100 * time.Millisecond); !ok {
		t.Fatal("paced request held after its interval")
	}
	// ARM says the bucket is dry (someone else spends it too): wait for
	// one token's refill, less what has already refilled.
	for range 6 {
		b.inflight--
	}
	b.remaining, b.at, b.next = 0, t0.Add(100*time.Millisecond), time.Time{}
	if wait, ok := take(150 * time.Millisecond); ok || wait != 50*time.Millisecond {
		t.Fatalf("dry bucket: %v %v, want a wait of 50ms", wait, ok)
	}

	// A busy NSG's 429 holds nothing; the subscription's holds it all.
	b.inflight++
	p.record(b, answer(http.StatusTooManyRequests, map[string]string{"Retry-After": "3"}, `{"error":{"code":"RetryableErrorDueToAnotherOperation"}}`))
	if !b.until.IsZero() {
		t.Error("a busy NSG's 429 held the subscription")
	}
	b.inflight++
	before := time.Now()
	p.record(b, answer(http.StatusTooManyRequests, map[string]string{"Retry-After": "3"}, `{"error":{"code":"SubscriptionRequestsThrottled"}}`))
	if b.until.Before(before.Add(3*time.Second)) || b.remaining != 0 {
		t.Errorf("after a 429: until %v, remaining %v; want 3s from now and none", b.until.Sub(before), b.remaining)
	}
	if wait, ok := p.takeLocked(b, before.Add(time.Second)); ok || wait < 2*time.Second-time.Millisecond {
		t.Errorf("a second after the 429: %v %v, want to wait out its Retry-After", wait, ok)
	}
	if b.inflight != 0 {
		t.Errorf("%d in flight after every answer came back", b.inflight)
	}
}

// Without the header (the simulator without its Azure behaviour), the
// pacer has nothing to pace by and holds nothing after the first answer.
func TestPacerWithoutHeaders(t *testing.T) {
	p := newPacer(2, 10)
	b := p.budget("sub", "writes")
	now := time.Now()
	p.takeLocked(b, now)
	p.record(b, answer(http.StatusOK, nil, ""))
	for i := range 100 {
		if _, ok := p.takeLocked(b, now); !ok {
			t.Fatalf("request %d held", i)
		}
	}
}

func TestRetryAfterForms(t *testing.T) {
	for _, tc := range []struct {
		header map[string]string
		want   time.Duration
	}{
		{map[string]string{"Retry-After": "2"}, 2 * time.Second},
		{map[string]string{"Retry-After": "2", "retry-after-ms": "150"}, 150 * time.Millisecond},
		{map[string]string{"x-ms-retry-after-ms": "20"}, 20 * time.Millisecond},
		{map[string]string{"Retry-After": "soon"}, 0},
		{nil, 0},
	} {
		if got := retryAfter(answer(429, tc.header, "")); got != tc.want {
			t.Errorf("%v: %v, want %v", tc.header, got, tc.want)
		}
	}
	date := answer(429, map[string]string{"Retry-After": time.Now().Add(5 * time.Second).UTC().Format(http.TimeFormat)}, "")
	if got := retryAfter(date); got < 3*time.Second || got > 5*time.Second {
		t.Errorf("HTTP date 5s ahead: %v", got)
	}
}
