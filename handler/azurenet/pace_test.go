package azurenet_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"jitaccess/handler/armsim"
	"jitaccess/handler/azurenet"
	"jitaccess/handler/jit"
)

// callLog records when the simulator received each call, and which it
// answered with a fault.
type callLog struct {
	mu    sync.Mutex
	calls []loggedCall
}

type loggedCall struct {
	kind, path string
	at         time.Time
	fault      *armsim.Fault
}

// intercept logs every call and answers with the fault that pick returns.
func (l *callLog) intercept(pick func(c armsim.Call, n int) *armsim.Fault) func(*http.Request, armsim.Call) *armsim.Fault {
	return func(r *http.Request, c armsim.Call) *armsim.Fault {
		l.mu.Lock()
		defer l.mu.Unlock()
		n := 0
		for _, lc := range l.calls {
			if lc.kind == c.Kind() {
				n++
			}
		}
		f := pick(c, n)
		l.calls = append(l.calls, loggedCall{kind: c.Kind(), path: strings.ToLower(c.ID), at: time.Now(), fault: f})
		return f
	}
}

// checkWaits fails t when any call followed a faulted call of the same
// kind and resource sooner than the fault's Retry-After, and returns how
// many faulted calls were followed.
func (l *callLog) checkWaits(t *testing.T, sameResource bool) int {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	followed := 0
	for i, f := range l.calls {
		if f.fault == nil || f.fault.RetryAfter == 0 {
			continue
		}
		for _, next := range l.calls[i+1:] {
			if next.kind != f.kind || sameResource && next.path != f.path {
				continue
			}
			if gap := next.at.Sub(f.at); gap < f.fault.RetryAfter {
				t.Errorf("%s %s came %v after a %d asking for %v", next.kind, next.path, gap, f.fault.Status, f.fault.RetryAfter)
			}
			followed++
			break
		}
	}
	return followed
}

// No retry comes sooner than the Retry-After of the answer it follows,
// whichever path retries: azcore's retry policy (Retry-After within its
// maximum delay, 200 ms in these tests), the driver's own backoff (beyond
// it), for writes, reads and a busy NSG's answers.
func TestNoRetryBeforeRetryAfter(t *testing.T) {
	busy429 := armsim.Fault{Status: http.StatusTooManyRequests, Code: "RetryableErrorDueToAnotherOperation", Message: "busy"}
	busy409 := armsim.AnotherOperationInProgress()
	tests := []struct {
		name  string
		kind  string
		fault armsim.Fault
		wait  time.Duration
	}{
		{"write 429 azcore retries", "PUT networkSecurityGroups", armsim.Throttled(0), 150 * time.Millisecond},
		{"write 429 driver retries", "PUT networkSecurityGroups", armsim.Throttled(0), 400 * time.Millisecond},
		{"write 429 in whole seconds", "PUT networkSecurityGroups", armsim.Throttled(0), time.Second},
		{"read 429 azcore retries", "GET networkSecurityGroups", armsim.Throttled(0), 150 * time.Millisecond},
		{"read 429 driver retries", "GET networkSecurityGroups", armsim.Throttled(0), 400 * time.Millisecond},
		{"busy NSG 429", "PUT networkSecurityGroups", busy429, 300 * time.Millisecond},
		{"busy NSG 409", "PUT networkSecurityGroups", busy409, 300 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if testing.Short() && tt.wait >= time.Second {
				t.Skip("waits a second")
			}
			var log callLog
			f := tt.fault
			f.RetryAfter = tt.wait
			sim, d := newEnv(t, armsim.Options{Intercept: log.intercept(func(c armsim.Call, n int) *armsim.Fault {
				if c.Kind() == tt.kind && n < 2 {
					return &f
				}
				return nil
			})})
			apply(t, d, nsgVMNIC, put(allowRule("jit-allow-1", "203.0.113.7")))
			if n := log.checkWaits(t, true); n != 2 {
				t.Errorf("%d retries after faults, want 2", n)
			}
			if c := sim.Calls(); c.ByKind[tt.kind] != 3 {
				t.Errorf("calls %v: want two faulted %s and one that passed", c.ByKind, tt.kind)
			}
		})
	}
}

