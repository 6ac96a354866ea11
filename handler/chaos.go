package main

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"jitaccess/handler/jit"
)

// Fault injection for local mode's fault tests (JIT_ARM_FAULT_RATE,
// JIT_CHAOS_DROP_CLOSES, JIT_CHAOS_DUPLICATE). Never set them for real use:
// they exist to prove that access still ends when ARM fails and messages
// are lost or repeated.

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
