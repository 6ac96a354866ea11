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

// Queue carries operations to the worker. Operations for one NSG run one at a
// time (so writes to an NSG never race each other); different NSGs run in
// parallel. A failed operation is delivered again later.
type Queue interface {
	// Enqueue puts ops on the queue, each to run at its Due time. It returns
	// one ticket per op, in order, that Cancel accepts.
	Enqueue(ctx context.Context, ops []Operation) ([]string, error)
	// Cancel removes scheduled operations that have not run yet. Tickets of
	// operations that already ran or are unknown are ignored.
	Cancel(ctx context.Context, tickets []string) error
}

// TicketNamer is implemented by queues whose ticket for an operation is
// known before it is enqueued (the local queue's are the operations' ids).
// The service then stores the close tickets with the new request, and need
// not write the request again once its operations are queued.
type TicketNamer interface {
	TicketFor(op Operation) string
}

// Worker is what a Queue delivers operations to.
type Worker interface {
	// ApplyOperation does op. An error means it should be delivered again.
	ApplyOperation(ctx context.Context, op Operation) error
}

// BatchWorker is a Worker that can also apply several operations of one
// NSG at once, so that a queue holding many due operations of an NSG
// delivers them together (one ARM write instead of one each).
type BatchWorker interface {
	Worker
	// ApplyOperations does ops, which all name the same NSG, and returns one
	// error per op, in order: nil means done, an error that the op should be
	// delivered again.
	ApplyOperations(ctx context.Context, ops []Operation) []error
}

// BatchWorkerFuncs adapts two functions to BatchWorker, for wiring where the
// service is built after the queue that delivers to it.
type BatchWorkerFuncs struct {
	Apply      func(ctx context.Context, op Operation) error
	ApplyBatch func(ctx context.Context, ops []Operation) []error
}

// ApplyOperation calls f.Apply.
func (f BatchWorkerFuncs) ApplyOperation(ctx context.Context, op Operation) error {
	return f.Apply(ctx, op)
}

// ApplyOperations calls f.ApplyBatch.
func (f BatchWorkerFuncs) ApplyOperations(ctx context.Context, ops []Operation) []error {
	return f.ApplyBatch(ctx, ops)
}

// OperationID is the deterministic ID of an operation, so duplicate sends
// are recognisable.
func OperationID(kind, requestID string, grant int, nsgID string, due time.Time) string {
	return kind + "-" + requestID + "-" + itoa(grant) + "-" + ShortHash(nsgID) + "-" + itoa(int(due.Unix()))
}
