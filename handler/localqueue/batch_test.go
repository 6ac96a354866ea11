package localqueue_test

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"jitaccess/handler/jit"
	"jitaccess/handler/localqueue"
	"jitaccess/handler/queuetest"
)

const nsgB = "/subscriptions/00000000-0000-0000-0000-00000000000a/resourceGroups/rg/providers/Microsoft.Network/networkSecurityGroups/nsg-b"

// batchWorker is a jit.Worker that records each delivery's op IDs.
type batchWorker struct {
	mu          sync.Mutex
	deliveries  [][]string
	failures    map[string]int // op ID → failures left
	hold        chan struct{}  // when set, deliveries wait for it to close
	running     int
	maxParallel int
	mixed       bool // a delivery held ops of different NSGs
}

func newBatchWorker() *batchWorker { return &batchWorker{failures: map[string]int{}} }

func (b *batchWorker) ApplyOperations(ctx context.Context, ops []jit.Operation) []error {
	b.mu.Lock()
	ids := make([]string, len(ops))
	errs := make([]error, len(ops))
	for i, op := range ops {
		ids[i] = op.ID
		if !jit.SameID(op.NSG, ops[0].NSG) {
			b.mixed = true
		}
		if b.failures[op.ID] > 0 {
			b.failures[op.ID]--
			errs[i] = errors.New("injected failure")
		}
	}
	b.deliveries = append(b.deliveries, ids)
	b.running++
	b.maxParallel = max(b.maxParallel, b.running)
	hold := b.hold
	b.mu.Unlock()
	if hold != nil {
		<-hold
	}
	b.mu.Lock()
	b.running--
	b.mu.Unlock()
	return errs
}

func (b *batchWorker) snapshot() (deliveries [][]string, maxParallel int, mixed bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.deliveries), b.maxParallel, b.mixed
}

// enqueueThenStart queues ops before the dispatcher runs, so that they are
// all due and waiting when it first looks.
func enqueueThenStart(t *testing.T, w jit.Worker, ops []jit.Operation) *localqueue.Queue {
	t.Helper()
	db := openDB(t, filepath.Join(t.TempDir(), "state.db"))
	t.Cleanup(func() { db.Close() })
	q, err := localqueue.New(db.Bolt(), fast)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { closeQueue(t, q) })
	if err := q.Enqueue(context.Background(), ops); err != nil {
		t.Fatalf("Enqueue: %v", err)
	}
	if err := q.Start(context.Background(), w); err != nil {
		t.Fatalf("Start: %v", err)
	}
	return q
}

func TestBatchDeliversDueOperationsOfAnNSGTogether(t *testing.T) {
	now := time.Now()
	w := newBatchWorker()
	w.hold = make(chan struct{})
	ops := []jit.Operation{
		op("c", nsgA, now.Add(-1*time.Second)),
		op("a", nsgA, now.Add(-3*time.Second)),
		op("b", nsgA, now.Add(-2*time.Second)),
		op("later", nsgA, now.Add(time.Hour)),
	}
	q := enqueueThenStart(t, w, ops)
	queuetest.WaitFor(t, "the first delivery", func() bool { d, _, _ := w.snapshot(); return len(d) == 1 })
	// Queued while the NSG's batch runs: it waits for the batch to finish.
	if err := q.Enqueue(context.Background(), []jit.Operation{op("d", nsgA, time.Time{})}); err != nil {
		t.Fatalf("Enqueue: %v", err)
	}
	time.Sleep(100 * time.Millisecond)
	if d, _, _ := w.snapshot(); len(d) != 1 {
		t.Fatalf("deliveries %v while the NSG's batch was running, want 1", d)
	}
	close(w.hold)
	queuetest.WaitFor(t, "the second delivery", func() bool { d, _, _ := w.snapshot(); return len(d) == 2 })
	d, _, _ := w.snapshot()
	if want := []string{"op-a", "op-b", "op-c"}; !slices.Equal(d[0], want) {
		t.Errorf("first delivery %v, want %v (due, in due order; not the one due later)", d[0], want)
	}
	if want := []string{"op-d"}; !slices.Equal(d[1], want) {
		t.Errorf("second delivery %v, want %v", d[1], want)
	}
}

func TestBatchFailedOperationRetriedAlone(t *testing.T) {
	w := newBatchWorker()
	w.failures["op-b"] = 1
	q := enqueueThenStart(t, w, []jit.Operation{op("a", nsgA, time.Time{}), op("b", nsgA, time.Time{}), op("c", nsgA, time.Time{})})
	queuetest.WaitFor(t, "the retry", func() bool { d, _, _ := w.snapshot(); return len(d) == 2 })
	queuetest.WaitFor(t, "the queue to empty", func() bool { n, _ := q.Pending(context.Background()); return n == 0 })
	d, _, _ := w.snapshot()
	if want := [][]string{{"op-a", "op-b", "op-c"}, {"op-b"}}; !slices.EqualFunc(d, want, slices.Equal) {
		t.Errorf("deliveries %v, want %v", d, want)
	}
}

func TestBatchDifferentNSGsInParallel(t *testing.T) {
	w := newBatchWorker()
	w.hold = make(chan struct{})
	enqueueThenStart(t, w, []jit.Operation{op("a1", nsgA, time.Time{}), op("b1", nsgB, time.Time{}), op("a2", nsgA, time.Time{}), op("b2", nsgB, time.Time{})})
	queuetest.WaitFor(t, "both NSGs' deliveries to run at once", func() bool { _, p, _ := w.snapshot(); return p == 2 })
	close(w.hold)
	d, _, mixed := w.snapshot()
	if mixed {
		t.Errorf("a delivery mixed NSGs: %v", d)
	}
	slices.SortFunc(d, func(a, b []string) int { return slices.Compare(a, b) })
	if want := [][]string{{"op-a1", "op-a2"}, {"op-b1", "op-b2"}}; !slices.EqualFunc(d, want, slices.Equal) {
		t.Errorf("deliveries %v, want %v", d, want)
	}
}
