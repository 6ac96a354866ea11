package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// loadResult is what an open-loop run measured.
type loadResult struct {
	Sent, OK, Failed int
	Elapsed          time.Duration
	Latencies        []time.Duration // of the successful calls
	FirstError       string
	// PerSecond[s] holds the latencies of the successful calls scheduled in
	// second s of the run, to tell a steady tail from a stall.
	PerSecond [][]time.Duration
}

// worstSecond is the second of the run whose calls had the highest p99.
func (r loadResult) worstSecond() (sec int, p99 time.Duration) {
	for s, ds := range r.PerSecond {
		_, _, q, _ := percentiles(slices.Clone(ds))
		if q > p99 {
			sec, p99 = s, q
		}
	}
	return sec, p99
}

// timeline is one line per second: calls, p50, p99 and max in ms.
func (r loadResult) timeline() string {
	var b strings.Builder
	for s, ds := range r.PerSecond {
		p50, _, p99, mx := percentiles(slices.Clone(ds))
		fmt.Fprintf(&b, "%3d s  %5d calls  p50 %7.1f  p99 %7.1f  max %7.1f ms\n", s, len(ds), ms(p50), ms(p99), ms(mx))
	}
	return b.String()
}

// openLoop calls fn at rate per second for d, each call at its scheduled
// time whether or not earlier calls have finished (up to maxInFlight at
// once). A call's latency is measured from its scheduled time, not from when
// a free worker picked it up, so a server that falls behind is not flattered
// (no coordinated omission).
func openLoop(ctx context.Context, rate float64, d time.Duration, maxInFlight int, fn func(ctx context.Context, i int) error) loadResult {
	n := int(rate * d.Seconds())
	interval := time.Duration(float64(time.Second) / rate)
	type job struct {
		i  int
		at time.Time
	}
	jobs := make(chan job, n)
	var mu sync.Mutex
	var res loadResult
	res.Latencies = make([]time.Duration, 0, n)
	res.PerSecond = make([][]time.Duration, int(d/time.Second)+1)
	var failed atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < maxInFlight; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				if wait := time.Until(j.at); wait > 0 {
					time.Sleep(wait)
				}
				err := fn(ctx, j.i)
				lat := time.Since(j.at)
				mu.Lock()
				if err != nil {
					failed.Add(1)
					if res.FirstError == "" {
						res.FirstError = err.Error()
					}
				} else {
					res.Latencies = append(res.Latencies, lat)
					s := int(time.Duration(j.i) * interval / time.Second)
					res.PerSecond[s] = append(res.PerSecond[s], lat)
				}
				mu.Unlock()
			}
		}()
	}
	start := time.Now()
	for i := 0; i < n; i++ {
		jobs <- job{i: i, at: start.Add(time.Duration(i) * interval)}
	}
	close(jobs)
	wg.Wait()
	res.Elapsed = time.Since(start)
	res.Sent = n
	res.Failed = int(failed.Load())
	res.OK = len(res.Latencies)
	return res
}

// percentiles of ds (sorted in place): p50, p95, p99, max.
func percentiles(ds []time.Duration) (p50, p95, p99, maxD time.Duration) {
	if len(ds) == 0 {
		return
	}
	slices.Sort(ds)
	at := func(q float64) time.Duration {
		i := int(q*float64(len(ds))+0.5) - 1
		return ds[min(max(i, 0), len(ds)-1)]
	}
	return at(0.50), at(0.95), at(0.99), ds[len(ds)-1]
}
