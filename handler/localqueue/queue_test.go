package localqueue_test

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"jitaccess/handler/boltstore"
	"jitaccess/handler/jit"
	"jitaccess/handler/localqueue"
	"jitaccess/handler/queuetest"
)

var fast = localqueue.Options{InitialBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond}

func openDB(t *testing.T, path string) *boltstore.DB {
	t.Helper()
	db, err := boltstore.Open(path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return db
}

// start builds and starts a queue on db, and closes it at the end of the
// test (before db, which the caller closes).
func start(t *testing.T, db *boltstore.DB, w jit.Worker, opt localqueue.Options) *localqueue.Queue {
	t.Helper()
	q, err := localqueue.New(db.Bolt(), opt)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := q.Start(context.Background(), w); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { closeQueue(t, q) })
	return q
}

func closeQueue(t *testing.T, q *localqueue.Queue) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := q.Close(ctx); err != nil {
		t.Errorf("Close: %v", err)
	}
}

func TestQueue(t *testing.T) {
	queuetest.Run(t, func(t *testing.T, w jit.Worker) jit.Queue {
		db := openDB(t, filepath.Join(t.TempDir(), "state.db"))
		t.Cleanup(func() { db.Close() })
		return start(t, db, w, fast)
	})
}

func op(name, nsg string, due time.Time) jit.Operation {
	return jit.Operation{ID: "op-" + name, Kind: jit.OpClose, RequestID: name, NSG: nsg, Due: due}
}

const nsgA = "/subscriptions/00000000-0000-0000-0000-00000000000a/resourceGroups/rg/providers/Microsoft.Network/networkSecurityGroups/nsg-a"

func TestDurableAcrossRestart(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "state.db")
	now := time.Now()
	later := now.Add(200 * time.Millisecond)

	db := openDB(t, path)
	r := queuetest.NewRecorder()
	q, err := localqueue.New(db.Bolt(), fast)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := q.Start(ctx, r); err != nil {
		t.Fatalf("Start: %v", err)
	}
	if err := q.Enqueue(ctx, []jit.Operation{op("later", nsgA, later)}); err != nil {
		t.Fatalf("Enqueue: %v", err)
	}
	closeQueue(t, q)
	// A queue that never started still persists what it is given.
	q, err = localqueue.New(db.Bolt(), fast)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := q.Enqueue(ctx, []jit.Operation{op("overdue", "/other/nsg", now.Add(-time.Minute))}); err != nil {
		t.Fatalf("Enqueue: %v", err)
	}
	closeQueue(t, q)
	if err := db.Close(); err != nil {
		t.Fatalf("close db: %v", err)
	}
	if n := len(r.Deliveries()); n != 0 {
		t.Fatalf("%d operations ran before the restart, want none", n)
	}

	db = openDB(t, path)
	defer db.Close()
	r = queuetest.NewRecorder()
	q = start(t, db, r, fast)
	if n, err := q.Pending(ctx); err != nil || n != 2 {
		t.Errorf("after restart, Pending = %d, %v; want 2", n, err)
	}
	queuetest.WaitFor(t, "both operations to run after restart", func() bool { return len(r.Succeeded()) == 2 })
	if got := r.Succeeded(); got[0] != "overdue" || got[1] != "later" {
		t.Errorf("after restart ran %q, want the overdue operation first", got)
	}
	for _, d := range r.Deliveries() {
		if d.Op.RequestID == "later" && d.Start.Round(0).Before(later.Round(0)) {
			t.Errorf("operation due at %v ran early at %v", later, d.Start)
		}
	}
	queuetest.WaitFor(t, "the queue to empty", func() bool { n, _ := q.Pending(ctx); return n == 0 })
}

func TestDuplicateEnqueueRunsOnce(t *testing.T) {
	ctx := context.Background()
	db := openDB(t, filepath.Join(t.TempDir(), "state.db"))
	defer db.Close()
	r := queuetest.NewRecorder()
	q := start(t, db, r, fast)
	o := op("dup", nsgA, time.Now().Add(100*time.Millisecond))
	if err := q.Enqueue(ctx, []jit.Operation{o, o}); err != nil {
		t.Fatalf("Enqueue: %v", err)
	}
	if err := q.Enqueue(ctx, []jit.Operation{o}); err != nil {
		t.Fatalf("Enqueue: %v", err)
	}
	if n, _ := q.Pending(ctx); n != 1 {
		t.Errorf("one operation enqueued thrice: %d pending, want 1", n)
	}
	queuetest.WaitFor(t, "the operation to run", func() bool { return r.Calls(o.ID) == 1 })
	queuetest.WaitFor(t, "the queue to empty", func() bool { n, _ := q.Pending(ctx); return n == 0 })
	// Once it has run, the same ID is new work again.
	again := o
	again.Due = time.Now().Add(100 * time.Millisecond)
	if err := q.Enqueue(ctx, []jit.Operation{again}); err != nil {
		t.Fatalf("Enqueue: %v", err)
	}
	queuetest.WaitFor(t, "the operation to run again", func() bool { return r.Calls(o.ID) == 2 })
}