// A subscription's 429 holds back every write to that subscription until
// its Retry-After, not just the retry of the throttled one.
func TestThrottlingHoldsTheSubscription(t *testing.T) {
	var log callLog
	throttled := make(chan struct{})
	var once sync.Once
	f := armsim.Throttled(400 * time.Millisecond)
	sim, d := newEnv(t, armsim.Options{Intercept: log.intercept(func(c armsim.Call, n int) *armsim.Fault {
		if c.Kind() == "PUT networkSecurityGroups" && n == 0 {
			defer once.Do(func() { close(throttled) })
			return &f
		}
		return nil
	})})
	ctx := context.Background()
	first := make(chan error, 1)
	go func() {
		_, err := d.ApplyRules(ctx, nsgVMNIC, put(allowRule("jit-allow-1", "203.0.113.7")))
		first <- err
	}()
	<-throttled
	time.Sleep(20 * time.Millisecond) // the 429 reaches the driver
	apply(t, d, nsgVMBoth, put(allowRule("jit-allow-2", "203.0.113.8")))
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if n := log.checkWaits(t, false); n != 1 {
		t.Errorf("%d writes followed the 429, want the check to see one", n)
	}
	if c := sim.Calls(); c.ByKind["PUT networkSecurityGroups"] != 3 {
		t.Errorf("calls %v: want the throttled write, its retry and the other write", c.ByKind)
	}
}

// Throttling azcore already waits out (Retry-After within its maximum) is
// not retried again on top: the driver gives up when azcore does, instead
// of multiplying the calls to a throttled ARM. A Retry-After beyond what a
// worker waits out fails the change at once, and the next write to the
// subscription too, without a call, for the queue to deliver again later.
func TestThrottlingBeyondReach(t *testing.T) {
	sim, d := newEnv(t, armsim.Options{})
	sim.FailNext(armsim.Writes, 100, armsim.Throttled(20*time.Millisecond))
	_, err := d.ApplyRules(context.Background(), nsgVMNIC, put(allowRule("jit-allow-1", "203.0.113.7")))
	if jit.ErrorCode(err) != jit.EUNAVAILABLE {
		t.Errorf("persistent throttling: %v, want unavailable", err)
	}
	if n := sim.Calls().ByKind["PUT networkSecurityGroups"]; n != 4 {
		t.Errorf("persistent throttling made %d PUTs, want 4 (azcore's first try and 3 retries)", n)
	}

	sim, d = newEnv(t, armsim.Options{})
	sim.FailNext(armsim.Writes, 1, armsim.Throttled(10*time.Minute))
	start := time.Now()
	for _, nsg := range []string{nsgVMNIC, nsgVMBoth} {
		_, err := d.ApplyRules(context.Background(), nsg, put(allowRule("jit-allow-1", "203.0.113.7")))
		if jit.ErrorCode(err) != jit.EUNAVAILABLE || !strings.Contains(jit.ErrorMessage(err), "try again later") {
			t.Errorf("write to %s after a 429 asking for 10 minutes: %v, want unavailable", nsg, err)
		}
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("a 429 asking for 10 minutes held the worker %v", el)
	}
	if n := sim.Calls().ByKind["PUT networkSecurityGroups"]; n != 1 {
		t.Errorf("%d PUTs, want only the throttled one", n)
	}
}

// estateOf is one subscription with n empty NSGs.
func estateOf(n int) string {
	var b strings.Builder
	b.WriteString(`{"subscriptions": [{"id": "` + armsim.DemoSubscription + `", "resourceGroups": [{"name": "` + armsim.DemoResourceGroup + `", "location": "westeurope", "networkSecurityGroups": [`)
	for i := range n {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, `{"name": "nsg-%03d"}`, i)
	}
	b.WriteString(`]}]}]}`)
	return b.String()
}

// burst is what one burst of writes cost.
type burst struct {
	elapsed               time.Duration
	puts, throttled, errs int
}

