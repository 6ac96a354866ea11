package armsim

import (
	"math/rand/v2"
	"net/http"
	"time"
)

// Fault is a failure the simulator answers instead of doing its work.
type Fault struct {
	Status     int           // HTTP status: 429, 409, 500...; ignored when LRO is set
	Code       string        // ARM error code
	Message    string        // ARM error message
	RetryAfter time.Duration // sent as Retry-After (whole seconds, rounded up) and, when not whole seconds, Retry-After-Ms
	// LRO accepts the write (201/202 with polling headers) but ends its
	// operation Failed with Code and leaves the resource unchanged. It only
	// applies to writes; a read is served normally.
	LRO bool
}

// Throttled is ARM's 429 for a subscription or resource over its write
// quota. azcore's retry policy honours Retry-After-Ms, so a sub-second delay
// keeps tests fast.
func Throttled(retryAfter time.Duration) Fault {
	return Fault{Status: http.StatusTooManyRequests, Code: "SubscriptionRequestsThrottled", RetryAfter: retryAfter,
		Message: "Number of write requests for subscription exceeded the limit. Please try again after some time."}
}

// AnotherOperationInProgress is NRP's 409 for a write that overlaps another
// operation on the same NSG.
func AnotherOperationInProgress() Fault {
	return Fault{Status: http.StatusConflict, Code: "AnotherOperationInProgress",
		Message: "Another operation on this or dependent resource is in progress. To retrieve status of the operation use uri: https://management.azure.com/."}
}

// InternalServerError is ARM's 500.
func InternalServerError() Fault {
	return Fault{Status: http.StatusInternalServerError, Code: "InternalServerError",
		Message: "An error has occurred. Please try again later."}
}

// LROFailed makes a write's long-running operation end Failed with code, for
// example "CanceledAndSupersededDueToAnotherOperation" or "InternalServerError".
func LROFailed(code string) Fault {
	return Fault{LRO: true, Code: code, Message: "Operation failed: " + code + "."}
}

// Target says which calls a fault may hit.
type Target int

const (
	AnyCall Target = iota // every ARM call except operation polls
	Reads                 // GET and LIST
	Writes                // PUT and DELETE
)

func (t Target) matches(c Call) bool {
	switch t {
	case Reads:
		return !c.Write() && c.Method != "POLL"
	case Writes:
		return c.Write()
	}
	return c.Method != "POLL"
}

type pendingFault struct {
	target Target
	n      int
	fault  Fault
}

// FailNext makes the next n calls that match target answer f. Calls to
// FailNext queue up: the first entry is used up before the next one applies.
func (s *Server) FailNext(target Target, n int, f Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n > 0 {
		s.failNext = append(s.failNext, &pendingFault{target: target, n: n, fault: f})
	}
}

// ClearFaults drops pending FailNext entries and turns chaos off.
func (s *Server) ClearFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failNext = nil
	s.chaos = nil
}

// Chaos draws faults at random from a seeded source, so that a failing
// chaos run can be replayed.
type Chaos struct {
	Seed   uint64
	Target Target
	Faults []ChaosFault // tried in order; at most one applies per call
}

// ChaosFault is one fault and the probability (0..1) that a call gets it.
type ChaosFault struct {
	Probability float64
	Fault       Fault
}