func TestDeadLetter(t *testing.T) {
	ctx := context.Background()
	db := openDB(t, filepath.Join(t.TempDir(), "state.db"))
	defer db.Close()
	var logs syncBuffer
	opt := fast
	opt.MaxAttempts = 3
	opt.Logger = zerolog.New(&logs)
	r := queuetest.NewRecorder()
	o := op("doomed", nsgA, time.Time{})
	r.FailFirst(o.ID, 1000)
	q := start(t, db, r, opt)
	if err := q.Enqueue(ctx, []jit.Operation{o, op("fine", nsgA, time.Time{})}); err != nil {
		t.Fatalf("Enqueue: %v", err)
	}
	var dls []localqueue.DeadLetter
	queuetest.WaitFor(t, "a dead letter", func() bool {
		dls, _ = q.DeadLetters(ctx)
		return len(dls) == 1
	})
	dl := dls[0]
	if dl.Op.ID != o.ID || dl.Attempts != 3 || !strings.Contains(dl.LastError, "injected failure") || dl.Ticket == "" || dl.DeadAt.IsZero() {
		t.Errorf("dead letter = %+v, want %s after 3 attempts with its last error", dl, o.ID)
	}
	queuetest.WaitFor(t, "the other operation to run", func() bool { return r.Calls("op-fine") == 1 })
	time.Sleep(100 * time.Millisecond)
	if n := r.Calls(o.ID); n != 3 {
		t.Errorf("dead operation delivered %d times, want 3", n)
	}
	if n, err := q.Pending(ctx); err != nil || n != 0 {
		t.Errorf("Pending = %d, %v; want 0", n, err)
	}
	if !strings.Contains(logs.String(), `"op":"op-doomed"`) || !strings.Contains(logs.String(), "dead letters") {
		t.Errorf("dead letter not logged with the op id: %s", logs.String())
	}
}

func TestCloseWaitsForRunningOperation(t *testing.T) {
	ctx := context.Background()
	db := openDB(t, filepath.Join(t.TempDir(), "state.db"))
	defer db.Close()
	started := make(chan struct{})
	var finished bool
	var mu sync.Mutex
	w := jit.OperationFunc(func(ctx context.Context, op jit.Operation) error {
		close(started)
		time.Sleep(200 * time.Millisecond)
		mu.Lock()
		finished = true
		mu.Unlock()
		return nil
	})
	q, err := localqueue.New(db.Bolt(), fast)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := q.Start(ctx, w); err != nil {
		t.Fatalf("Start: %v", err)
	}
	if err := q.Enqueue(ctx, []jit.Operation{op("slow", nsgA, time.Time{})}); err != nil {
		t.Fatalf("Enqueue: %v", err)
	}
	<-started
	closeQueue(t, q)
	mu.Lock()
	defer mu.Unlock()
	if !finished {
		t.Errorf("Close returned before the running operation finished")
	}
	if n, _ := q.Pending(ctx); n != 0 {
		t.Errorf("Pending = %d after the operation finished, want 0", n)
	}
}

func TestCloseGivesUpAtDeadline(t *testing.T) {
	ctx := context.Background()
	db := openDB(t, filepath.Join(t.TempDir(), "state.db"))
	defer db.Close()
	started := make(chan struct{})
	w := jit.OperationFunc(func(ctx context.Context, op jit.Operation) error {
		close(started)
		<-ctx.Done() // only Close's deadline ends it
		return ctx.Err()
	})
	q, err := localqueue.New(db.Bolt(), fast)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := q.Start(ctx, w); err != nil {
		t.Fatalf("Start: %v", err)
	}
	if err := q.Enqueue(ctx, []jit.Operation{op("stuck", nsgA, time.Time{})}); err != nil {
		t.Fatalf("Enqueue: %v", err)
	}
	<-started
	cctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if err := q.Close(cctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Close = %v, want a deadline error", err)
	}
	// The operation stays queued for the next start.
	time.Sleep(50 * time.Millisecond)
	if n, _ := q.Pending(ctx); n != 1 {
		t.Errorf("Pending = %d after an interrupted operation, want 1", n)
	}
}

func TestEnqueueInvalid(t *testing.T) {
	db := openDB(t, filepath.Join(t.TempDir(), "state.db"))
	defer db.Close()
	q := start(t, db, queuetest.NewRecorder(), fast)
	for _, o := range []jit.Operation{{NSG: nsgA}, {ID: "no-nsg"}} {
		err := q.Enqueue(context.Background(), []jit.Operation{op("ok", nsgA, time.Time{}), o})
		if jit.ErrorCode(err) != jit.EINVALID {
			t.Errorf("Enqueue(%+v) = %v, want EINVALID", o, err)
		}
	}
	if n, _ := q.Pending(context.Background()); n != 0 {
		t.Errorf("an invalid batch queued %d operations, want none", n)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
