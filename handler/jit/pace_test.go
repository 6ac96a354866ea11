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
	p := &pacer{share: share, now: func() time.Time { return now }, since: now,
		sleep: func(ctx context.Context, d time.Duration) error {
			slept = append(slept, d)
			now = now.Add(d)
			return ctx.Err()
		}}
	return p, &now, &slept
}

func TestPacerKeepsItsShare(t *testing.T) {
	ctx := context.Background()
	p, now, slept := fakePacer(0.25)
	for _, busy := range []time.Duration{10 * time.Millisecond, 20 * time.Millisecond, 0, 5 * time.Second} {
		*now = now.Add(busy)
		if err := p.pause(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// Busy a quarter of the time: three times as long asleep as busy, but
	// never more than maxPause (a long wait on Azure is not CPU).
	want := []time.Duration{30 * time.Millisecond, 60 * time.Millisecond, 0, maxPause}
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
		*now = now.Add(time.Second)
		if err := p.pause(context.Background()); err != nil || len(*slept) != 0 {
			t.Errorf("share %v: err %v, slept %v; want no sleep", share, err, *slept)
		}
	}
}

func TestPauseFollowsContext(t *testing.T) {
	ctx := context.Background()
	if Paced(ctx) || Pause(ctx) != nil {
		t.Error("a plain context is paced or its pause fails")
	}
	calls := 0
	paced := WithPauses(ctx, func(context.Context) error { calls++; return nil })
	if !Paced(paced) || Pause(paced) != nil || calls != 1 {
		t.Errorf("paced %v, calls %d; want paced, one call", Paced(paced), calls)
	}
	// A cancelled sweep stops at its next pause.
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if err := Pause(WithPauses(cancelled, newPacer(0.5).pause)); !errors.Is(err, context.Canceled) {
		t.Errorf("pause of a cancelled paced context: %v, want context.Canceled", err)
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
