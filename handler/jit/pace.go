package jit

import (
	"context"
	"time"
)

// Long background work (the sweep's reconcile) paces itself: it wraps the
// functions it hands the iterators (Store.ScanRequests, Network.ScanNSGs)
// with a pacer, which sleeps between items so that the process is busy on
// the work for at most its share of the time. Adapters know nothing of it:
// they read the same way for every caller.

// maxPause is the longest single pause.
const maxPause = time.Second

// minBusy is how much CPU time the pacer lets pile up before it sleeps, so
// that cheap items cost no timer each.
const minBusy = 10 * time.Millisecond

// pacer keeps work busy for at most share of the time. Busy is CPU time of
// the process (processCPU), not wall time: an iterator that waits on Azure
// for a page costs none, and one that decodes a page, or reads a bbolt
// file, or (in local mode) has the ARM simulator in this process build the
// page, costs what it takes. CPU that requests use meanwhile counts too, so
// the work yields more while requests are busy. The CPU used while the
// pacer sleeps is not counted. Once minBusy has piled up, the pacer sleeps
// for it times (1-share)/share, but never longer than maxPause. share 0
// or 1 means no sleeping.
type pacer struct {
	share float64
	cpu   func() time.Duration // CPU time of the process so far
	sleep func(context.Context, time.Duration) error
	last  time.Duration // cpu() after the last sleep
}

func newPacer(share float64) *pacer {
	p := &pacer{share: share, cpu: processCPU, sleep: Sleep}
	p.last = p.cpu()
	return p
}

// paced returns fn for an iterator to call: it runs fn and then sleeps per
// p's share before it returns and the iterator goes on. An error of fn, or
// of the sleep (ctx ended), stops the iterator. The calls must come one at
// a time, as an iterator makes them; several iterators may share p one
// after the other.
func paced[T any](ctx context.Context, p *pacer, fn func(T) error) func(T) error {
	if p == nil || p.share <= 0 || p.share >= 1 {
		return fn
	}
	return func(item T) error {
		if err := fn(item); err != nil {
			return err
		}
		return p.rest(ctx)
	}
}

// rest sleeps for the CPU time used since the last sleep, if it is
// minBusy or more.
func (p *pacer) rest(ctx context.Context) error {
	busy := p.cpu() - p.last
	if busy < minBusy {
		return ctx.Err()
	}
	err := p.sleep(ctx, min(time.Duration(float64(busy)*(1-p.share)/p.share), maxPause))
	p.last = p.cpu()
	return err
}

// Sleep sleeps for d or until ctx ends, and then returns ctx.Err().
func Sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

var started = time.Now()

// wallSinceStart is the wall time since the process started (monotonic).
func wallSinceStart() time.Duration { return time.Since(started) }
