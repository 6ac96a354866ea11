// Package queuetest is the behaviour suite every jit.Queue must pass: the
// local queue runs it on a bbolt file and the Service Bus adapter against its
// test double, so that both twins deliver the same way.
//
// It depends on jit and the standard library's testing only. It waits by
// polling with a generous deadline and asserts order and "not before due",
// never tight upper bounds on timing: test machines are shared and noisy.
package queuetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"jitaccess/handler/jit"
)

// Run runs the suite. newQueue must return a started queue that delivers to
// w, with a short retry backoff (tens of milliseconds), and stop it with
// t.Cleanup.
func Run(t *testing.T, newQueue func(t *testing.T, w jit.Worker) jit.Queue) {
	tests := []struct {
		name string
		fn   func(t *testing.T, newQueue func(t *testing.T, w jit.Worker) jit.Queue)
	}{
		{"DueNowRunsPromptly", testDueNow},
		{"NotBeforeDue", testNotBeforeDue},
		{"RedeliveredUntilSuccess", testRedelivery},
		{"SameNSGSerialInDueOrder", testSameNSG},
		{"DifferentNSGsInParallel", testParallel},
		{"DuplicateDeliveredOnce", testDuplicate},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, newQueue) })
	}
}

// waitLimit bounds every wait for something that should happen.
const waitLimit = 5 * time.Second

var (
	nsg1 = "/subscriptions/00000000-0000-0000-0000-00000000000a/resourceGroups/RG-One/providers/Microsoft.Network/networkSecurityGroups/NSG-One"
	nsg2 = "/subscriptions/00000000-0000-0000-0000-00000000000a/resourceGroups/RG-One/providers/Microsoft.Network/networkSecurityGroups/nsg-two"
	nsg3 = "/subscriptions/00000000-0000-0000-0000-00000000000a/resourceGroups/rg-two/providers/Microsoft.Network/networkSecurityGroups/nsg-three"
	nsg4 = "/subscriptions/00000000-0000-0000-0000-00000000000b/resourceGroups/rg-two/providers/Microsoft.Network/networkSecurityGroups/nsg-four"
)

// newOp returns an operation with a unique, recognisable ID. name is a short
// label that tests assert on.
func newOp(name, nsg string, due time.Time) jit.Operation {
	return jit.Operation{
		ID:        "test-" + name + "-" + jit.ShortHash(nsg),
		Kind:      jit.OpOpen,
		RequestID: "req-" + name,
		NSG:       nsg,
		Due:       due,
	}
}

func label(op jit.Operation) string { return strings.TrimPrefix(op.RequestID, "req-") }

// Recorder is the suite's worker: it records each delivery, can fail the
// first deliveries of an operation, and tracks how many operations run at
// once, per NSG and overall.
type Recorder struct {
	// Hold is how long each delivery takes.
	Hold time.Duration
	// Gate, when set, makes each delivery wait (up to waitLimit) until at
	// least Gate deliveries run at once.
	Gate int

	mu         sync.Mutex
	failFirst  map[string]int
	calls      map[string]int
	done       []Delivery
	running    map[string]int // by lower-case NSG
	total      int
	maxPerNSG  int
	maxOverall int
}

// Delivery is one call of the worker.
type Delivery struct {
	Op    jit.Operation
	Start time.Time
	Err   error
}

// NewRecorder returns a worker that succeeds at once.
func NewRecorder() *Recorder {
	return &Recorder{failFirst: map[string]int{}, calls: map[string]int{}, running: map[string]int{}}
}

// FailFirst makes the first n deliveries of the operation with that ID fail.
func (r *Recorder) FailFirst(id string, n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.failFirst[id] = n
}

// ApplyOperations implements jit.Worker: the operations of a batch one
// after the other.
func (r *Recorder) ApplyOperations(ctx context.Context, ops []jit.Operation) []error {
	errs := make([]error, len(ops))
	for i, op := range ops {
		errs[i] = r.apply(op)
	}
	return errs
}

