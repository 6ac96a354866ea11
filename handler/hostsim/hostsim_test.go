package hostsim

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"

	"jitaccess/handler/testenv"
)

// recorder is a custom handler that records every invocation and answers
// as the answer function says (200 with an empty result by default).
type recorder struct {
	mu     sync.Mutex
	calls  []recorded
	answer func(n int, r recorded) int
	srv    *httptest.Server
}

type recorded struct {
	Method, Path string
	Header       http.Header
	Body         []byte
	ctx          context.Context // the request's
}

func newRecorder(t *testing.T, answer func(n int, r recorded) int) *recorder {
	rec := &recorder{answer: answer}
	rec.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		c := recorded{Method: r.Method, Path: r.URL.Path, Header: r.Header.Clone(), Body: body, ctx: r.Context()}
		if r.Method == http.MethodGet && r.URL.Path == "/" {
			http.NotFound(w, r) // the host takes any answer as ready
			return
		}
		rec.mu.Lock()
		n := len(rec.calls)
		rec.calls = append(rec.calls, c)
		status := http.StatusOK
		if rec.answer != nil {
			status = rec.answer(n, c)
		}
		rec.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		fmt.Fprint(w, `{"Outputs":{},"Logs":["recorded"],"ReturnValue":null}`)
	}))
	t.Cleanup(rec.srv.Close)
	return rec
}

func (r *recorder) recorded(path string) []recorded {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []recorded
	for _, c := range r.calls {
		if c.Path == path {
			out = append(out, c)
		}
	}
	return out
}

// unwrap decodes a value the host sent as JSON text inside a string, as
// many times as it was encoded, and returns the innermost JSON.
func unwrap(t *testing.T, raw json.RawMessage, levels int) json.RawMessage {
	t.Helper()
	for range levels {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			t.Fatalf("%s is not a JSON string: %v", raw, err)
		}
		raw = json.RawMessage(s)
	}
	return raw
}

type payload struct {
	Data     map[string]json.RawMessage `json:"Data"`
	Metadata map[string]json.RawMessage `json:"Metadata"`
}

func decodePayload(t *testing.T, body []byte) payload {
	t.Helper()
	var p payload
	if err := json.Unmarshal(body, &p); err != nil {
		t.Fatalf("invocation body %s: %v", body, err)
	}
	return p
}

// sendSession puts messages on queue, a queue with sessions, in one
// session, before the host runs.
func sendSession(t *testing.T, sb *testenv.ServiceBusDouble, queue, session string, bodies []string, props map[string]any) []string {
	t.Helper()
	sb.SessionQueue(t, queue)
	return send(t, sb, queue, session, &session, bodies, props)
}

