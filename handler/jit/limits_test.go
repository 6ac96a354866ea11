package jit

import (
	"strconv"
	"testing"
	"time"
)

func TestWriteLimiterPacesAndStaysBounded(t *testing.T) {
	var l writeLimiter
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for i := range 3 {
		if _, ok := l.take("mallory", now, 1, 3); !ok {
			t.Fatalf("take %d of a burst of 3 refused", i)
		}
	}
	wait, ok := l.take("mallory", now, 1, 3)
	if ok || wait != time.Second {
		t.Fatalf("fourth take: ok %v, wait %v; want refused, 1s", ok, wait)
	}
	if _, ok := l.take("alice", now, 1, 3); !ok {
		t.Fatal("alice was held back by mallory's budget")
	}
	if _, ok := l.take("mallory", now.Add(time.Second), 1, 3); !ok {
		t.Fatal("a token did not come back after a second")
	}
	// Many principals, each once: the buckets stay bounded.
	for i := range maxWriteBuckets * 2 {
		l.take("p"+strconv.Itoa(i), now, 1, 3)
	}
	if n := len(l.buckets); n > maxWriteBuckets {
		t.Errorf("%d buckets kept, want at most %d", n, maxWriteBuckets)
	}
}

// One person's asks are counted together without waiting for each other:
// asks in flight count, and so does one stored while another was reading
// the store (which its count may miss); nothing is kept once all are done.
func TestAskingCountsInFlight(t *testing.T) {
	var a asking
	// Two asks at once, the store holding 3 of a limit of 5: both fit.
	s1, s2 := a.begin("p"), a.begin("p")
	r1, total, ok := a.admit("p", s1, 3, 5)
	if !ok || total != 3 {
		t.Fatalf("first ask: %v, %d", ok, total)
	}
	r2, total, ok := a.admit("p", s2, 3, 5)
	if !ok || total != 4 {
		t.Fatalf("second ask, the first in flight: %v, %d; want admitted at 4", ok, total)
	}
	// A third reads the store before the first two are stored (3), then
	// they are stored and released: it still counts them.
	s3 := a.begin("p")
	r1()
	r2()
	r1() // twice is harmless
	if _, total, ok := a.admit("p", s3, 3, 5); ok || total != 5 {
		t.Fatalf("third ask, two stored since its count: %v, %d; want refused at 5", ok, total)
	}
	// A fourth counts the store after them (5): refused; a failed count
	// leaves nothing behind.
	s4 := a.begin("p")
	if _, _, ok := a.admit("p", s4, 5, 5); ok {
		t.Fatal("fourth ask admitted over the limit")
	}
	a.begin("p")
	a.done("p")
	if len(a.m) != 0 {
		t.Errorf("entries kept after every ask ended: %v", a.m)
	}
}