func (r *Recorder) apply(op jit.Operation) error {
	start := time.Now()
	nsg := strings.ToLower(op.NSG)
	r.mu.Lock()
	r.calls[op.ID]++
	fail := r.calls[op.ID] <= r.failFirst[op.ID]
	r.running[nsg]++
	r.total++
	r.maxPerNSG = max(r.maxPerNSG, r.running[nsg])
	r.maxOverall = max(r.maxOverall, r.total)
	r.mu.Unlock()

	if r.Gate > 0 {
		for deadline := time.Now().Add(waitLimit); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			r.mu.Lock()
			enough := r.maxOverall >= r.Gate
			r.mu.Unlock()
			if enough {
				break
			}
		}
	}
	time.Sleep(r.Hold)

	var err error
	if fail {
		err = errors.New("injected failure")
	}
	r.mu.Lock()
	r.running[nsg]--
	r.total--
	r.done = append(r.done, Delivery{Op: op, Start: start, Err: err})
	r.mu.Unlock()
	return err
}

// Deliveries returns the finished deliveries in the order they finished.
func (r *Recorder) Deliveries() []Delivery {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.done)
}

// Succeeded returns the labels of the operations that succeeded, in the
// order they finished.
func (r *Recorder) Succeeded() []string {
	var names []string
	for _, d := range r.Deliveries() {
		if d.Err == nil {
			names = append(names, label(d.Op))
		}
	}
	return names
}

// Calls returns how often the operation with that ID was delivered.
func (r *Recorder) Calls(id string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls[id]
}

// WaitFor polls cond until it holds or waitLimit passes.
func WaitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(waitLimit); ; time.Sleep(5 * time.Millisecond) {
		if cond() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", waitLimit, what)
		}
	}
}

func succeeded(r *Recorder, names ...string) func() bool {
	return func() bool {
		got := r.Succeeded()
		for _, n := range names {
			if !slices.Contains(got, n) {
				return false
			}
		}
		return true
	}
}

func enqueue(t *testing.T, q jit.Queue, ops ...jit.Operation) {
	t.Helper()
	if err := q.Enqueue(context.Background(), ops); err != nil {
		t.Fatalf("Enqueue: %v", err)
	}
}

func testDueNow(t *testing.T, newQueue func(*testing.T, jit.Worker) jit.Queue) {
	r := NewRecorder()
	q := newQueue(t, r)
	now := time.Now()
	enqueue(t, q, newOp("zero-due", nsg1, time.Time{}), newOp("overdue", nsg2, now.Add(-time.Hour)), newOp("now", nsg3, now))
	WaitFor(t, "operations due now to run", succeeded(r, "zero-due", "overdue", "now"))
}

func testNotBeforeDue(t *testing.T, newQueue func(*testing.T, jit.Worker) jit.Queue) {
	r := NewRecorder()
	q := newQueue(t, r)
	due := time.Now().Add(300 * time.Millisecond)
	enqueue(t, q, newOp("later", nsg1, due))
	WaitFor(t, "the operation due in 300ms to run", succeeded(r, "later"))
	d := r.Deliveries()[0]
	// Wall clock on both sides: a queue can only honour due times by it.
	if d.Start.Round(0).Before(due.Round(0)) {
		t.Errorf("operation due at %s ran %s early", due.Format(time.RFC3339Nano), due.Sub(d.Start))
	}
	t.Logf("ran %s after its due time", d.Start.Round(0).Sub(due.Round(0)))
	if !d.Op.Due.Equal(due) {
		t.Errorf("delivered operation has Due %v, want %v", d.Op.Due, due)
	}
}

func testRedelivery(t *testing.T, newQueue func(*testing.T, jit.Worker) jit.Queue) {
	r := NewRecorder()
	q := newQueue(t, r)
	op := newOp("flaky", nsg1, time.Time{})
	r.FailFirst(op.ID, 2)
	enqueue(t, q, op)
	WaitFor(t, "the failing operation to succeed", succeeded(r, "flaky"))
	time.Sleep(200 * time.Millisecond) // room for a wrong fourth delivery
	if n := r.Calls(op.ID); n != 3 {
		t.Errorf("operation delivered %d times, want 3 (two failures, one success)", n)
	}
	for _, d := range r.Deliveries() {
		if !sameOp(d.Op, op) {
			t.Errorf("redelivered %+v, want the operation unchanged: %+v", d.Op, op)
		}
	}
}

