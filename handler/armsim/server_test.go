package armsim

import (
	"net/http/httptest"
	"testing"
	"time"
)

// The simulator keeps the last keptOperations operations, so long runs do
// not grow without bound, and forgets the oldest first.
func TestOldOperationsForgotten(t *testing.T) {
	s := New(Options{})
	r := httptest.NewRequest("PUT", "/?api-version=2025-05-01", nil)
	var first, second string
	for i := range keptOperations + 1 {
		url, _ := s.newOperation(r, DemoSubscription, DemoLocation, nil, time.Time{})
		switch i {
		case 0:
			first = url
		case 1:
			second = url
		}
	}
	if len(s.ops) != keptOperations {
		t.Errorf("%d operations kept, want %d", len(s.ops), keptOperations)
	}
	poll := func(url string) int {
		w := httptest.NewRecorder()
		s.ServeHTTP(w, httptest.NewRequest("GET", url, nil))
		return w.Code
	}
	if code := poll(first); code != 404 {
		t.Errorf("oldest operation polled: %d, want 404", code)
	}
	if code := poll(second); code != 200 {
		t.Errorf("operation %d newer ones old polled: %d, want 200", keptOperations-1, code)
	}
}
