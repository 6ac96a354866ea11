package armsim

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Azure makes the simulator behave as ARM behaves under load, where the
// simulator otherwise answers at once and without limits. Each behaviour is
// one field; the zero value of a field takes ARM's documented figure
// (docs/performance.md cites them). `handler local` turns all of it on with
// JIT_ARM_LATENCY.
type Azure struct {
	// WriteTime is how long each write's long-running operation runs: the
	// PUT or DELETE is answered at once, its operation answers InProgress
	// until WriteTime has passed, and the NSG accepts no other write
	// meanwhile.
	WriteTime time.Duration
	// Jitter spreads WriteTime uniformly over ±Jitter.
	Jitter time.Duration
	// Busy is what a write to an NSG answers while another operation on
	// that NSG is in progress: 429 RetryableErrorDueToAnotherOperation
	// (BusyRetryable, the default) or 409 AnotherOperationInProgress
	// (BusyConflict). Retry-After says when the operation ends.
	Busy BusyAnswer
	// Writes, Deletes and Reads are the subscription's token buckets (ARM's
	// throttling since 2024): writes and deletes 200 tokens refilled at 10
	// a second, reads 250 at 25. A bucket with Size < 0 is off. Operation
	// polls are reads.
	Writes, Deletes, Reads Bucket
	// PollRetryAfter is the Retry-After (whole seconds, as ARM sends it) of
	// an InProgress poll answer. Default 1s.
	PollRetryAfter time.Duration
	// Seed seeds the jitter, so a run can be replayed.
	Seed uint64
}

// ObserverHeader marks a GET as a measuring tool's look at the estate (the
// bench watching rules appear): it is served without latency, faults,
// throttling or counting, so that watching does not change what is
// measured.
const ObserverHeader = "X-Armsim-Observer"

// SetAzure turns the Azure behaviours on with a, or off with nil, from the
// next call on. Buckets start full and no NSG is busy.
func (s *Server) SetAzure(a *Azure) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if a == nil {
		s.azure = nil
		return
	}
	s.azure = newAzureState(*a)
}

// Bucket is a token bucket: Size tokens at most, refilled at PerSecond.
type Bucket struct {
	Size      int
	PerSecond float64
}

// BusyAnswer says how a write to a busy NSG is refused.
type BusyAnswer int

const (
	BusyRetryable BusyAnswer = iota // 429 RetryableErrorDueToAnotherOperation
	BusyConflict                    // 409 AnotherOperationInProgress
)

// ARM's documented bucket sizes and refill rates per subscription.
var (
	DefaultWriteBucket  = Bucket{Size: 200, PerSecond: 10}
	DefaultDeleteBucket = Bucket{Size: 200, PerSecond: 10}
	DefaultReadBucket   = Bucket{Size: 250, PerSecond: 25}
)

// ParseBucket reads a bucket setting: "SIZE/PER_SECOND" (e.g. "200/10"),
// "off", or "" for def.
func ParseBucket(s string, def Bucket) (Bucket, error) {
	switch s = strings.TrimSpace(s); s {
	case "":
		return def, nil
	case "off":
		return Bucket{Size: -1}, nil
	}
	size, rate, ok := strings.Cut(s, "/")
	n, err1 := strconv.Atoi(strings.TrimSpace(size))
	r, err2 := strconv.ParseFloat(strings.TrimSpace(rate), 64)
	if !ok || err1 != nil || err2 != nil || n < 1 || r <= 0 || math.IsInf(r, 0) || math.IsNaN(r) {
		return Bucket{}, fmt.Errorf("%q is not a token bucket: write SIZE/PER_SECOND (e.g. 200/10) or off", s)
	}
	return Bucket{Size: n, PerSecond: r}, nil
}

func (b Bucket) String() string {
	if b.Size < 0 {
		return "off"
	}
	return fmt.Sprintf("%d/%g", b.Size, b.PerSecond)
}

// azureState is what the Azure behaviours keep; under Server.mu.
type azureState struct {
	cfg     Azure
	rng     *rand.Rand
	buckets map[string]*tokens   // subscription + "/" + kind
	busy    map[string]time.Time // NSG key -> end of its operation in progress
}

type tokens struct {
	left float64
	at   time.Time
}

func newAzureState(a Azure) *azureState {
	fill := func(b *Bucket, def Bucket) {
		if b.Size == 0 {
			*b = def
		}
		if b.Size > 0 && b.PerSecond <= 0 {
			b.PerSecond = def.PerSecond
		}
	}
	fill(&a.Writes, DefaultWriteBucket)
	fill(&a.Deletes, DefaultDeleteBucket)
	fill(&a.Reads, DefaultReadBucket)
	if a.PollRetryAfter <= 0 {
		a.PollRetryAfter = time.Second
	}
	return &azureState{cfg: a, rng: rand.New(rand.NewPCG(a.Seed, a.Seed^0x5bd1e995)),
		buckets: map[string]*tokens{}, busy: map[string]time.Time{}}
}

// budget is the bucket a call draws from and the name of its header.
func (a *azureState) budget(method string) (Bucket, string) {
	switch method {
	case http.MethodDelete:
		return a.cfg.Deletes, "deletes"
	case http.MethodPut, http.MethodPatch, http.MethodPost:
		return a.cfg.Writes, "writes"
	}
	return a.cfg.Reads, "reads"
}

// take draws one token for a call on sub. It returns the tokens left and,
// when the bucket is empty, how long until the next token (at least 1 ns).
func (a *azureState) take(sub, kind string, b Bucket, now time.Time) (left int, wait time.Duration) {
	k := strings.ToLower(sub) + "/" + kind
	t := a.buckets[k]
	if t == nil {
		t = &tokens{left: float64(b.Size), at: now}
		a.buckets[k] = t
	}
	t.left = min(float64(b.Size), t.left+now.Sub(t.at).Seconds()*b.PerSecond)
	t.at = now
	if t.left < 1 {
		return 0, max(time.Duration((1-t.left)/b.PerSecond*float64(time.Second)), 1)
	}
	t.left--
	return int(t.left), 0
}

