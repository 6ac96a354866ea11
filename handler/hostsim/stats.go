package hostsim

import (
	"maps"
	"sync"
)

// Stats count what the host simulator did, for one instance or in total.
type Stats struct {
	// Invocations by function name. Forwarded HTTP requests count under
	// the HTTP function's name ("api").
	Invocations map[string]int64
	// Failures by function name: invocations that could not be sent, or
	// answered non-2xx (5xx for forwarded HTTP, where a 4xx is an answer),
	// or, for a trigger, answered without a JSON body.
	Failures map[string]int64
	// Messages is how many queue messages were handed to the worker
	// function (every message of a batch counts; a redelivery counts again).
	Messages int64
	// Sessions is how many sessions were accepted.
	Sessions int64
	// Receives is how many receive calls returned messages; Received how
	// many messages they returned.
	Receives int64
	Received int64
	// Completes and Abandons are the settlements sent; SettleErrors those
	// that failed.
	Completes    int64
	Abandons     int64
	SettleErrors int64
}

// Add returns s plus o.
func (s Stats) Add(o Stats) Stats {
	out := s
	out.Invocations, out.Failures = addMaps(s.Invocations, o.Invocations), addMaps(s.Failures, o.Failures)
	out.Messages += o.Messages
	out.Sessions += o.Sessions
	out.Receives += o.Receives
	out.Received += o.Received
	out.Completes += o.Completes
	out.Abandons += o.Abandons
	out.SettleErrors += o.SettleErrors
	return out
}

func addMaps(a, b map[string]int64) map[string]int64 {
	out := maps.Clone(a)
	if out == nil {
		out = map[string]int64{}
	}
	for k, v := range b {
		out[k] += v
	}
	return out
}

// counters is one instance's Stats, updated under a lock (each update is
// an HTTP call or a Service Bus operation: the lock costs nothing beside).
type counters struct {
	mu sync.Mutex
	s  Stats
}

func (c *counters) update(f func(*Stats)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.s.Invocations == nil {
		c.s.Invocations, c.s.Failures = map[string]int64{}, map[string]int64{}
	}
	f(&c.s)
}

func (c *counters) invoked(function string, failed bool) {
	c.update(func(s *Stats) {
		s.Invocations[function]++
		if failed {
			s.Failures[function]++
		}
	})
}

func (c *counters) snapshot() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.s
	out.Invocations, out.Failures = addMaps(c.s.Invocations, nil), addMaps(c.s.Failures, nil)
	return out
}
