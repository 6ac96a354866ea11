package armsim

import (
	"encoding/base64"
	"net/http"
	"testing"
	"time"
)

// Jitter spreads write times over ±Jitter, reproducibly for one seed.
func TestWriteTimeJitter(t *testing.T) {
	draw := func() []time.Duration {
		a := newAzureState(Azure{WriteTime: 2 * time.Second, Jitter: 500 * time.Millisecond, Seed: 7})
		out := make([]time.Duration, 200)
		for i := range out {
			out[i] = a.writeTime()
		}
		return out
	}
	first, again := draw(), draw()
	lo, hi := first[0], first[0]
	for i, d := range first {
		if d < 1500*time.Millisecond || d > 2500*time.Millisecond {
			t.Fatalf("write time %s outside 2s ± 500ms", d)
		}
		if d != again[i] {
			t.Fatalf("same seed, different draws")
		}
		lo, hi = min(lo, d), max(hi, d)
	}
	if hi-lo < 500*time.Millisecond {
		t.Errorf("200 draws span only %s", hi-lo)
	}
	if d := newAzureState(Azure{WriteTime: time.Second}).writeTime(); d != time.Second {
		t.Errorf("without jitter: %s", d)
	}
}

// The bucket refills continuously at its rate and never beyond its size.
func TestBucketRefill(t *testing.T) {
	a := newAzureState(Azure{})
	now := time.Unix(1_800_000_000, 0)
	b := Bucket{Size: 200, PerSecond: 10}
	for i := range 200 {
		if left, wait := a.take("sub", "writes", b, now); wait != 0 || left != 199-i {
			t.Fatalf("token %d: left %d, wait %s", i, left, wait)
		}
	}
	if _, wait := a.take("sub", "writes", b, now); wait != 100*time.Millisecond {
		t.Errorf("empty bucket: wait %s, want 100ms", wait)
	}
	if _, wait := a.take("other-sub", "writes", b, now); wait != 0 {
		t.Errorf("another subscription shares the bucket")
	}
	if left, wait := a.take("sub", "writes", b, now.Add(time.Second)); wait != 0 || left != 9 {
		t.Errorf("after 1 s: left %d, wait %s; want 9 left", left, wait)
	}
	if left, _ := a.take("sub", "writes", b, now.Add(time.Hour)); left != 199 {
		t.Errorf("after an hour: left %d, want 199 (full, less this one)", left)
	}
}

func TestParseBucket(t *testing.T) {
	for in, want := range map[string]string{"": "200/10", "off": "off", "50/2.5": "50/2.5", " 10 / 1 ": "10/1"} {
		b, err := ParseBucket(in, DefaultWriteBucket)
		if err != nil || b.String() != want {
			t.Errorf("ParseBucket(%q) = %v, %v; want %s", in, b, err, want)
		}
	}
	for _, bad := range []string{"200", "0/10", "200/0", "a/b", "200/-1", "-5/1"} {
		if _, err := ParseBucket(bad, DefaultWriteBucket); err == nil {
			t.Errorf("ParseBucket(%q) accepted", bad)
		}
	}
}

func TestCallerOfToken(t *testing.T) {
	enc := base64.RawURLEncoding.EncodeToString
	tok := func(claims string) string { return enc([]byte(`{"alg":"none"}`)) + "." + enc([]byte(claims)) + ".x" }
	for _, c := range []struct{ auth, want string }{
		{"Bearer " + tok(`{"appid":"c1","oid":"o1"}`), "c1"},
		{"Bearer " + tok(`{"oid":"o1"}`), "o1"},
		{"Bearer not-a-jwt", ""},
		{"", ""},
	} {
		r, _ := http.NewRequest("PUT", "/", nil)
		r.Header.Set("Authorization", c.auth)
		if got := callerOf(r); got != c.want {
			t.Errorf("callerOf(%q) = %q, want %q", c.auth, got, c.want)
		}
	}
}
