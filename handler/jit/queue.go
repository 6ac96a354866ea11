package jit

import (
	"context"
	"time"
)

// Operation kinds.
const (
	OpOpen  = "open"
	OpClose = "close"
)

// Operation asks the worker to open or close one grant's allow rule in one
// NSG. Operations are idempotent: each may run twice, late, or out of order.
type Operation struct {
	ID        string    `json:"ID"`        // deterministic: the same work always has the same ID
	Kind      string    `json:"Kind"`      // OpOpen or OpClose
	RequestID string    `json:"RequestID"` // the request the grant belongs to
	Grant     int       `json:"Grant"`     // index of the grant in the request
	NSG       string    `json:"NSG"`       // ARM id of the NSG
	Due       time.Time `json:"Due"`       // when to run it; zero means now
}

// Queue carries operations to the worker. A failed operation is delivered
// again later; an operation may also be delivered twice, late or out of
// order, and the worker is safe under all of it. Operations of one NSG may
// be delivered together, so that one ARM write serves them.
//
// Enqueue promises nothing about operations that it did not accept: a
// request stored but whose operations never reached the queue (a crash in
// between) is caught by the sweeper in both modes: a grant not opened
// within Config.StuckAfter is marked failed, and every ended grant is
// closed, queued close or not.
//
// Scheduled closes are never cancelled: a close that comes before its
// grant's end (the grant was extended) or after it was closed (revoked) is
// a no-op, so there is nothing to cancel.
type Queue interface {
	// Enqueue puts ops on the queue, each to run at its Due time; an op
	// whose ID is queued already may be stored once or twice.
	Enqueue(ctx context.Context, ops []Operation) error
}

// Worker is what a Queue delivers operations to.
type Worker interface {
	// ApplyOperations does ops, which all name the same NSG, and returns one
	// error per op, in order: nil means done, an error that the op should be
	// delivered again.
	ApplyOperations(ctx context.Context, ops []Operation) []error
}

// WorkerFunc adapts a function to Worker, for wiring where the service is
// built after the queue that delivers to it.
type WorkerFunc func(ctx context.Context, ops []Operation) []error

// ApplyOperations calls f.
func (f WorkerFunc) ApplyOperations(ctx context.Context, ops []Operation) []error { return f(ctx, ops) }

// OperationFunc adapts a function of one operation to Worker: a batch is
// applied one operation after the other.
type OperationFunc func(ctx context.Context, op Operation) error

// ApplyOperations calls f for each op in turn.
func (f OperationFunc) ApplyOperations(ctx context.Context, ops []Operation) []error {
	errs := make([]error, len(ops))
	for i, op := range ops {
		errs[i] = f(ctx, op)
	}
	return errs
}

// OperationID is the deterministic ID of an operation, so duplicate sends
// are recognisable.
func OperationID(kind, requestID string, grant int, nsgID string, due time.Time) string {
	return kind + "-" + requestID + "-" + itoa(grant) + "-" + ShortHash(nsgID) + "-" + itoa(int(due.Unix()))
}