func testSameNSG(t *testing.T, newQueue func(*testing.T, jit.Worker) jit.Queue) {
	r := NewRecorder()
	r.Hold = 30 * time.Millisecond
	q := newQueue(t, r)
	// Every operation is enqueued before the first falls due: the margin is
	// generous so that a loaded machine fails nothing, and a machine too slow
	// for it fails the test instead of skipping it.
	base := time.Now().Add(2 * time.Second)
	ms := func(n int) time.Time { return base.Add(time.Duration(n) * time.Millisecond) }
	// One NSG, spelled in two cases; enqueued out of due order, with two
	// pairs of equal due times that must keep their enqueue order.
	lower := strings.ToLower(nsg1)
	enqueue(t, q, newOp("o3", nsg1, ms(40)))
	enqueue(t, q, newOp("o1", lower, ms(0)))
	enqueue(t, q, newOp("o4a", lower, ms(60)), newOp("o4b", nsg1, ms(60)))
	enqueue(t, q, newOp("o5", nsg1, ms(0)))
	enqueue(t, q, newOp("o2", lower, ms(20)))
	// Operations of another NSG fall due in between, so the queue is woken
	// while one of nsg1's runs and must still hold nsg1's next one back.
	var others []jit.Operation
	for i := range 12 {
		others = append(others, newOp(fmt.Sprintf("other%d", i), nsg2, ms(5+10*i)))
	}
	enqueue(t, q, others...)
	if late := time.Since(base.Add(-50 * time.Millisecond)); late > 0 {
		t.Fatalf("enqueueing 17 operations took over 1.95 s (%s too long): due order cannot be tested", late)
	}
	want := []string{"o1", "o5", "o2", "o3", "o4a", "o4b"}
	time.Sleep(time.Until(base)) // WaitFor's limit counts from the first due time
	WaitFor(t, "all operations to run", succeeded(r, want...))
	var got []string
	for _, name := range r.Succeeded() {
		if !strings.HasPrefix(name, "other") {
			got = append(got, name)
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("operations of one NSG ran in order %q, want %q (due, then enqueue order)", got, want)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.maxPerNSG != 1 {
		t.Errorf("%d operations of one NSG ran at once, want 1", r.maxPerNSG)
	}
}

func testParallel(t *testing.T, newQueue func(*testing.T, jit.Worker) jit.Queue) {
	r := NewRecorder()
	r.Gate = 2
	q := newQueue(t, r)
	enqueue(t, q,
		newOp("p1", nsg1, time.Time{}),
		newOp("p2", nsg2, time.Time{}),
		newOp("p3", nsg3, time.Time{}),
		newOp("p4", nsg4, time.Time{}),
	)
	WaitFor(t, "all operations to run", succeeded(r, "p1", "p2", "p3", "p4"))
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.maxOverall < 2 {
		t.Errorf("operations of different NSGs never ran at the same time")
	}
	if r.maxPerNSG != 1 {
		t.Errorf("%d operations of one NSG ran at once, want 1", r.maxPerNSG)
	}
}

func testDuplicate(t *testing.T, newQueue func(*testing.T, jit.Worker) jit.Queue) {
	r := NewRecorder()
	q := newQueue(t, r)
	now := time.Now()
	op := newOp("dup", nsg1, now.Add(200*time.Millisecond))
	enqueue(t, q, op, op)
	enqueue(t, q, op)
	enqueue(t, q, newOp("marker", nsg1, now.Add(400*time.Millisecond)))
	WaitFor(t, "the operations to run", succeeded(r, "dup", "marker"))
	time.Sleep(100 * time.Millisecond)
	if n := r.Calls(op.ID); n != 1 {
		t.Errorf("operation enqueued three times was delivered %d times, want 1", n)
	}
}

func sameOp(a, b jit.Operation) bool {
	return a.ID == b.ID && a.Kind == b.Kind && a.RequestID == b.RequestID && a.Grant == b.Grant &&
		a.NSG == b.NSG && a.Due.Equal(b.Due)
}

// String helps failure messages.
func (d Delivery) String() string {
	return fmt.Sprintf("%s@%s(err=%v)", label(d.Op), d.Start.Format("15:04:05.000"), d.Err)
}
