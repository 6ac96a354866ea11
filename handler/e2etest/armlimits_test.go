package e2etest

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"
)

// With JIT_ARM_LATENCY, `handler local`'s simulator behaves as ARM under
// load: writes are throttled by the subscription's budget and every answer
// says what is left. PUT /_arm/_azure turns that off and on again (the
// bench prepares estates without it); without JIT_ARM_LATENCY it cannot be
// turned on, and a body that says nothing is refused.
func TestLocalARMLimits(t *testing.T) {
	if testing.Short() {
		t.Skip("starts handler processes")
	}
	p := startLocal(t, t.TempDir(), freeAddr(t), "JIT_ARM_LATENCY=1s", "JIT_ARM_READ_BUDGET=3/0.01")
	read := func() *http.Response {
		t.Helper()
		resp, err := http.Get(p.base + "/_arm" + rgURL + "/providers/Microsoft.Network/networkSecurityGroups?api-version=2024-05-01")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	// The start-up sweep and inventory read may have taken tokens too: read
	// until the bucket of 3 is empty.
	var last *http.Response
	for range 5 {
		if last = read(); last.StatusCode == http.StatusTooManyRequests {
			break
		}
		if last.Header.Get("x-ms-ratelimit-remaining-subscription-reads") == "" {
			t.Fatalf("a read answer without x-ms-ratelimit-remaining-subscription-reads")
		}
	}
	if last.StatusCode != http.StatusTooManyRequests || last.Header.Get("Retry-After") == "" {
		t.Fatalf("reads past a budget of 3: %d, Retry-After %q", last.StatusCode, last.Header.Get("Retry-After"))
	}
	p.must(200, "PUT", "/_arm/_azure", map[string]any{"enabled": false}, nil)
	if r := read(); r.StatusCode != 200 || r.Header.Get("x-ms-ratelimit-remaining-subscription-reads") != "" {
		t.Errorf("with the limits off: %d, header %q", r.StatusCode, r.Header.Get("x-ms-ratelimit-remaining-subscription-reads"))
	}
	p.must(200, "PUT", "/_arm/_azure", map[string]any{"enabled": true}, nil)
	if r := read(); r.StatusCode != 200 || r.Header.Get("x-ms-ratelimit-remaining-subscription-reads") != "2" {
		t.Errorf("limits on again, the bucket full: %d, remaining %q", r.StatusCode, r.Header.Get("x-ms-ratelimit-remaining-subscription-reads"))
	}
	var e struct{ Error struct{ Message string } }
	_ = json.Unmarshal(p.must(400, "PUT", "/_arm/_azure", map[string]any{}, nil), &e)
	if e.Error.Message == "" {
		t.Errorf("a body without enabled: no message")
	}

	q := startLocal(t, t.TempDir(), freeAddr(t))
	q.must(409, "PUT", "/_arm/_azure", map[string]any{"enabled": true}, nil)
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get(q.base + "/_arm" + rgURL + "/providers/Microsoft.Network/networkSecurityGroups?api-version=2024-05-01")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("without JIT_ARM_LATENCY a read answered %d", resp.StatusCode)
		}
	}
}