// writeTime is one operation's duration, jittered.
func (a *azureState) writeTime() time.Duration {
	d := a.cfg.WriteTime
	if j := a.cfg.Jitter; j > 0 {
		d += time.Duration(a.rng.Int64N(int64(2*j)+1)) - j
	}
	return max(d, 0)
}

// throttle applies the subscription's budget to a call before it is served:
// it sets the remaining-tokens header and answers 429 when the bucket is
// empty. It reports whether the call may go on.
func (s *Server) throttle(w http.ResponseWriter, r *http.Request, rt route) bool {
	s.mu.Lock()
	a := s.azure
	if a == nil {
		s.mu.Unlock()
		return true
	}
	b, kind := a.budget(r.Method)
	if b.Size < 0 {
		s.mu.Unlock()
		return true
	}
	left, wait := a.take(rt.sub, kind, b, time.Now())
	if wait > 0 {
		s.stats.Throttled++
		if kind == "reads" {
			s.stats.ThrottledReads++
		}
	}
	s.mu.Unlock()
	w.Header().Set("x-ms-ratelimit-remaining-subscription-"+kind, strconv.Itoa(left))
	if wait == 0 {
		return true
	}
	w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(wait.Seconds()))))
	what := map[string]string{"writes": "write", "deletes": "delete", "reads": "read"}[kind]
	writeError(w, &armError{Status: http.StatusTooManyRequests, Code: "SubscriptionRequestsThrottled",
		Message: fmt.Sprintf("Number of '%s' requests for subscription '%s' actor '00000000-0000-0000-0000-000000000000' exceeded. Please try again after '%d' seconds after the time provided in Retry-After header.",
			what, rt.sub, int(math.Ceil(wait.Seconds())))})
	return false
}

// busyLocked answers a write to an NSG whose operation is still in
// progress, as NRP does, and reports whether it did; callers hold s.mu.
func (s *Server) busyLocked(w http.ResponseWriter, nsgKey, nsgID string) bool {
	a := s.azure
	if a == nil {
		return false
	}
	until, ok := a.busy[nsgKey]
	now := time.Now()
	if !ok || !now.Before(until) {
		delete(a.busy, nsgKey)
		return false
	}
	s.stats.Busy++
	w.Header().Set("Retry-After", strconv.Itoa(max(1, int(math.Ceil(until.Sub(now).Seconds())))))
	if a.cfg.Busy == BusyConflict {
		writeError(w, &armError{Status: http.StatusConflict, Code: "AnotherOperationInProgress",
			Message: fmt.Sprintf("Another operation on this or dependent resource is in progress. To retrieve status of the operation use uri: %s.", nsgID)})
		return true
	}
	writeError(w, &armError{Status: http.StatusTooManyRequests, Code: "RetryableErrorDueToAnotherOperation",
		Message: fmt.Sprintf("Operation on resource %s is conflicting with another operation in progress on the same resource. The request may be retried after some time.", nsgID)})
	return true
}

// startOperationLocked marks the NSG busy for one write's duration and
// returns when that write's operation ends; callers hold s.mu.
func (s *Server) startOperationLocked(nsgKey string) time.Time {
	if s.azure == nil {
		return time.Time{}
	}
	end := time.Now().Add(s.azure.writeTime())
	s.azure.busy[nsgKey] = end
	return end
}

// normLocation compares regions as ARM does: "West Europe" is westeurope.
func normLocation(s string) string {
	return strings.ToLower(strings.ReplaceAll(s, " ", ""))
}

// inProgressJSON is an NSG's JSON as a GET sees it while an operation on
// it runs: the new rules, provisioningState Updating, as NRP answers until
// the operation ends; callers hold s.mu.
func (s *Server) inProgressJSON(nsgKey string, b []byte) []byte {
	if s.azure == nil || !time.Now().Before(s.azure.busy[nsgKey]) {
		return b
	}
	var doc map[string]json.RawMessage
	var props map[string]json.RawMessage
	if json.Unmarshal(b, &doc) != nil || json.Unmarshal(doc["properties"], &props) != nil {
		return b
	}
	props["provisioningState"] = json.RawMessage(`"Updating"`)
	doc["properties"], _ = json.Marshal(props)
	out, err := json.Marshal(doc)
	if err != nil {
		return b
	}
	return out
}

// AzureSwitch is an http.Handler for PUT {"enabled": true|false}: it turns
// the Azure behaviours on with a (nil: there is none to turn on, 409) or
// off, without a restart. `handler local` serves it at /_arm/_azure so
// that the bench can prepare an estate without ARM's limits.
func (s *Server) AzureSwitch(a *Azure) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var in struct {
			Enabled *bool `json:"enabled"`
		}
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1024)).Decode(&in); err != nil || in.Enabled == nil {
			writeError(w, badRequest("InvalidRequestContent", `Send {"enabled": true} or {"enabled": false}.`))
			return
		}
		switch {
		case *in.Enabled && a == nil:
			writeError(w, &armError{Status: http.StatusConflict, Code: "Conflict", Message: "The simulator's Azure behaviour needs JIT_ARM_LATENCY at start."})
			return
		case *in.Enabled:
			s.SetAzure(a)
		default:
			s.SetAzure(nil)
		}
		writeJSON(w, http.StatusOK, []byte(`{"enabled":`+strconv.FormatBool(*in.Enabled)+`}`))
	})
}
