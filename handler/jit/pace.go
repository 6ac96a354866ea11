package jit

import (
	"context"
	"sync"
	"time"
)

// Long background work (the sweep's reconcile) yields between its steps
// through the context: WithPauses installs a pause function, and Pause,
// called by the work and by adapters between the pages or chunks of a long
// listing, runs it. Without one, Pause costs nothing, so the same adapter
// code serves requests unpaced.

type pausesKey struct{}

// WithPauses returns ctx carrying pause, which Pause calls.
func WithPauses(ctx context.Context, pause func(context.Context) error) context.Context {
	return context.WithValue(ctx, pausesKey{}, pause)
}

// Pause is a yield point of long work: it runs the context's pause
// function, if any, and returns ctx.Err() otherwise.
func Pause(ctx context.Context) error {
	if pause, ok := ctx.Value(pausesKey{}).(func(context.Context) error); ok && pause != nil {
		return pause(ctx)
	}
	return ctx.Err()
}

// Paced reports whether ctx carries a pause function: an adapter may then
// cut a listing it would do at once into chunks with pauses between them.
func Paced(ctx context.Context) bool {
	pause, ok := ctx.Value(pausesKey{}).(func(context.Context) error)
	return ok && pause != nil
}

// maxPause is the longest single pause.
const maxPause = time.Second

// pacer keeps work busy for at most share of the wall time: each pause
// sleeps for the time since the previous pause times (1-share)/share, but
// never longer than maxPause. Busy time is wall time, so on a loaded
// machine the work yields more, not less; the cap keeps time spent waiting
// on Azure (a write, a throttled read) from turning into long sleeps.
// share 0 or 1 means no sleeping.
type pacer struct {
	share float64
	now   func() time.Time
	sleep func(context.Context, time.Duration) error

	mu    sync.Mutex
	since time.Time
}

func newPacer(share float64) *pacer {
	p := &pacer{share: share, now: time.Now, sleep: Sleep}
	p.since = p.now()
	return p
}

func (p *pacer) pause(ctx context.Context) error {
	if err := ctx.Err(); err != nil || p.share <= 0 || p.share >= 1 {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	busy := p.now().Sub(p.since)
	if err := p.sleep(ctx, min(time.Duration(float64(busy)*(1-p.share)/p.share), maxPause)); err != nil {
		return err
	}
	p.since = p.now()
	return nil
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
