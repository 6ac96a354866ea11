package httpapi_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"jitaccess/handler/jit"
)

// TestNotificationsAreRetried: a receiver that fails gets the notification
// again (same id) until it takes it, once; one that never does costs the
// notification after the last try, and the trail says so.
func TestNotificationsAreRetried(t *testing.T) {
	notes := &recordedNotifications{fail: 3}
	s := newStack(t, stackOptions{notifier: notes, noticeBackoff: 10 * time.Millisecond})
	admin := easyAuth("admin-0", []string{jit.RoleAdmin})
	alice := easyAuth("alice", []string{jit.RoleRequester})
	s.must(200, admin, "PUT", "/api/v1/policies/gated", policyWithPorts("vm-nic-nsg",
		map[string]any{"required": true, "approvers": []string{"bob"}}, portBody(22, "*", nil)), nil)
	var r request
	s.must(202, alice, "POST", "/api/v1/policies/gated/initiate", initiate("vm-nic-nsg", "PT5M"), &r)
	ctx := t.Context()
	waitFor(t, "the pending notification after three failed tries", func() bool {
		if _, err := s.rec.DeliverNotices(ctx); err != nil {
			t.Fatal(err)
		}
		return len(notes.events(r.ID)) > 0
	})
	time.Sleep(50 * time.Millisecond)
	if _, err := s.rec.DeliverNotices(ctx); err != nil {
		t.Fatal(err)
	}
	notes.mu.Lock()
	got := slices.Clone(notes.got)
	notes.mu.Unlock()
	if len(got) != 1 || got[0].Event != jit.EventPending || got[0].ID != "request-"+r.ID+"-0" {
		t.Fatalf("delivered %+v, want the pending notification once, its id the request's audit event", got)
	}
	if due, _ := s.store.DueNotices(ctx, time.Now().Add(time.Hour), 10); len(due) != 0 {
		t.Errorf("notices still due after delivery: %+v", due)
	}

	// A receiver that never takes it: dropped after the last try, audited.
	notes.mu.Lock()
	notes.fail = 1000
	notes.mu.Unlock()
	s.must(200, admin, "POST", "/api/v1/requests/"+r.ID+"/revoke", nil, nil)
	waitFor(t, "the revoked notification to be given up", func() bool {
		if _, err := s.rec.DeliverNotices(ctx); err != nil {
			t.Fatal(err)
		}
		due, _ := s.store.DueNotices(ctx, time.Now().Add(time.Hour), 10)
		return len(due) == 0
	})
	var undelivered []jit.AuditEvent
	_ = s.store.ScanAudit(ctx, jit.AuditFilter{}, func(ev jit.AuditEvent) error {
		if strings.HasPrefix(ev.ID, "undelivered-") {
			undelivered = append(undelivered, ev)
		}
		return nil
	})
	if len(undelivered) != 1 || undelivered[0].Request != r.ID || !strings.Contains(undelivered[0].Detail, "revoked notification was not delivered after 8 tries") {
		t.Fatalf("audit of the undelivered notification: %+v", undelivered)
	}
	notes.mu.Lock()
	defer notes.mu.Unlock()
	if notes.fail != 1000-8 {
		t.Errorf("%d tries, want 8", 1000-notes.fail)
	}
}

// TestNotificationsWithoutNotifier: with no webhook set, nothing waits for
// a delivery that will never come.
func TestNotificationsWithoutNotifier(t *testing.T) {
	s := newStack(t, stackOptions{})
	admin := easyAuth("admin-0", []string{jit.RoleAdmin})
	s.must(200, admin, "PUT", "/api/v1/policies/p", policyBody("vm-nic-nsg", nil), nil)
	var r request
	s.must(202, admin, "POST", "/api/v1/policies/p/initiate", initiate("vm-nic-nsg", "PT5M"), &r)
	s.must(200, admin, "POST", "/api/v1/requests/"+r.ID+"/revoke", nil, nil)
	if due, _ := s.store.DueNotices(context.Background(), time.Now().Add(time.Hour), 10); len(due) != 0 {
		t.Errorf("notices waiting without a notifier: %+v", due)
	}
}