// FaultyWrites is the fault tests' chaos: that share of ARM writes is
// answered with a fault, the kinds in equal parts: 429 with Retry-After,
// 409 AnotherOperationInProgress, 429 RetryableErrorDueToAnotherOperation,
// 500, and writes accepted whose long-running operation then ends Failed
// (superseded by another operation, or an internal error).
func FaultyWrites(rate float64, seed uint64) *Chaos {
	faults := []Fault{
		Throttled(200 * time.Millisecond),
		AnotherOperationInProgress(),
		{Status: http.StatusTooManyRequests, Code: "RetryableErrorDueToAnotherOperation", RetryAfter: 100 * time.Millisecond,
			Message: "Operation is not allowed because another operation on the resource is in progress. Retry later."},
		InternalServerError(),
		LROFailed("CanceledAndSupersededDueToAnotherOperation"),
		LROFailed("InternalServerError"),
	}
	// Tried in order, at most one per call: each probability is conditional
	// on the ones before it not applying, so every kind gets rate/len.
	share := rate / float64(len(faults))
	c := &Chaos{Seed: seed, Target: Writes}
	for i, f := range faults {
		c.Faults = append(c.Faults, ChaosFault{Probability: share / (1 - float64(i)*share), Fault: f})
	}
	return c
}

type chaosState struct {
	Chaos
	rng *rand.Rand
}

// SetChaos turns random faults on; nil turns them off.
func (s *Server) SetChaos(c *Chaos) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c == nil {
		s.chaos = nil
		return
	}
	s.chaos = &chaosState{Chaos: *c, rng: rand.New(rand.NewPCG(c.Seed, c.Seed^0x9e3779b97f4a7c15))}
}

// SetLatency changes the delay added to every read and every write.
func (s *Server) SetLatency(read, write time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.opts.ReadLatency, s.opts.WriteLatency = read, write
}

// SetInProgressPolls sets how many polls of a new operation answer
// InProgress before it completes.
func (s *Server) SetInProgressPolls(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.opts.InProgressPolls = n
}

// pickFault returns the fault for this call, if any: FailNext first, then
// Options.Intercept, then chaos. Intercept runs without the lock so that it
// may change the estate (e.g. AddRule to simulate a concurrent writer).
func (s *Server) pickFault(r *http.Request, c Call) *Fault {
	s.mu.Lock()
	for i, p := range s.failNext {
		if !p.target.matches(c) {
			continue
		}
		f := p.fault
		p.n--
		if p.n <= 0 {
			s.failNext = append(s.failNext[:i:i], s.failNext[i+1:]...)
		}
		s.mu.Unlock()
		return &f
	}
	s.mu.Unlock()
	if s.opts.Intercept != nil {
		if f := s.opts.Intercept(r, c); f != nil {
			return f
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if ch := s.chaos; ch != nil && ch.Target.matches(c) {
		for _, cf := range ch.Faults {
			if ch.rng.Float64() < cf.Probability {
				f := cf.Fault
				return &f
			}
		}
	}
	return nil
}

// CallStats counts the calls the simulator received, including those it
// answered with a fault.
type CallStats struct {
	ByKind map[string]int // "GET networkSecurityGroups", "LIST virtualMachines", "PUT securityRules", "POLL operations"...
	Reads  int            // GET and LIST
	Writes int            // PUT and DELETE
	Polls  int            // operation status polls
	Faults int            // calls answered with an injected fault (LRO failures included)
	// Operations counts the writes ARM accepted (long-running operations
	// started); Writes counts every write received, refused ones included.
	Operations int
	// With Options.Azure: calls refused because the subscription's budget
	// was spent (429 SubscriptionRequestsThrottled; ThrottledReads of them
	// reads and polls), and writes refused because another operation on
	// the NSG was in progress.
	Throttled, ThrottledReads, Busy int
}

// Calls returns a copy of the call counters.
func (s *Server) Calls() CallStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.stats
	c.ByKind = make(map[string]int, len(s.stats.ByKind))
	for k, v := range s.stats.ByKind {
		c.ByKind[k] = v
	}
	return c
}

// ResetCalls sets every call counter to zero.
func (s *Server) ResetCalls() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats = CallStats{ByKind: map[string]int{}}
}

func (s *Server) count(c Call) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats.ByKind[c.Kind()]++
	switch {
	case c.Method == "POLL":
		s.stats.Polls++
	case c.Write():
		s.stats.Writes++
	default:
		s.stats.Reads++
	}
}

func (s *Server) countFault() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats.Faults++
}