// send puts messages on queue, before the host runs, with ids prefix-0,
// prefix-1, ..., in session when it is not nil.
func send(t *testing.T, sb *testenv.ServiceBusDouble, queue, prefix string, session *string, bodies []string, props map[string]any) []string {
	t.Helper()
	client, err := azservicebus.NewClientFromConnectionString(sb.ConnectionString(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close(context.Background())
	sender, err := client.NewSender(queue, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sender.Close(context.Background())
	var ids []string
	for i, b := range bodies {
		id := fmt.Sprintf("%s-%d", prefix, i)
		ids = append(ids, id)
		msg := &azservicebus.Message{Body: []byte(b), MessageID: &id, SessionID: session}
		if i == 0 {
			msg.ApplicationProperties = props
		}
		if err := sender.SendMessage(context.Background(), msg, nil); err != nil {
			t.Fatalf("sending %s: %v", id, err)
		}
	}
	return ids
}

func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func workerFunction(cardinality string, sessions bool) []Function {
	return []Function{{Name: "worker", Bindings: []Binding{{Type: "serviceBusTrigger", Direction: "in", Name: "msg",
		QueueName: "%JIT_SERVICEBUS_QUEUE%", Connection: "ServiceBusConnection", IsSessionsEnabled: sessions, Cardinality: cardinality}}}}
}

var zonelessSecond = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d$`)

// TestHostBatchPayload delivers messages of a queue without sessions with
// "cardinality": "many" to a recording handler: one invocation carries the
// batch in the host's shape, a non-2xx answer abandons the whole batch, and
// the retry brings the same messages again, each one delivery later.
func TestHostBatchPayload(t *testing.T) {
	sb := testenv.StartServiceBus(t)
	const queue = "hostsim-batch"
	bodies := []string{`{"ID":"open-a","Kind":"open","NSG":"a"}`, `{"ID":"open-b","Kind":"open","NSG":"b"}`, `{"ID":"close-c","Kind":"close","NSG":"a"}`}
	ids := send(t, sb, queue, "batch", nil, bodies, map[string]any{"origin": "test"})

	rec := newRecorder(t, func(n int, r recorded) int {
		if n == 0 {
			return http.StatusInternalServerError // the first batch fails
		}
		return http.StatusOK
	})
	h, err := Start(Config{
		HandlerURLs:    []string{rec.srv.URL},
		HostServiceBus: sb.ConnectionString(),
		Queue:          queue,
		Functions:      workerFunction("many", false),
		Host:           &HostSettings{ServiceBus: ServiceBusSettings{MaxMessageBatchSize: 10}},
		Logf:           t.Logf,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	waitUntil(t, 20*time.Second, "every message completed", func() bool { return h.Stats().Completes == 3 })

	type batch struct {
		bodies, ids, sessions []string
		counts                []int
	}
	var batches []batch
	var seqs []int64
	for i, c := range rec.recorded("/worker") {
		if c.Method != http.MethodPost || c.Header.Get("X-Azure-Functions-InvocationId") == "" || c.Header.Get("Content-Type") != "application/json" {
			t.Errorf("invocation %d: %s with headers %v", i, c.Method, c.Header)
		}
		p := decodePayload(t, c.Body)
		var b batch
		// The array of bodies and every *Array datum arrive as JSON text
		// in a string, once.
		if err := json.Unmarshal(unwrap(t, p.Data["msg"], 1), &b.bodies); err != nil {
			t.Fatalf("invocation %d: Data.msg %s is not an array of strings: %v", i, p.Data["msg"], err)
		}
		for name, into := range map[string]any{"MessageIdArray": &b.ids, "DeliveryCountArray": &b.counts, "SessionIdArray": &b.sessions, "SequenceNumberArray": &seqs} {
			if err := json.Unmarshal(unwrap(t, p.Metadata[name], 1), into); err != nil {
				t.Fatalf("invocation %d: Metadata.%s = %s: %v", i, name, p.Metadata[name], err)
			}
		}
		if len(seqs) != len(b.bodies) {
			t.Errorf("invocation %d: SequenceNumberArray %v", i, seqs)
		}
		var times []string
		if err := json.Unmarshal(unwrap(t, p.Metadata["EnqueuedTimeUtcArray"], 1), &times); err != nil || len(times) != len(b.bodies) {
			t.Fatalf("invocation %d: EnqueuedTimeUtcArray %s", i, p.Metadata["EnqueuedTimeUtcArray"])
		}
		for _, ts := range times {
			if _, err := time.Parse("2006-01-02T15:04:05.9999999", ts); err != nil {
				t.Errorf("invocation %d: enqueued time %q is not a zoneless .NET DateTime: %v", i, ts, err)
			}
		}
		var props []map[string]any
		if err := json.Unmarshal(unwrap(t, p.Metadata["UserPropertiesArray"], 1), &props); err != nil || len(props) != len(b.bodies) {
			t.Fatalf("invocation %d: UserPropertiesArray %s", i, p.Metadata["UserPropertiesArray"])
		}
		if k := slices.Index(b.ids, ids[0]); k >= 0 && props[k]["origin"] != "test" {
			t.Errorf("invocation %d: the first message's properties are %v", i, props[k])
		}
		if _, single := p.Metadata["MessageId"]; single {
			t.Errorf("invocation %d: a batch carries the single-message datum MessageId", i)
		}
		batches = append(batches, b)
	}
	if len(batches) < 2 {
		t.Fatalf("%d invocations, want the failed batch and its retry", len(batches))
	}
	first := batches[0]
	if !slices.Equal(first.bodies, bodies) || !slices.Equal(first.ids, ids) || !slices.Equal(first.counts, []int{1, 1, 1}) ||
		!slices.Equal(first.sessions, []string{"", "", ""}) {
		t.Errorf("first batch: %+v, want the three messages in order, delivered once, without sessions (null)", first)
	}
	// The retry brings the whole batch again, each message on its second
	// delivery (in one invocation or more, and in the order the client
	// received them again: the double sends an abandoned message back at
	// once to a receiver with credit).
	again := map[string]string{}
	for _, b := range batches[1:] {
		for k, id := range b.ids {
			if b.counts[k] != 2 {
				t.Errorf("message %s redelivered with DeliveryCount %d, want 2", id, b.counts[k])
			}
			again[id] = b.bodies[k]
		}
	}
	for k, id := range ids {
		if again[id] != bodies[k] {
			t.Errorf("after the failed batch, message %s came back as %q, want %q", id, again[id], bodies[k])
		}
	}

	s := h.Stats()
	if s.Invocations["worker"] != int64(len(batches)) || s.Failures["worker"] != 1 || s.Messages != 6 || s.Abandons != 3 || s.Completes != 3 || s.SettleErrors != 0 || s.Sessions != 0 {
		t.Errorf("stats %+v", s)
	}
	q := sb.State(t).Queues[queue]
	if q.Counts.Abandoned != 3 || q.Counts.Completed != 3 || len(q.Active) != 0 {
		t.Errorf("the broker counts %+v, active %v", q.Counts, q.Active)
	}
	if f := h.Faults(); len(f) != 0 {
		t.Errorf("protocol faults: %v", f)
	}
}

// TestHostSinglePayload delivers one message per invocation (the default
// cardinality) of a session, with the quirks hosts show, and redelivers a
// failed one.
func TestHostSinglePayload(t *testing.T) {
	sb := testenv.StartServiceBus(t)
	const queue, session = "hostsim-single", "gate-2"
	bodies := []string{`{"ID":"open-a"}`, `{"ID":"fails-once"}`, `{"ID":"close-c"}`}
	ids := sendSession(t, sb, queue, session, bodies, nil)
	failed := false
	rec := newRecorder(t, func(n int, r recorded) int {
		if strings.Contains(string(r.Body), "fails-once") && !failed {
			failed = true // the recorder's lock is held
			return http.StatusServiceUnavailable
		}
		return http.StatusOK
	})
	h, err := Start(Config{
		HandlerURLs:    []string{rec.srv.URL},
		HostServiceBus: sb.ConnectionString(),
		Queue:          queue,
		Functions:      workerFunction("", true),
		Host:           &HostSettings{ServiceBus: ServiceBusSettings{SessionIdleTimeout: 300 * time.Millisecond}},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	waitUntil(t, 20*time.Second, "every message completed", func() bool { return h.Stats().Completes == 3 })

	calls := rec.recorded("/worker")
	if len(calls) != 4 {
		t.Fatalf("%d invocations, want 4 (three messages, one redelivered)", len(calls))
	}
	var seen []string
	for i, c := range calls {
		p := decodePayload(t, c.Body)
		// The body is a JSON string: once, or twice for every other invocation.
		levels := 1 + i%2
		body := string(unwrap(t, p.Data["msg"], levels))
		var id, sid, count, seq, enqueued string
		for name, into := range map[string]*string{"MessageId": &id, "SessionId": &sid, "DeliveryCount": &count, "SequenceNumber": &seq, "EnqueuedTimeUtc": &enqueued} {
			if err := json.Unmarshal(p.Metadata[name], into); err != nil {
				t.Fatalf("invocation %d: Metadata.%s = %s is not a string", i, name, p.Metadata[name])
			}
		}
		k := slices.Index(bodies, body)
		wantCount := "1"
		if k == 1 && slices.Contains(seen, body) { // the failed message, again
			wantCount = "2"
		}
		if k < 0 || id != `"`+ids[k]+`"` || sid != `"`+session+`"` || count != wantCount || !regexp.MustCompile(`^\d+$`).MatchString(seq) || !zonelessSecond.MatchString(enqueued) {
			t.Errorf("invocation %d: body %q MessageId %s SessionId %s DeliveryCount %s SequenceNumber %s EnqueuedTimeUtc %s", i, body, id, sid, count, seq, enqueued)
		}
		var props map[string]any
		if err := json.Unmarshal(p.Metadata["UserProperties"], &props); err != nil {
			t.Errorf("invocation %d: UserProperties %s is not an object", i, p.Metadata["UserProperties"])
		}
		seen = append(seen, body)
	}
	// First deliveries in queue order; the failed one again later.
	if first := slices.Compact(slices.Clone(seen[:2])); !slices.Equal(first, bodies[:2]) || slices.Index(seen, bodies[2]) < 2 ||
		len(slices.DeleteFunc(slices.Clone(seen), func(b string) bool { return b != bodies[1] })) != 2 {
		t.Errorf("delivered %q, want %q, %q, then %q and %q again", seen, bodies[0], bodies[1], bodies[2], bodies[1])
	}
	s := h.Stats()
	if s.Invocations["worker"] != 4 || s.Failures["worker"] != 1 || s.Messages != 4 || s.Abandons != 1 || s.Completes != 3 {
		t.Errorf("stats %+v", s)
	}
}

// TestHostForwardsAndFires spreads forwarded HTTP over two instances
// unchanged, and fires the timer and Event Grid functions in the host's
// shape. No queue: only the repository's HTTP, timer and Event Grid
// functions are played.
func TestHostForwardsAndFires(t *testing.T) {
	all, err := RepoFunctions()
	if err != nil {
		t.Fatal(err)
	}
	fns := slices.DeleteFunc(all, func(f Function) bool { tr, _ := f.Trigger(); return tr.Type == "serviceBusTrigger" })
	recs := []*recorder{newRecorder(t, nil), newRecorder(t, nil)}
	h, err := Start(Config{HandlerURLs: []string{recs[0].srv.URL, recs[1].srv.URL}, Functions: fns})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()

	for i := range 4 {
		req, _ := http.NewRequest(http.MethodGet, h.URL()+"/api/v1/vms?n="+fmt.Sprint(i), nil)
		req.Header.Set("X-MS-CLIENT-PRINCIPAL-ID", "user-1")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("forwarded GET answered %d", resp.StatusCode)
		}
	}
	for i, rec := range recs {
		got := rec.recorded("/api/v1/vms")
		if len(got) != 2 {
			t.Errorf("instance %d served %d forwarded requests, want 2", i, len(got))
		}
		for _, c := range got {
			if c.Header.Get("X-MS-CLIENT-PRINCIPAL-ID") != "user-1" || c.Header.Get("X-Azure-Functions-InvocationId") == "" || c.Header.Get("X-Forwarded-For") == "" {
				t.Errorf("instance %d: forwarded headers %v", i, c.Header)
			}
		}
		if n := h.Instances()[i].Stats().Invocations["api"]; n != 2 {
			t.Errorf("instance %d counted %d api invocations", i, n)
		}
	}

	ctx := context.Background()
	if res, err := h.FireTimer(ctx); err != nil || res.Outputs == nil || res.Logs[0] != "recorded" {
		t.Errorf("FireTimer: %+v, %v", res, err)
	}
	event := map[string]any{"id": "e-1", "eventType": "Microsoft.Resources.ResourceDeleteSuccess", "subject": "/x", "data": map[string]any{}}
	if _, err := h.SendEvent(ctx, event); err != nil {
		t.Errorf("SendEvent: %v", err)
	}
	// Event Grid's own delivery to the host's webhook.
	body := `[{"id":"e-2","eventType":"Microsoft.Resources.ResourceWriteSuccess","subject":"/y","data":{}}]`
	req, _ := http.NewRequest(http.MethodPost, h.URL()+"/runtime/webhooks/eventgrid?functionName=events", strings.NewReader(body))
	req.Header.Set("aeg-event-type", "Notification")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("Event Grid webhook answered %d", resp.StatusCode)
	}

	var timers, events []recorded
	for _, rec := range recs {
		timers, events = append(timers, rec.recorded("/sweeper")...), append(events, rec.recorded("/events")...)
	}
	if len(timers) != 1 || len(events) != 2 {
		t.Fatalf("%d timer and %d event invocations, want 1 and 2", len(timers), len(events))
	}
	var timer struct {
		Schedule  map[string]any
		IsPastDue *bool
	}
	if err := json.Unmarshal(decodePayload(t, timers[0].Body).Data["timer"], &timer); err != nil || timer.IsPastDue == nil || timer.Schedule == nil {
		t.Errorf("timer payload %s", timers[0].Body)
	}
	var eventIDs []string
	for i, c := range events {
		var ev struct{ ID string }
		p := decodePayload(t, c.Body)
		if err := json.Unmarshal(p.Data["event"], &ev); err != nil {
			t.Errorf("event invocation %d: %s", i, c.Body)
		}
		if _, ok := p.Metadata["sys"]; !ok {
			t.Errorf("event invocation %d has no sys metadata", i)
		}
		eventIDs = append(eventIDs, ev.ID)
	}
	if slices.Sort(eventIDs); !slices.Equal(eventIDs, []string{"e-1", "e-2"}) {
		t.Errorf("events delivered: %v", eventIDs)
	}
	if s := h.Stats(); s.Invocations["api"] != 4 || s.Invocations["sweeper"] != 1 || s.Invocations["events"] != 2 {
		t.Errorf("stats %+v", s)
	}
}

func TestHostSettingsFromRepo(t *testing.T) {
	hs, err := RepoHostSettings()
	if err != nil {
		t.Fatal(err)
	}
	// No session settings: the queue has none; they take the defaults.
	want := HostSettings{FunctionTimeout: 5 * time.Minute, ServiceBus: ServiceBusSettings{MaxConcurrentCalls: 16, MaxConcurrentSessions: 8, MaxMessageBatchSize: 100, SessionIdleTimeout: time.Minute}}
	if hs != want {
		t.Errorf("host.json gives %+v, want %+v", hs, want)
	}
	fns, err := RepoFunctions()
	if err != nil {
		t.Fatal(err)
	}
	triggers := map[string]Binding{}
	for _, f := range fns {
		tr, _ := f.Trigger()
		triggers[f.Name] = tr
	}
	if w := triggers["worker"]; w.Type != "serviceBusTrigger" || w.Name != "msg" || w.IsSessionsEnabled || !w.Many() || w.DataType != "string" {
		t.Errorf("worker trigger %+v", w)
	}
	for in, want := range map[string]time.Duration{"00:00:05": 5 * time.Second, "1.02:03:04.5": 26*time.Hour + 3*time.Minute + 4500*time.Millisecond, "": 0} {
		if got, err := parseTimeSpan(in); err != nil || got != want {
			t.Errorf("parseTimeSpan(%q) = %s, %v; want %s", in, got, err, want)
		}
	}
	if _, err := parseTimeSpan("5s"); err == nil {
		t.Errorf("parseTimeSpan(5s) took a Go duration")
	}
}

// TestHostInstanceKilled takes away the instance working on a message of a
// queue without sessions: the message is not settled by it, goes to the
// other instance, and so does every forwarded request from then on.
func TestHostInstanceKilled(t *testing.T) {
	sb := testenv.StartServiceBus(t)
	const queue = "hostsim-kill"
	ids := send(t, sb, queue, "kill", nil, []string{`{"ID":"open-a"}`}, nil)
	hung := make(chan int, 1) // which instance holds the first invocation
	var first atomic.Bool
	recs := make([]*recorder, 2)
	for i := range recs {
		recs[i] = newRecorder(t, func(n int, r recorded) int {
			if r.Path == "/worker" && first.CompareAndSwap(false, true) {
				hung <- i
				<-r.ctx.Done() // until the kill cuts the invocation
			}
			return http.StatusOK
		})
	}
	fns := append(workerFunction("", false), Function{Name: "api", Bindings: []Binding{{Type: "httpTrigger", Direction: "in", Name: "req"}, {Type: "http", Direction: "out", Name: "res"}}})
	h, err := Start(Config{
		HandlerURLs:    []string{recs[0].srv.URL, recs[1].srv.URL},
		HostServiceBus: sb.ConnectionString(),
		Queue:          queue,
		Functions:      fns,
		Host:           &HostSettings{ServiceBus: ServiceBusSettings{MaxConcurrentCalls: 1}},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	var k int
	select {
	case k = <-hung:
	case <-time.After(20 * time.Second):
		t.Fatal("no instance received the message")
	}
	h.Instances()[k].Kill()
	waitUntil(t, 20*time.Second, "the message completed by the other instance", func() bool { return h.Stats().Completes == 1 })
	dead, live := h.Instances()[k].Stats(), h.Instances()[1-k].Stats()
	if dead.Completes != 0 || dead.Abandons != 0 || dead.Messages != 1 || live.Completes != 1 || live.Messages != 1 {
		t.Errorf("killed instance %+v, live instance %+v", dead, live)
	}
	if got := recs[1-k].recorded("/worker"); len(got) != 1 || !strings.Contains(string(got[0].Body), ids[0]) {
		t.Errorf("the live instance got %d worker invocations", len(got))
	}
	for range 3 {
		resp, err := http.Get(h.URL() + "/api/v1/vms")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	if n := len(recs[1-k].recorded("/api/v1/vms")); n != 3 {
		t.Errorf("the live instance served %d of 3 forwarded requests", n)
	}
	if q := sb.State(t).Queues[queue]; q.Counts.Completed != 1 || q.Counts.Abandoned != 0 || len(q.Active) != 0 {
		t.Errorf("the broker counts %+v, active %v", q.Counts, q.Active)
	}
}

// TestHostBatchOneSessionAtATime: with "cardinality": "many" an instance
// has one batch receiver whatever maxConcurrentSessions says, as the
// Service Bus extension's batch loop does, so its invocations never
// overlap and each carries one session's messages.
func TestHostBatchOneSessionAtATime(t *testing.T) {
	sb := testenv.StartServiceBus(t)
	const queue = "hostsim-batch-sessions"
	sessions := []string{"nsg-a", "nsg-b", "nsg-c"}
	for _, s := range sessions {
		sendSession(t, sb, queue, s, []string{`{"ID":"open-` + s + `"}`, `{"ID":"close-` + s + `"}`}, nil)
	}
	var (
		inFlight, most atomic.Int32
		mu             sync.Mutex
		batches        [][]string // the SessionIdArray of each invocation
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			http.NotFound(w, r)
			return
		}
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		body, _ := io.ReadAll(r.Body)
		var p payload
		var text string
		var ids []string
		if json.Unmarshal(body, &p) == nil && json.Unmarshal(p.Metadata["SessionIdArray"], &text) == nil && json.Unmarshal([]byte(text), &ids) == nil {
			mu.Lock()
			batches = append(batches, ids)
			mu.Unlock()
		}
		time.Sleep(100 * time.Millisecond)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"Outputs":{},"Logs":[],"ReturnValue":null}`)
	}))
	defer srv.Close()
	h, err := Start(Config{
		HandlerURLs:    []string{srv.URL},
		HostServiceBus: sb.ConnectionString(),
		Queue:          queue,
		Functions:      workerFunction("many", true),
		Host:           &HostSettings{ServiceBus: ServiceBusSettings{MaxConcurrentSessions: 8, MaxMessageBatchSize: 10, SessionIdleTimeout: 200 * time.Millisecond}},
		Logf:           t.Logf,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	waitUntil(t, 30*time.Second, "every message completed", func() bool { return h.Stats().Completes == 6 })
	if m := most.Load(); m != 1 {
		t.Errorf("%d invocations at once on one instance, want 1", m)
	}
	mu.Lock()
	defer mu.Unlock()
	seen := map[string]int{}
	for _, ids := range batches {
		if len(ids) == 0 || slices.ContainsFunc(ids, func(id string) bool { return id != ids[0] }) {
			t.Errorf("a batch mixes sessions: %v", ids)
		}
		for _, id := range ids {
			seen[id]++
		}
	}
	for _, s := range sessions {
		if seen[s] != 2 {
			t.Errorf("session %s: %d messages delivered, want 2 (batches %v)", s, seen[s], batches)
		}
	}
	if s := h.Stats(); s.Sessions < 3 {
		t.Errorf("stats %+v: want the three sessions accepted one after the other", s)
	}
}

// TestHostBatchesMixOneAtATimePerInstance: on a queue without sessions each
// instance has one batch loop, as the Service Bus extension does: batches
// of up to maxMessageBatchSize messages in queue order, whatever NSG they
// name, one invocation at a time per instance, the instances side by side.
func TestHostBatchesMixOneAtATimePerInstance(t *testing.T) {
	sb := testenv.StartServiceBus(t)
	const queue, total, batchSize = "hostsim-batch-mixed", 24, 4
	var bodies []string
	for i := range total {
		bodies = append(bodies, fmt.Sprintf(`{"ID":"op-%d","NSG":"nsg-%d"}`, i, i%3))
	}
	ids := send(t, sb, queue, "mixed", nil, bodies, nil)

	type instance struct {
		inFlight, most atomic.Int32
		mu             sync.Mutex
		batches        [][]string // the MessageIdArray of each invocation
		srv            *httptest.Server
	}
	instances := make([]*instance, 2)
	var urls []string
	for i := range instances {
		in := &instance{}
		in.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet {
				http.NotFound(w, r)
				return
			}
			n := in.inFlight.Add(1)
			defer in.inFlight.Add(-1)
			for m := in.most.Load(); n > m && !in.most.CompareAndSwap(m, n); m = in.most.Load() {
			}
			body, _ := io.ReadAll(r.Body)
			var p payload
			var text string
			var got []string
			if json.Unmarshal(body, &p) == nil && json.Unmarshal(p.Metadata["MessageIdArray"], &text) == nil && json.Unmarshal([]byte(text), &got) == nil {
				in.mu.Lock()
				in.batches = append(in.batches, got)
				in.mu.Unlock()
			}
			time.Sleep(100 * time.Millisecond)
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprint(w, `{"Outputs":{},"Logs":[],"ReturnValue":null}`)
		}))
		defer in.srv.Close()
		instances[i] = in
		urls = append(urls, in.srv.URL)
	}
	h, err := Start(Config{
		HandlerURLs:    urls,
		HostServiceBus: sb.ConnectionString(),
		Queue:          queue,
		Functions:      workerFunction("many", false),
		// maxConcurrentCalls does not apply to batches.
		Host: &HostSettings{ServiceBus: ServiceBusSettings{MaxConcurrentCalls: 16, MaxMessageBatchSize: batchSize}},
		Logf: t.Logf,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	waitUntil(t, 30*time.Second, "every message completed", func() bool { return h.Stats().Completes == total })

	seen := map[string]int{}
	mixed := false
	for i, in := range instances {
		if m := in.most.Load(); m != 1 {
			t.Errorf("instance %d: %d invocations at once, want 1", i, m)
		}
		in.mu.Lock()
		if len(in.batches) == 0 {
			t.Errorf("instance %d got no batch: the instances should work side by side", i)
		}
		for _, b := range in.batches {
			if len(b) == 0 || len(b) > batchSize {
				t.Errorf("instance %d: a batch of %d messages, want 1 to %d", i, len(b), batchSize)
			}
			nsgs := map[int]bool{}
			for _, id := range b {
				seen[id]++
				k := slices.Index(ids, id)
				nsgs[k%3] = true
			}
			mixed = mixed || len(nsgs) > 1
			// In queue order within a batch.
			if !slices.IsSortedFunc(b, func(x, y string) int { return slices.Index(ids, x) - slices.Index(ids, y) }) {
				t.Errorf("instance %d: batch %v is not in queue order", i, b)
			}
		}
		in.mu.Unlock()
	}
	for _, id := range ids {
		if seen[id] != 1 {
			t.Errorf("message %s delivered %d times, want once", id, seen[id])
		}
	}
	if !mixed {
		t.Error("no batch mixed NSGs: a queue without sessions batches whatever comes")
	}
	if s := h.Stats(); s.Sessions != 0 || s.Abandons != 0 || s.Completes != total {
		t.Errorf("stats %+v", s)
	}
}

// TestMain lets the test binary play a custom handler in a process of its
// own (HOSTSIM_TEST_HANDLER=1), for tests that need the host to start,
// kill and restart processes: it answers the readiness probe, forwarded
// requests with its process id, and every invocation with an empty result.
func TestMain(m *testing.M) {
	if os.Getenv("HOSTSIM_TEST_HANDLER") != "1" {
		os.Exit(m.Run())
	}
	err := http.ListenAndServe("127.0.0.1:"+os.Getenv("FUNCTIONS_CUSTOMHANDLER_PORT"), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		switch {
		case r.Method == http.MethodGet && r.URL.Path == "/":
			http.NotFound(w, r)
		case r.Method == http.MethodPost && !strings.HasPrefix(r.URL.Path, "/api/"):
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprint(w, `{"Outputs":{},"Logs":[],"ReturnValue":null}`)
		default:
			fmt.Fprint(w, os.Getpid())
		}
	}))
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}

