package jit

import (
	"context"
	"time"
)

// Long background work (the sweep's reconcile) paces itself: it wraps the
// function it hands an iterator (Network.ScanNSGs) with a pacer, which
// times the work on each item and sleeps between items so that the work is
// busy for at most its share of the wall time. Adapters know nothing of
// it: they read the same way for every caller.

// maxPause is the longest single pause.
const maxPause = time.Second

// minBusy is how much work the pacer lets pile up before it sleeps, so
// that cheap items cost no timer each.
const minBusy = 10 * time.Millisecond

// pacer keeps work busy for at most share of the wall time. Busy is the
// work's own time: from when the iterator hands it an item to when it asks
// for the next. The time the iterator takes to fetch the next item (a page
// from ARM) is not counted: it is spent waiting, not taking a core from
// requests. Once minBusy has piled up, the pacer sleeps for it times
// (1-share)/share, but never longer than maxPause, so that a step that
// waits on Azure itself (a write) does not turn into a long sleep.
// share 0 or 1 means no sleeping.
type pacer struct {
	share float64
	now   func() time.Time
	sleep func(context.Context, time.Duration) error
	busy  time.Duration // since the last sleep
}

func newPacer(share float64) *pacer {
	return &pacer{share: share, now: time.Now, sleep: Sleep}
}

// paced returns fn for an iterator to call: it runs fn, counts its time as
// busy, and sleeps per p's share before it returns and the iterator goes
// on. An error of fn, or of the sleep (ctx ended), stops the iterator. The
// calls must come one at a time, as an iterator makes them.
func paced[T any](ctx context.Context, p *pacer, fn func(T) error) func(T) error {
	if p == nil || p.share <= 0 || p.share >= 1 {
		return fn
	}
	return func(item T) error {
		start := p.now()
		if err := fn(item); err != nil {
			return err
		}
		p.busy += p.now().Sub(start)
		return p.rest(ctx)
	}
}

// rest sleeps for the busy time piled up, if it is minBusy or more.
func (p *pacer) rest(ctx context.Context) error {
	if p.busy < minBusy {
		return ctx.Err()
	}
	d := min(time.Duration(float64(p.busy)*(1-p.share)/p.share), maxPause)
	p.busy = 0
	return p.sleep(ctx, d)
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
