package boltstore_test

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"jitaccess/handler/boltstore"
	"jitaccess/handler/jit"
	"jitaccess/handler/localqueue"
)

// The bbolt store with the local queue as outbox stores a new request's
// operations in the request's transaction.
var _ jit.RequestQueuer = (*boltstore.QueuingStore)(nil)

// worker records what the local queue delivers.
type worker struct {
	mu  sync.Mutex
	ops []string
}

func (w *worker) ApplyOperation(_ context.Context, op jit.Operation) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.ops = append(w.ops, op.ID)
	return nil
}

func (w *worker) delivered() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.ops...)
}

// TestCreateRequestQueued stores requests with their operations through the
// real local queue: kept and delivered together, or, when any part is
// refused, none of it kept, across a restart too.
func TestCreateRequestQueued(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "state.db")
	db, s := open(t, path)
	w := &worker{}
	q, err := localqueue.New(db.Bolt(), w, localqueue.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Start(ctx); err != nil {
		t.Fatal(err)
	}
	qs := s.WithOutbox(q)
	now := time.Now().UTC()
	nsg := "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/networkSecurityGroups/n"
	req := func(id string) jit.Request {
		return jit.Request{ID: id, Policy: "p", Requestor: "alice", StartTime: now, Status: jit.RequestActive,
			Grants: []jit.Grant{{VM: "vm", Ports: []int{22}, Protocol: "TCP", Sources: []string{"203.0.113.7"}, End: now.Add(time.Hour),
				Status: jit.GrantInitiating, NSGs: []jit.GrantNSG{{ID: nsg, State: jit.RulePending, CloseTicket: "close-" + id}}}}}
	}
	ops := func(id, nsg string) []jit.Operation {
		return []jit.Operation{
			{ID: "open-" + id, Kind: jit.OpOpen, RequestID: id, NSG: nsg},
			{ID: "close-" + id, Kind: jit.OpClose, RequestID: id, NSG: nsg, Due: now.Add(time.Hour)},
		}
	}
	audit := func(id string) []jit.AuditEvent {
		return []jit.AuditEvent{{ID: "request-" + id + "-0", Time: now, Action: jit.AuditRequest, Actor: "alice", Request: id, Result: jit.ResultSuccess}}
	}
	auditCount := func() int {
		n := 0
		if err := s.ScanAudit(ctx, jit.AuditFilter{}, func(jit.AuditEvent) error { n++; return nil }); err != nil {
			t.Fatal(err)
		}
		return n
	}

	saved, err := qs.CreateRequestQueued(ctx, req("r1"), audit("r1"), ops("r1", nsg))
	if err != nil {
		t.Fatalf("CreateRequestQueued: %v", err)
	}
	if saved.ETag == "" {
		t.Fatal("saved request has no etag")
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(w.delivered()) == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if got := w.delivered(); len(got) != 1 || got[0] != "open-r1" {
		t.Fatalf("delivered %v, want [open-r1] (the close is due in an hour)", got)
	}
	if _, err := s.GetRequest(ctx, "r1"); err != nil {
		t.Fatalf("request not stored: %v", err)
	}

	// The same id again: refused, and neither its audit nor its operations kept.
	if _, err := qs.CreateRequestQueued(ctx, req("r1"), audit("r1-again"), ops("r1-again", nsg)); jit.ErrorCode(err) != jit.ECONFLICT {
		t.Fatalf("duplicate request: err %v, want conflict", err)
	}
	// An operation the queue refuses: neither the request nor its audit kept.
	if _, err := qs.CreateRequestQueued(ctx, req("r2"), audit("r2"), ops("r2", "")); jit.ErrorCode(err) != jit.EINVALID {
		t.Fatalf("operation without NSG: err %v, want invalid", err)
	}
	if _, err := s.GetRequest(ctx, "r2"); jit.ErrorCode(err) != jit.ENOTFOUND {
		t.Fatalf("refused request was stored: %v", err)
	}
	if n := auditCount(); n != 1 {
		t.Fatalf("%d audit events, want 1 (r1's)", n)
	}
	waitPending(t, q, 1)

	// After a restart the queue still holds r1's close and nothing else.
	if err := q.Close(ctx); err != nil {
		t.Fatal(err)
	}
	db.Close()
	db, _ = open(t, path)
	defer db.Close()
	w2 := &worker{}
	q2, err := localqueue.New(db.Bolt(), w2, localqueue.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := q2.Pending(ctx); err != nil || n != 1 {
		t.Fatalf("after restart: %d pending (%v), want 1", n, err)
	}
	if err := q2.Cancel(ctx, []string{"close-r1"}); err != nil {
		t.Fatal(err)
	}
	waitPending(t, q2, 0)
}

func waitPending(t *testing.T, q *localqueue.Queue, want int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		n, err := q.Pending(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if n == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d operations pending, want %d", n, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
