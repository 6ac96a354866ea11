package jit

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// fakePacer is a pacer on a hand-moved CPU clock that records its sleeps.
// While it sleeps, other work of the process uses cpuWhileAsleep.
func fakePacer(share float64, cpuWhileAsleep time.Duration) (*pacer, *time.Duration, *[]time.Duration) {
	var cpu time.Duration
	var slept []time.Duration
	p := &pacer{share: share, cpu: func() time.Duration { return cpu },
		sleep: func(ctx context.Context, d time.Duration) error {
			slept = append(slept, d)
			cpu += cpuWhileAsleep
			return ctx.Err()
		}}
	return p, &cpu, &slept
}

// step is one item of a fake iterator: the CPU time its fetch costs (a
// page decoded, or built by the simulator in this process; a wait on
// Azure costs none), and the CPU time of the work on it.
type step struct{ fetch, busy time.Duration }

// scanSteps is an iterator on the CPU clock cpu: for each step it spends
// fetch, then calls fn, which spends busy.
func scanSteps(cpu *time.Duration, steps []step, fn func(step) error) error {
	for _, s := range steps {
		*cpu += s.fetch
		if err := fn(s); err != nil {
			return err
		}
	}
	return nil
}

// TestPacerKeepsItsShare: the pacer sleeps for the CPU time used since its
// last sleep times (1-share)/share once minBusy has piled up, at most
// maxPause at a time; the fetch's CPU counts, waiting costs none, and CPU
// used while it sleeps is not held against the work.
func TestPacerKeepsItsShare(t *testing.T) {
	ctx := context.Background()
	p, cpu, slept := fakePacer(0.25, time.Second)
	steps := []step{
		{0, 10 * time.Millisecond},                     // a fetch that waited on Azure: only the work counts
		{20 * time.Millisecond, 20 * time.Millisecond}, // a page decoded here: both count
		{0, 0},
		{0, 5 * time.Second},
		{0, 3 * time.Millisecond}, // cheap items pile up...
		{0, 4 * time.Millisecond},
		{0, 3 * time.Millisecond}, // ...to minBusy
		{0, time.Millisecond},     // left over at the end: no sleep
	}
	var worked []time.Duration
	err := scanSteps(cpu, steps, paced(ctx, p, func(s step) error {
		worked = append(worked, s.busy)
		*cpu += s.busy
		return nil
	}))
	if err != nil || len(worked) != len(steps) {
		t.Fatalf("scan: %v after %d steps", err, len(worked))
	}
	// Busy a quarter of the time: three times as long asleep as busy, but
	// never more than maxPause. The second of CPU used by others during
	// each sleep would make every sleep maxPause if it counted.
	want := []time.Duration{30 * time.Millisecond, 120 * time.Millisecond, maxPause, 30 * time.Millisecond}
	if len(*slept) != len(want) {
		t.Fatalf("slept %v, want %v", *slept, want)
	}
	for i := range want {
		if (*slept)[i] != want[i] {
			t.Errorf("sleep %d: %v, want %v", i, (*slept)[i], want[i])
		}
	}
}

// TestPacerYieldsToRequests: CPU that requests use while the work runs
// counts as busy, so the work sleeps longer while requests are busy.
func TestPacerYieldsToRequests(t *testing.T) {
	idle, cpu, sleptIdle := fakePacer(0.5, 0)
	_ = paced(context.Background(), idle, func(d time.Duration) error { *cpu += d; return nil })(20 * time.Millisecond)
	busy, cpu2, sleptBusy := fakePacer(0.5, 0)
	_ = paced(context.Background(), busy, func(d time.Duration) error { *cpu2 += 2 * d; return nil })(20 * time.Millisecond) // requests on the other core
	if len(*sleptIdle) != 1 || len(*sleptBusy) != 1 || (*sleptBusy)[0] != 2*(*sleptIdle)[0] {
		t.Errorf("slept %v alone and %v beside busy requests, want twice as long beside them", *sleptIdle, *sleptBusy)
	}
}

func TestPacerOffSleepsNever(t *testing.T) {
	for _, share := range []float64{0, 1} {
		p, cpu, slept := fakePacer(share, 0)
		err := scanSteps(cpu, []step{{0, time.Second}, {0, time.Second}}, paced(context.Background(), p, func(s step) error {
			*cpu += s.busy
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
	p, cpu, slept := fakePacer(0.5, 0)
	stop := errors.New("stop")
	calls := 0
	err := scanSteps(cpu, []step{{0, time.Second}, {0, time.Second}, {0, time.Second}}, paced(ctx, p, func(s step) error {
		*cpu += s.busy
		if calls++; calls == 2 {
			return stop
		}
		return nil
	}))
	if err != stop || calls != 2 || len(*slept) != 1 {
		t.Errorf("work failing at item 2: %v after %d items, %d sleeps; want its error after 2, one sleep", err, calls, len(*slept))
	}

	cctx, cancel := context.WithCancel(ctx)
	p, cpu, _ = fakePacer(0.5, 0)
	calls = 0
	err = scanSteps(cpu, []step{{0, 0}, {0, 0}, {0, 0}}, paced(cctx, p, func(step) error {
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
