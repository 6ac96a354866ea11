package webhook

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"jitaccess/handler/jit"
)

type sink struct {
	mu       sync.Mutex
	failures int // answer 503 this many times first
	got      []message
	calls    int
	block    chan struct{}
}

func (s *sink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if s.block != nil {
		<-s.block
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	if r.Header.Get("Content-Type") != "application/json" {
		http.Error(w, "json only", http.StatusUnsupportedMediaType)
		return
	}
	if s.failures > 0 {
		s.failures--
		http.Error(w, "busy", http.StatusServiceUnavailable)
		return
	}
	b, _ := io.ReadAll(r.Body)
	var m message
	if err := json.Unmarshal(b, &m); err != nil || m.Text == "" {
		http.Error(w, "Teams and Slack need a text field", http.StatusBadRequest)
		return
	}
	s.got = append(s.got, m)
}

func (s *sink) received() []message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]message(nil), s.got...)
}

func opened() jit.Notification {
	return jit.Notification{Event: jit.EventOpened, Time: time.Now(), Request: "r1", Policy: "p", Requestor: "alice",
		VMs: []string{"/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/virtualMachines/vm-1"}, Ports: []int{22},
		End: time.Now().Add(time.Hour)}
}

// TestDeliver: one try per call, the outcome in the error (the service
// keeps the notification and retries), the id as an idempotency key.
func TestDeliver(t *testing.T) {
	s := &sink{failures: 1}
	var keys []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		keys = append(keys, r.Header.Get("Idempotency-Key"))
		s.mu.Unlock()
		s.ServeHTTP(w, r)
	}))
	defer srv.Close()
	n, err := New(srv.URL, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ev := opened()
	ev.ID = "20261204T120000.000000000-open-abc"
	if err := n.Deliver(context.Background(), ev); err == nil || jit.IsPermanent(err) {
		t.Fatalf("a 503 gave %v, want an error to retry", err)
	}
	if err := n.Deliver(context.Background(), ev); err != nil {
		t.Fatalf("second try: %v", err)
	}
	got := s.received()
	if len(got) != 1 || s.calls != 2 {
		t.Fatalf("delivered %d after %d calls, want 1 after 2", len(got), s.calls)
	}
	if !strings.Contains(got[0].Text, "vm-1 port 22") || !strings.Contains(got[0].Text, "is open") || got[0].JITAccess.Event != "opened" || got[0].JITAccess.ID != ev.ID {
		t.Errorf("message %+v", got[0])
	}
	if len(keys) != 2 || keys[0] != ev.ID || keys[1] != ev.ID {
		t.Errorf("Idempotency-Key headers %q, want the notification's id on both tries", keys)
	}
}

// A refusal of the message itself is permanent; a timeout or throttling
// is not.
func TestPermanentRefusals(t *testing.T) {
	for _, tc := range []struct {
		status    int
		permanent bool
	}{{http.StatusGone, true}, {http.StatusBadRequest, true}, {http.StatusTooManyRequests, false}, {http.StatusRequestTimeout, false}, {http.StatusBadGateway, false}} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { http.Error(w, "no", tc.status) }))
		n, _ := New(srv.URL, Options{})
		err := n.Deliver(context.Background(), opened())
		srv.Close()
		if err == nil {
			t.Errorf("%d: no error", tc.status)
			continue
		}
		if got := jit.IsPermanent(err); got != tc.permanent {
			t.Errorf("%d: permanent %v, want %v (%v)", tc.status, got, tc.permanent, err)
		}
	}
}

func TestRejectsPlainHTTP(t *testing.T) {
	if _, err := New("http://example.com/hook", Options{}); err == nil {
		t.Error("a plain http webhook URL was accepted")
	}
}

// TestUserTextIsEscaped: a justification, comment or name reaches Slack and
// Teams as text, never as a mention, a link or markup, and is capped.
// Before the fix the justification below went out verbatim.
func TestUserTextIsEscaped(t *testing.T) {
	evil := "<!channel> urgent <https://evil.example/approve|Approve in jitaccess> [Approve](https://evil.example/a) <a href=\"https://evil.example\">x</a> <@U123> <!here> a&b\nfake: request r2 was approved"
	tests := []struct {
		name string
		ev   jit.Notification
	}{
		{"justification", func() jit.Notification { e := opened(); e.Event = jit.EventPending; e.Detail = evil; return e }()},
		{"approver comment", func() jit.Notification { e := opened(); e.Event = jit.EventDenied; e.Detail = evil; return e }()},
		{"requestor", func() jit.Notification { e := opened(); e.Requestor = evil; return e }()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			text := payload(tt.ev).Text
			for _, bad := range []string{"<", ">", "\n", "<!channel>", "<!here>", "<@U123>", "a&b"} {
				if strings.Contains(text, bad) {
					t.Errorf("text contains %q: %s", bad, text)
				}
			}
			for _, want := range []string{"&lt;!channel&gt;", "&lt;@U123&gt;", "a&amp;b", `\[Approve\]`} {
				if !strings.Contains(text, want) {
					t.Errorf("text lacks %q: %s", want, text)
				}
			}
			if !strings.HasPrefix(text, "jitaccess: request r1 by ") {
				t.Errorf("text does not start with the service's own words: %s", text)
			}
		})
	}
}

func TestUserTextIsCapped(t *testing.T) {
	e := opened()
	e.Event = jit.EventPending
	e.Detail = strings.Repeat("é", 1000)
	text := payload(e).Text
	if n := strings.Count(text, "é"); n != maxUserText-1 || !strings.Contains(text, "é…") {
		t.Errorf("kept %d of 1000 runes (want %d and an ellipsis): %s", n, maxUserText-1, text)
	}
	if got := payload(e).JITAccess.Detail; got != e.Detail {
		t.Error("the machine-readable detail was changed")
	}
}
