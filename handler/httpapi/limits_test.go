package httpapi_test

import (
	"encoding/json"
	"net/http"
	"strconv"
	"sync"
	"testing"

	"jitaccess/handler/jit"
)

// tooMany checks a 429 answer: Retry-After in whole seconds, and the API's
// error shape with a message that says what to do.
func (s *stack) tooMany(who as, method, path string, body any) int {
	s.t.Helper()
	status, raw, h := s.doHeaders(who, method, path, body)
	if status != http.StatusTooManyRequests {
		s.t.Fatalf("%s %s: status %d, want 429: %s", method, path, status, raw)
	}
	after, err := strconv.Atoi(h.Get("Retry-After"))
	if err != nil || after < 1 {
		s.t.Errorf("%s %s: Retry-After %q, want whole seconds of at least 1", method, path, h.Get("Retry-After"))
	}
	var e struct {
		Error struct{ Code, Message string } `json:"error"`
	}
	if err := json.Unmarshal([]byte(raw), &e); err != nil || e.Error.Code != "TooManyRequests" || e.Error.Message == "" {
		s.t.Errorf("%s %s: body %s, want {\"error\":{\"code\":\"TooManyRequests\",...}}", method, path, raw)
	}
	return after
}

func (s *stack) doHeaders(who as, method, path string, body any) (int, string, http.Header) {
	s.t.Helper()
	var h http.Header
	status, raw := s.doWith(who, method, path, body, func(resp *http.Response) { h = resp.Header })
	return status, raw, h
}

// TestOpenRequestLimit: one requester cannot pile up pending requests; the
// limit counts open and pending requests in the store, and a request that
// ends makes room.
func TestOpenRequestLimit(t *testing.T) {
	s := newStack(t, stackOptions{limits: jit.Limits{MaxOpenRequests: 3, WritesPerMinute: -1}})
	admin := easyAuth("admin-0", []string{jit.RoleAdmin})
	mallory := easyAuth("mallory", []string{jit.RoleRequester})
	alice := easyAuth("alice", []string{jit.RoleRequester})
	bob := easyAuth("bob", []string{jit.RoleApprover})
	s.must(200, admin, "PUT", "/api/v1/policies/gated", policyBody("vm-nic-nsg", map[string]any{
		"approval": map[string]any{"required": true, "approvers": []string{"bob"}}}), nil)

	var first request
	for i := range 3 {
		var r request
		s.must(202, mallory, "POST", "/api/v1/policies/gated/initiate", initiate("vm-nic-nsg", "PT1H"), &r)
		if i == 0 {
			first = r
		}
	}
	after := s.tooMany(mallory, "POST", "/api/v1/policies/gated/initiate", initiate("vm-nic-nsg", "PT1H"))
	if after < 3000 || after > 3601 {
		t.Errorf("Retry-After %d s, want about the pending expiry (1 h) of the oldest pending request", after)
	}
	// Someone else is not held back by mallory's requests.
	s.must(202, alice, "POST", "/api/v1/policies/gated/initiate", initiate("vm-nic-nsg", "PT1H"), nil)
	// A denied request no longer counts.
	s.must(200, bob, "POST", "/api/v1/requests/"+first.ID+"/deny", nil, nil)
	s.must(202, mallory, "POST", "/api/v1/policies/gated/initiate", initiate("vm-nic-nsg", "PT1H"), nil)
	s.tooMany(mallory, "POST", "/api/v1/policies/gated/initiate", initiate("vm-nic-nsg", "PT1H"))
}

// TestWriteRateLimit: changes are paced per principal; reads are not, and
// one principal's pace does not hold back another.
func TestWriteRateLimit(t *testing.T) {
	s := newStack(t, stackOptions{limits: jit.Limits{MaxOpenRequests: 100, WritesPerMinute: 1, WriteBurst: 2}})
	admin := easyAuth("admin-0", []string{jit.RoleAdmin})
	mallory := easyAuth("mallory", []string{jit.RoleRequester})
	alice := easyAuth("alice", []string{jit.RoleRequester})
	s.must(200, admin, "PUT", "/api/v1/policies/open", policyBody("vm-nic-nsg", nil), nil)

	var r request
	s.must(202, mallory, "POST", "/api/v1/policies/open/initiate", initiate("vm-nic-nsg", "PT1H"), &r)
	s.must(200, mallory, "POST", "/api/v1/requests/"+r.ID+"/revoke", nil, nil)
	after := s.tooMany(mallory, "POST", "/api/v1/policies/open/initiate", initiate("vm-nic-nsg", "PT1H"))
	if after > 60 {
		t.Errorf("Retry-After %d s, want at most a minute at one change a minute", after)
	}
	s.tooMany(mallory, "POST", "/api/v1/requests/"+r.ID+"/extend", map[string]any{"duration": "PT2H"})
	s.must(200, mallory, "GET", "/api/v1/requests/"+r.ID, nil, nil)
	s.must(202, alice, "POST", "/api/v1/policies/open/initiate", initiate("vm-nic-nsg", "PT1H"), nil)
}

// TestOpenRequestLimitUnderConcurrency: asks made at once on one instance
// are counted one after the other, so none slips past the limit.
func TestOpenRequestLimitUnderConcurrency(t *testing.T) {
	s := newStack(t, stackOptions{limits: jit.Limits{MaxOpenRequests: 5, WritesPerMinute: -1}})
	admin := easyAuth("admin-0", []string{jit.RoleAdmin})
	mallory := easyAuth("mallory", []string{jit.RoleRequester})
	s.must(200, admin, "PUT", "/api/v1/policies/gated", policyBody("vm-nic-nsg", map[string]any{
		"approval": map[string]any{"required": true, "approvers": []string{"bob"}}}), nil)
	var wg sync.WaitGroup
	var mu sync.Mutex
	got := map[int]int{}
	for range 30 {
		wg.Go(func() {
			status, _ := s.do(mallory, "POST", "/api/v1/policies/gated/initiate", initiate("vm-nic-nsg", "PT1H"), nil)
			mu.Lock()
			got[status]++
			mu.Unlock()
		})
	}
	wg.Wait()
	if got[202] != 5 || got[429] != 25 {
		t.Errorf("30 asks at once: %v; want 5 accepted (202), 25 refused (429)", got)
	}
}
