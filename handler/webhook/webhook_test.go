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

func fast() Options { return Options{InitialDelay: time.Millisecond, MaxDelay: 5 * time.Millisecond} }

func TestRetriesUntilDelivered(t *testing.T) {
	s := &sink{failures: 2}
	srv := httptest.NewServer(s)
	defer srv.Close()
	n, err := New(srv.URL, fast())
	if err != nil {
		t.Fatal(err)
	}
	n.Notify(opened())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	n.Close(ctx)
	got := s.received()
	if len(got) != 1 || s.calls != 3 {
		t.Fatalf("delivered %d after %d calls, want 1 after 3", len(got), s.calls)
	}
	if !strings.Contains(got[0].Text, "vm-1 port 22") || !strings.Contains(got[0].Text, "is open") || got[0].JITAccess.Event != "opened" {
		t.Errorf("message %+v", got[0])
	}
}

func TestGivesUpOnClientErrors(t *testing.T) {
	s := &sink{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.calls++
		s.mu.Unlock()
		http.Error(w, "gone", http.StatusGone)
	}))
	defer srv.Close()
	n, _ := New(srv.URL, fast())
	n.Notify(opened())
	n.Close(context.Background())
	if s.calls != 1 {
		t.Errorf("a 410 was retried: %d calls", s.calls)
	}
}

// Notify never blocks, even when the webhook hangs and the backlog is full.
func TestNotifyNeverBlocks(t *testing.T) {
	s := &sink{block: make(chan struct{})}
	srv := httptest.NewServer(s)
	defer srv.Close()
	defer close(s.block)
	o := fast()
	o.Backlog = 3
	n, _ := New(srv.URL, o)
	done := make(chan struct{})
	go func() {
		for range 100 {
			n.Notify(opened())
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Notify blocked on a hanging webhook")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	n.Close(ctx) // gives up on the hanging delivery when ctx ends
}

func TestRejectsPlainHTTP(t *testing.T) {
	if _, err := New("http://example.com/hook", Options{}); err == nil {
		t.Error("a plain http webhook URL was accepted")
	}
}

// TestNotifyAfterClose: a sweep or event still running while the process
// shuts down may notify after Close; that drops the notification instead
// of panicking on a closed channel (it panicked before).
func TestNotifyAfterClose(t *testing.T) {
	s := &sink{}
	srv := httptest.NewServer(s)
	defer srv.Close()
	n, _ := New(srv.URL, fast())
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 200 {
				n.Notify(opened())
			}
		})
	}
	n.Close(context.Background())
	n.Notify(opened())
	wg.Wait()
	n.Close(context.Background()) // twice is harmless
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