// writeBurst writes one rule to each of n NSGs of one subscription at once,
// against a write bucket of budget, with the driver's pacing edited by pace.
func writeBurst(tb testing.TB, n int, budget armsim.Bucket, pace func(*azurenet.Config)) burst {
	tb.Helper()
	sim := armsim.New(armsim.Options{Empty: true, Azure: &armsim.Azure{Writes: budget, Reads: armsim.Bucket{Size: -1}}})
	if err := sim.Load(strings.NewReader(estateOf(n))); err != nil {
		tb.Fatal(err)
	}
	d := driverOn(tb, sim, pace)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, n)
	start := time.Now()
	for i := range n {
		wg.Go(func() {
			nsg := armsim.DemoID("Microsoft.Network/networkSecurityGroups", fmt.Sprintf("nsg-%03d", i))
			_, errs[i] = d.ApplyRules(ctx, nsg, put(allowRule(fmt.Sprintf("jit-allow-%03d", i), "203.0.113.7")))
		})
	}
	wg.Wait()
	b := burst{elapsed: time.Since(start)}
	for _, err := range errs {
		if err != nil {
			b.errs++
		}
	}
	c := sim.Calls()
	b.puts, b.throttled = c.ByKind["PUT networkSecurityGroups"], c.Throttled
	return b
}

// A burst of writes to many NSGs of one subscription, on a write budget far
// smaller than the burst, lands without a single 429: the driver spends the
// budget down to its reserve, then spaces its writes at the refill rate.
// Without pacing the same burst is throttled.
func TestPacedBurstIsNeverThrottled(t *testing.T) {
	n := 40
	if testing.Short() {
		n = 20
	}
	budget := armsim.Bucket{Size: 5, PerSecond: 20}
	paced := writeBurst(t, n, budget, func(c *azurenet.Config) { c.WriteReserve, c.WriteRate = 2, budget.PerSecond })
	if paced.errs != 0 || paced.throttled != 0 || paced.puts != n {
		t.Errorf("paced burst of %d: %d failed, %d throttled, %d PUTs; want none, none, %d", n, paced.errs, paced.throttled, paced.puts, n)
	}
	unpaced := writeBurst(t, n, budget, func(c *azurenet.Config) { c.WriteReserve = -1 })
	if unpaced.throttled == 0 {
		t.Errorf("the unpaced burst was never throttled: the test shows nothing")
	}
	t.Logf("paced: %v, %d PUTs, %d throttled; unpaced: %v, %d PUTs, %d throttled, %d failed",
		paced.elapsed, paced.puts, paced.throttled, unpaced.elapsed, unpaced.puts, unpaced.throttled, unpaced.errs)
}

// BenchmarkWriteBurst is a burst of writes to 60 NSGs of one subscription
// against a write bucket of 10 refilled at 20 a second, paced (reserve 2,
// rate 20) and unpaced. Figures, not a verdict: elapsed time per burst,
// 429s and PUTs.
func BenchmarkWriteBurst(b *testing.B) {
	const n = 60
	budget := armsim.Bucket{Size: 10, PerSecond: 20}
	for _, tc := range []struct {
		name string
		pace func(*azurenet.Config)
	}{
		{"paced", func(c *azurenet.Config) { c.WriteReserve, c.WriteRate = 2, budget.PerSecond }},
		{"unpaced", func(c *azurenet.Config) { c.WriteReserve = -1 }},
	} {
		b.Run(tc.name, func(b *testing.B) {
			var total burst
			runs := 0
			for b.Loop() {
				r := writeBurst(b, n, budget, tc.pace)
				total.puts += r.puts
				total.throttled += r.throttled
				total.errs += r.errs
				runs++
			}
			b.ReportMetric(float64(total.throttled)/float64(runs), "429s/burst")
			b.ReportMetric(float64(total.puts)/float64(runs), "PUTs/burst")
			b.ReportMetric(float64(total.errs)/float64(runs), "failed/burst")
		})
	}
}

// driverOn is a driver on sim, served over HTTP, with test timings and
// its configuration edited by edit.
func driverOn(tb testing.TB, sim *armsim.Server, edit func(*azurenet.Config)) *azurenet.Driver {
	tb.Helper()
	return newDriver(tb, serve(tb, sim), edit)
}
