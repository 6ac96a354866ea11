package main

import (
	"context"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"jitaccess/handler/armsim"
	"jitaccess/handler/jit"
)

// Fault injection for local mode's fault tests (JIT_ARM_FAULT_RATE,
// JIT_CHAOS_DROP_CLOSES, JIT_CHAOS_DUPLICATE). Never set them for real use:
// they exist to prove that access still ends when ARM fails and messages
// are lost or repeated.

// armChaos makes the simulator answer that share of ARM writes with a fault,
// the kinds in equal parts: 429 with Retry-After, 409
// AnotherOperationInProgress, 429 RetryableErrorDueToAnotherOperation, 500,
// and writes accepted whose long-running operation then ends Failed
// (superseded by another operation, or an internal error).
func armChaos(rate float64) *armsim.Chaos {
	faults := []armsim.Fault{
		armsim.Throttled(200 * time.Millisecond),
		armsim.AnotherOperationInProgress(),
		{Status: http.StatusTooManyRequests, Code: "RetryableErrorDueToAnotherOperation", RetryAfter: 100 * time.Millisecond,
			Message: "Operation is not allowed because another operation on the resource is in progress. Retry later."},
		armsim.InternalServerError(),
		armsim.LROFailed("CanceledAndSupersededDueToAnotherOperation"),
		armsim.LROFailed("InternalServerError"),
	}
	// Tried in order, at most one per call: each probability is conditional
	// on the ones before it not applying, so every kind gets rate/len.
	share := rate / float64(len(faults))
	c := &armsim.Chaos{Seed: uint64(time.Now().UnixNano()), Target: armsim.Writes}
	for i, f := range faults {
		c.Faults = append(c.Faults, armsim.ChaosFault{Probability: share / (1 - float64(i)*share), Fault: f})
	}
	return c
}

// chaosQueue loses and repeats close operations on their way to the queue,
// as a broker that drops or redelivers messages would.
type chaosQueue struct {
	jit.Queue
	drop, dup float64
	log       zerolog.Logger
	mu        sync.Mutex
	rng       *rand.Rand
}

func newChaosQueue(q jit.Queue, drop, dup float64, log zerolog.Logger) *chaosQueue {
	return &chaosQueue{Queue: q, drop: drop, dup: dup, log: log, rng: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))}
}

func (c *chaosQueue) Enqueue(ctx context.Context, ops []jit.Operation) error {
	var keep []jit.Operation
	c.mu.Lock()
	for _, op := range ops {
		if op.Kind == jit.OpClose {
			r := c.rng.Float64()
			if r < c.drop {
				c.log.Warn().Str("op", op.ID).Msg("chaos: close operation dropped")
				continue
			}
			if r < c.drop+c.dup {
				twin := op
				twin.ID += "-dup"
				keep = append(keep, twin)
				c.log.Warn().Str("op", op.ID).Msg("chaos: close operation duplicated")
			}
		}
		keep = append(keep, op)
	}
	c.mu.Unlock()
	return c.Queue.Enqueue(ctx, keep)
}