// TestHostInstanceRestarted kills an instance and restarts it: a new
// process on a new port serves forwarded requests and receives the queue
// again, and its counters go on from its first life.
func TestHostInstanceRestarted(t *testing.T) {
	sb := testenv.StartServiceBus(t)
	const queue = "hostsim-restart"
	fns := append(workerFunction("many", false), Function{Name: "api", Bindings: []Binding{{Type: "httpTrigger", Direction: "in", Name: "req"}, {Type: "http", Direction: "out", Name: "res"}}})
	h, err := Start(Config{
		Binary:         os.Args[0],
		Instances:      2,
		Env:            []string{"HOSTSIM_TEST_HANDLER=1"},
		HostServiceBus: sb.ConnectionString(),
		Queue:          queue,
		Functions:      fns,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	pid := func() string {
		t.Helper()
		resp, err := http.Get(h.URL() + "/api/pid")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	first := h.Instances()[0]
	oldURL := first.URL()
	pid()
	pid() // one request each
	before := first.Stats().Invocations["api"]
	first.Kill()
	if err := h.Restart(1); err == nil {
		t.Error("a running instance restarted")
	}
	if err := h.Restart(0); err != nil {
		t.Fatal(err)
	}
	if first.URL() == oldURL {
		t.Errorf("the restarted instance kept its port %s", oldURL)
	}
	// With the other instance gone, the restarted one does all the work.
	h.Instances()[1].Kill()
	if got := pid(); got == fmt.Sprint(first.cmd.Process.Pid) {
		if n := first.Stats().Invocations["api"]; n != before+1 {
			t.Errorf("api invocations over both lives: %d, want %d", n, before+1)
		}
	} else {
		t.Errorf("a forwarded request was served by process %s, want the restarted %d", got, first.cmd.Process.Pid)
	}
	send(t, sb, queue, "after", nil, []string{`{}`, `{}`}, nil)
	waitUntil(t, 20*time.Second, "the restarted instance completing both messages", func() bool { return first.Stats().Completes == 2 })
	if err := h.Restart(1); err != nil {
		t.Fatal(err)
	}
	_ = h.Close()
	if err := h.Restart(1); err == nil {
		t.Error("an instance restarted after Close")
	}
}
