package jit

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// fakePacer is a pacer on a hand-moved clock that records its sleeps.
func fakePacer(share float64) (*pacer, *time.Time, *[]time.Duration) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var slept []time.Duration
	p := &pacer{share: share, now: func() time.Time { return now },
		sleep: func(ctx context.Context, d time.Duration) error {
			slept = append(slept, d)
			now = now.Add(d)
			return ctx.Err()
		}}
	return p, &now, &slept
}

// step is one item of a fake iterator: the time it takes to fetch, and
// the time the work on it takes.
type step struct{ fetch, busy time.Duration }

// scanSteps is an iterator on the hand-moved clock now: for each step it
// spends fetch, then calls fn, which spends busy.
func scanSteps(now *time.Time, steps []step, fn func(step) error) error {
	for _, s := range steps {
		*now = now.Add(s.fetch)
		if err := fn(s); err != nil {
			return err
		}
	}
	return nil
}

// TestPacerKeepsItsShare: the pacer sleeps for the work's own time times
// (1-share)/share once minBusy has piled up, at most maxPause at a time,
// and never counts the time the iterator spends fetching.
func TestPacerKeepsItsShare(t *testing.T) {
	ctx := context.Background()
	p, now, slept := fakePacer(0.25)
	steps := []step{
		{2 * time.Second, 10 * time.Millisecond},
		{2 * time.Second, 20 * time.Millisecond},
		{2 * time.Second, 0},
		{0, 5 * time.Second},
		{2 * time.Second, 3 * time.Millisecond}, // cheap items pile up...
		{2 * time.Second, 4 * time.Millisecond},
		{2 * time.Second, 3 * time.Millisecond}, // ...to minBusy
		{2 * time.Second, time.Millisecond},     // left over at the end: no sleep
	}
	var worked []time.Duration
	err := scanSteps(now, steps, paced(ctx, p, func(s step) error {
		worked = append(worked, s.busy)
		*now = now.Add(s.busy)
		return nil
	}))
	if err != nil || len(worked) != len(steps) {
		t.Fatalf("scan: %v after %d steps", err, len(worked))
	}
	// Busy a quarter of the time: three times as long asleep as busy, but
	// never more than maxPause (a long wait on Azure is not CPU). The
	// seconds the iterator spends fetching would make every sleep maxPause.
	want := []time.Duration{30 * time.Millisecond, 60 * time.Millisecond, maxPause, 30 * time.Millisecond}
	if len(*slept) != len(want) {
		t.Fatalf("slept %v, want %v", *slept, want)
	}
	for i := range want {
		if (*slept)[i] != want[i] {
			t.Errorf("sleep %d: %v, want %v", i, (*slept)[i], want[i])
		}
	}
}

func TestPacerOffSleepsNever(t *testing.T) {
	for _, share := range []float64{0, 1} {
		p, now, slept := fakePacer(share)
		err := scanSteps(now, []step{{0, time.Second}, {0, time.Second}}, paced(context.Background(), p, func(s step) error {
			*now = now.Add(s.busy)
			return nil
		}))
		if err != nil || len(*slept) != 0 {
			t.Errorf("share %v: err %v, slept %v; want no sleep", share, err, *slept)
		}
	}
	if err := paced(context.Background(), nil, func(int) error { return nil })(1); err != nil {
		t.Errorf("no pacer: %v", err)
	}
}

// TestPacedStops: an error of the work comes back as it is, without a
// sleep; a cancelled context stops the iterator at the next item.
func TestPacedStops(t *testing.T) {
	ctx := context.Background()
	p, now, slept := fakePacer(0.5)
	stop := errors.New("stop")
	calls := 0
	err := scanSteps(now, []step{{0, time.Second}, {0, time.Second}, {0, time.Second}}, paced(ctx, p, func(s step) error {
		*now = now.Add(s.busy)
		if calls++; calls == 2 {
			return stop
		}
		return nil
	}))
	if err != stop || calls != 2 || len(*slept) != 1 {
		t.Errorf("work failing at item 2: %v after %d items, %d sleeps; want its error after 2, one sleep", err, calls, len(*slept))
	}

	cctx, cancel := context.WithCancel(ctx)
	p, now, _ = fakePacer(0.5)
	calls = 0
	err = scanSteps(now, []step{{0, 0}, {0, 0}, {0, 0}}, paced(cctx, p, func(step) error {
		calls++
		cancel()
		return nil
	}))
	if !errors.Is(err, context.Canceled) || calls != 1 {
		t.Errorf("cancelled: %v after %d items; want context.Canceled after 1", err, calls)
	}
}

// TestStillOpen: a reconcile puts an allow rule back only while the
// request, read again, is active, the grant not ended and its rule open.
func TestStillOpen(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	const nsg = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/networkSecurityGroups/n"
	open := func() Request {
		return Request{Status: RequestActive, Grants: []Grant{{End: now.Add(time.Hour), NSGs: []GrantNSG{{ID: nsg, State: RuleOpen}}}}}
	}
	if !stillOpen(open(), 0, strings.ToUpper(nsg), now) {
		t.Error("an open grant is not still open")
	}
	revoked := open() // a revoke closes the request
	revoked.Status = RequestClosed
	ended := open()
	ended.Grants[0].End = now.Add(-time.Second)
	closed := open()
	closed.Grants[0].NSGs[0].State = RuleClosed
	for name, r := range map[string]Request{"revoked": revoked, "ended": ended, "rule closed": closed} {
		if stillOpen(r, 0, nsg, now) {
			t.Errorf("%s grant counted as still open", name)
		}
	}
	if stillOpen(open(), 1, nsg, now) || stillOpen(open(), 0, nsg+"-other", now) {
		t.Error("a missing grant or NSG counted as still open")
	}
}
