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
