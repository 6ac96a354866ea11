package jit

import (
	"context"
	"errors"
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
	for _, busy := range []time.Duration{10 * time.Millisecond, 40 * time.Millisecond, 0} {
		*now = now.Add(busy)
		if err := p.pause(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// Busy a quarter of the time: three times as long asleep as busy.
	want := []time.Duration{30 * time.Millisecond, 120 * time.Millisecond, 0}
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
