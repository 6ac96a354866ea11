package funcs

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"jitaccess/handler/jit"
)

type recordingService struct {
	mu      sync.Mutex
	ops     []jit.Operation
	batches [][]jit.Operation // one per ApplyOperations call
	sweeps  int
	events  []jit.ResourceEvent
	fail    error            // every call fails
	failOp  map[string]error // these operations fail
	short   bool             // answer one error too few
}

func (s *recordingService) ApplyOperations(_ context.Context, ops []jit.Operation) []error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ops = append(s.ops, ops...)
	s.batches = append(s.batches, ops)
	errs := make([]error, len(ops))
	for k, op := range ops {
		errs[k] = s.fail
		if err := s.failOp[op.ID]; err != nil {
			errs[k] = err
		}
	}
	if s.short {
		errs = errs[1:]
	}
	return errs
}

func (s *recordingService) Reconcile(context.Context) (jit.SweepReport, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sweeps++
	return jit.SweepReport{}, s.fail
}

func (s *recordingService) HandleResourceEvent(_ context.Context, ev jit.ResourceEvent) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.events = append(s.events, ev)
	return s.fail
}

func decodeJSONOp(b []byte) (jit.Operation, error) {
	var op jit.Operation
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&op); err != nil {
		return op, err
	}
	if op.ID == "" {
		return op, errors.New("no ID")
	}
	return op, nil
}

func newTestHandler(svc *recordingService) *Handler {
	api := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(299)
		_, _ = w.Write([]byte(`{"forwarded":"` + r.URL.Path + `"}`))
	})
	return New(Config{API: api, Worker: svc, Reconciler: svc, DecodeOperation: decodeJSONOp})
}

func post(t *testing.T, h http.Handler, path, body string) (*httptest.ResponseRecorder, response) {
	t.Helper()
	req := httptest.NewRequest("POST", path, strings.NewReader(body))
	req.Header.Set("X-Azure-Functions-InvocationId", "11111111-2222-3333-4444-555555555555")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s: Content-Type %q, want application/json", path, ct)
	}
	var resp response
	if err := json.Unmarshal(rec.Body.Bytes(), &resp); err != nil {
		t.Fatalf("%s: response %q is not JSON: %v", path, rec.Body.String(), err)
	}
	if resp.Outputs == nil {
		t.Errorf("%s: Outputs must be an object, got %s", path, rec.Body.String())
	}
	return rec, resp
}

// The Service Bus body arrives encoded once, twice, or as an object, with
// metadata numbers as strings and times without a zone.
func TestWorkerParsesHostEncodings(t *testing.T) {
	op := `{"ID":"open-x-0-abc-0","Kind":"open","RequestID":"x","Grant":0,"NSG":"/subscriptions/s/nsg"}`
	once, _ := json.Marshal(op)
	twice, _ := json.Marshal(string(once))
	meta := `"Metadata":{"MessageId":"\"open-x-0-abc-0\"","DeliveryCount":"4","SequenceNumber":"17","EnqueuedTimeUtc":"2023-10-12T20:13:49","SessionId":"\"abc\""}`
	for name, data := range map[string]string{"object": op, "once": string(once), "twice": string(twice)} {
		t.Run(name, func(t *testing.T) {
			svc := &recordingService{}
			rec, _ := post(t, newTestHandler(svc), "/worker", `{"Data":{"msg":`+data+`},`+meta+`}`)
			if rec.Code != 200 {
				t.Fatalf("status %d: %s", rec.Code, rec.Body)
			}
			if len(svc.ops) != 1 || svc.ops[0].ID != "open-x-0-abc-0" || svc.ops[0].NSG != "/subscriptions/s/nsg" {
				t.Fatalf("ops = %+v", svc.ops)
			}
		})
	}
}

func TestWorkerFailureIsNon2xx(t *testing.T) {
	svc := &recordingService{fail: errors.New("arm said no")}
	rec, resp := post(t, newTestHandler(svc), "/worker", `{"Data":{"msg":"{\"ID\":\"a\",\"Kind\":\"open\"}"},"Metadata":{"DeliveryCount":"10"}}`)
	if rec.Code < 300 {
		t.Fatalf("status %d for a failed operation: the host would complete the message", rec.Code)
	}
	if len(resp.Logs) == 0 || !strings.Contains(resp.Logs[0], "arm said no") {
		t.Errorf("logs %v", resp.Logs)
	}
	for _, bad := range []string{``, `[]`, `{"Data":{}}`, `{"Data":{"msg":"not json"}}`, `{"Data":{"msg":"{\"ID\":\"\"}"}}`, `{"Metadata":{}}`} {
		rec, _ := post(t, newTestHandler(&recordingService{}), "/worker", bad)
		if rec.Code != 500 {
			t.Errorf("payload %q: status %d, want 500", bad, rec.Code)
		}
	}
}

func TestSweeperAndEvents(t *testing.T) {
	svc := &recordingService{}
	h := newTestHandler(svc)
	timer := `{"Data":{"timer":{"Schedule":{"AdjustForDST":true},"ScheduleStatus":{"Last":"2026-11-24T07:00:00+00:00","Next":"2026-11-24T07:01:00+00:00","LastUpdated":"2026-11-24T07:00:00+00:00"},"IsPastDue":false}},"Metadata":{}}`
	if rec, _ := post(t, h, "/sweeper", timer); rec.Code != 200 {
		t.Fatalf("sweeper status %d", rec.Code)
	}
	ev := `{"Data":{"event":{"id":"e1","topic":"/subscriptions/s","subject":"/subscriptions/s/resourceGroups/demo/providers/Microsoft.Network/networkSecurityGroups/n","eventType":"Microsoft.Resources.ResourceWriteSuccess","eventTime":"2026-11-24T07:00:00Z","data":{},"dataVersion":"","metadataVersion":"1"}},"Metadata":{}}`
	if rec, _ := post(t, h, "/events", ev); rec.Code != 200 {
		t.Fatalf("events status %d", rec.Code)
	}
	if svc.sweeps != 1 || len(svc.events) != 1 || svc.events[0].Type != "Microsoft.Resources.ResourceWriteSuccess" || !strings.HasSuffix(svc.events[0].Subject, "/n") || svc.events[0].Caller != "" {
		t.Errorf("sweeps = %d, events = %+v", svc.sweeps, svc.events)
	}
	// Event Grid's resource events name the caller in data.claims.appid.
	withClaims := strings.Replace(ev, `"data":{}`, `"data":{"claims":{"appid":"c1","oid":"o1"},"operationName":"Microsoft.Network/networkSecurityGroups/write"}`, 1)
	if rec, _ := post(t, h, "/events", withClaims); rec.Code != 200 || len(svc.events) != 2 || svc.events[1].Caller != "c1" {
		t.Errorf("an event with claims: status %d, events %+v", rec.Code, svc.events)
	}
	if rec, _ := post(t, h, "/events", `{"Data":{"event":{"subject":"x"}},"Metadata":{}}`); rec.Code != 500 {
		t.Errorf("an event without id: status %d", rec.Code)
	}
}

func TestReadinessAndForwarding(t *testing.T) {
	h := newTestHandler(&recordingService{})
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
	if rec.Code != 299 || !strings.Contains(rec.Body.String(), `"forwarded":"/"`) {
		t.Errorf("GET / (the readiness probe and the portal page) was not forwarded: %d %s", rec.Code, rec.Body)
	}
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("POST", "/api/v1/policies/p/initiate", strings.NewReader("{}")))
	if rec.Code != 299 || !strings.Contains(rec.Body.String(), "/api/v1/policies/p/initiate") {
		t.Errorf("forwarded request: %d %s", rec.Code, rec.Body)
	}
}

func TestMetaTime(t *testing.T) {
	for _, in := range []string{`"2023-10-12T20:13:49"`, `"\"2023-10-12T20:13:49\""`, `"2023-10-12T20:13:49.1234567"`, `"2023-10-12T20:13:49Z"`, `"2023-10-12T22:13:49+02:00"`} {
		got, ok := metaTime(map[string]json.RawMessage{"t": json.RawMessage(in)}, "t")
		if !ok || got.Truncate(time.Second) != time.Date(2023, 10, 12, 20, 13, 49, 0, time.UTC) {
			t.Errorf("metaTime(%s) = %v, %v", in, got, ok)
		}
	}
}

// The API function forwards every path, so a caller on the internet can POST
// /worker, /events or /sweeper too: with the headers that the front end and
// its authentication add, that is a forwarded request for the API (which has
// no such path), never an invocation.
func TestInvocationPathsFromOutsideAreNotInvocations(t *testing.T) {
	bodies := map[string]string{
		"/worker":  `{"Data":{"msg":{"ID":"open-x","Kind":"open","RequestID":"r","Grant":0,"NSG":"/subscriptions/s/nsg"}},"Metadata":{"DeliveryCount":"1"}}`,
		"/events":  `{"Data":{"event":{"id":"e","eventType":"Microsoft.Resources.ResourceDeleteSuccess","subject":"/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/virtualMachines/v"}},"Metadata":{}}`,
		"/sweeper": `{"Data":{"timer":{"IsPastDue":false}},"Metadata":{}}`,
	}
	for path, body := range bodies {
		for _, header := range []string{"X-MS-CLIENT-PRINCIPAL-ID", "X-Forwarded-For", "Authorization", "Cookie"} {
			svc := &recordingService{}
			req := httptest.NewRequest("POST", path, strings.NewReader(body))
			req.Header.Set("X-Azure-Functions-InvocationId", "11111111-2222-3333-4444-555555555555")
			req.Header.Set(header, "x")
			rec := httptest.NewRecorder()
			newTestHandler(svc).ServeHTTP(rec, req)
			if rec.Code != 299 || len(svc.ops) != 0 || svc.sweeps != 0 || len(svc.events) != 0 {
				t.Errorf("POST %s with %s: status %d, ops %d, sweeps %d, events %d: want it forwarded to the API, nothing run",
					path, header, rec.Code, len(svc.ops), svc.sweeps, len(svc.events))
			}
		}
	}
}

// batchOp is an operation body in the shape decodeJSONOp reads.
func batchOp(id, nsg string) string {
	return `{"ID":"` + id + `","Kind":"open","RequestID":"r","Grant":0,"NSG":"` + nsg + `"}`
}

// hostText is how the host sends a value that is not a JSON object: a
// string holding its JSON text.
func hostText(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	s, _ := json.Marshal(string(b))
	return string(s)
}

// batchInvocation builds a batch invocation of the bodies (each the JSON
// text of one body) with the host's metadata arrays, in the form the host
// sends (strings holding JSON) or as plain arrays.
func batchInvocation(t *testing.T, bodies []string, deliveries []int, asText bool) string {
	t.Helper()
	ids := make([]string, len(bodies))
	enqueued := make([]string, len(bodies))
	sessions := make([]string, len(bodies))
	for i := range bodies {
		ids[i] = "m" + strconv.Itoa(i)
		enqueued[i] = "2026-11-24T07:00:00.123"
		sessions[i] = "s"
	}
	encode := func(v any) string {
		if asText {
			return hostText(t, v)
		}
		b, _ := json.Marshal(v)
		return string(b)
	}
	meta := map[string]string{
		"MessageIdArray": encode(ids), "DeliveryCountArray": encode(deliveries), "EnqueuedTimeUtcArray": encode(enqueued),
		"SessionIdArray": encode(sessions), "UserPropertiesArray": `"[{},{}]"`,
		"sys": `{"MethodName":"worker","UtcNow":"2026-11-24T07:00:01.5+00:00","RandGuid":"d3e0"}`,
	}
	var b strings.Builder
	b.WriteString(`{"Data":{"msg":` + encode(bodies) + `},"Metadata":{`)
	first := true
	for k, v := range meta {
		if !first {
			b.WriteString(",")
		}
		first = false
		b.WriteString(`"` + k + `":` + v)
	}
	b.WriteString("}}")
	return b.String()
}

// With "cardinality": "many" the host sends the bodies as an array (in a
// string holding its JSON, as ToHttpScriptInvocationContext does, or as
// the array itself), each body a string or the object, and the metadata as
// arrays: every form reads as the same batch, applied in one call.
func TestWorkerBatchEncodings(t *testing.T) {
	const nsg = "/subscriptions/s/nsg"
	bodies := []string{batchOp("open-a", nsg), batchOp("open-b", nsg), batchOp("open-c", nsg)}
	once := make([]string, len(bodies))
	for i, b := range bodies {
		s, _ := json.Marshal(b)
		once[i] = string(s)
	}
	objects := `[` + strings.Join(bodies, ",") + `]`
	twice := `[` + strings.Join(once, ",") + `]` // each body a string holding a string
	meta := `"Metadata":{"MessageIdArray":"[\"m0\",\"m1\",\"m2\"]","DeliveryCountArray":"[1,1,2]","EnqueuedTimeUtcArray":"[\"2026-11-24T07:00:00\",\"2026-11-24T07:00:00\",\"2026-11-24T07:00:00\"]"}`
	for name, payload := range map[string]string{
		"host form":          batchInvocation(t, bodies, []int{1, 1, 2}, true),
		"plain arrays":       batchInvocation(t, bodies, []int{1, 1, 2}, false),
		"array of objects":   `{"Data":{"msg":` + objects + `},` + meta + `}`,
		"objects in text":    `{"Data":{"msg":` + hostText(t, json.RawMessage(objects)) + `},` + meta + `}`,
		"bodies twice":       `{"Data":{"msg":` + twice + `},` + meta + `}`,
		"no metadata arrays": `{"Data":{"msg":` + hostText(t, bodies) + `},"Metadata":{}}`,
		"arrays too short":   `{"Data":{"msg":` + hostText(t, bodies) + `},"Metadata":{"MessageIdArray":"[\"m0\"]","DeliveryCountArray":[1]}}`,
	} {
		t.Run(name, func(t *testing.T) {
			svc := &recordingService{}
			rec, resp := post(t, newTestHandler(svc), "/worker", payload)
			if rec.Code != 200 {
				t.Fatalf("status %d: %s", rec.Code, rec.Body)
			}
			if len(svc.batches) != 1 || len(svc.ops) != 3 || svc.ops[0].ID != "open-a" || svc.ops[1].ID != "open-b" || svc.ops[2].ID != "open-c" {
				t.Fatalf("batches %+v, want the three operations in queue order in one call", svc.batches)
			}
			if len(resp.Logs) == 0 || !strings.Contains(resp.Logs[0], "applied 3 operations on 1 NSGs") {
				t.Errorf("logs %v", resp.Logs)
			}
		})
	}
}

// The batch's metadata arrays give each message its own id and delivery
// count, as the dead-letter warnings need.
func TestQueueMessagesMetadata(t *testing.T) {
	inv, err := parseInvocation([]byte(batchInvocation(t, []string{`{"a":1}`, `{"b":2}`}, []int{3, 10}, true)))
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := queueMessages(inv, workerBinding)
	if err != nil {
		t.Fatal(err)
	}
	want := time.Date(2026, 11, 24, 7, 0, 0, 123e6, time.UTC)
	if len(msgs) != 2 || string(msgs[0].Body) != `{"a":1}` || string(msgs[1].Body) != `{"b":2}` ||
		msgs[0].ID != "m0" || msgs[1].ID != "m1" || msgs[0].Deliveries != 3 || msgs[1].Deliveries != 10 ||
		!msgs[0].Enqueued.Equal(want) || !msgs[1].Enqueued.Equal(want) {
		t.Errorf("messages %+v", msgs)
	}
	// One message (cardinality one) is a batch of one.
	inv, _ = parseInvocation([]byte(`{"Data":{"msg":"{\"a\":1}"},"Metadata":{"MessageId":"\"m\"","DeliveryCount":"4","EnqueuedTimeUtc":"2026-11-24T07:00:00"}}`))
	msgs, err = queueMessages(inv, workerBinding)
	if err != nil || len(msgs) != 1 || string(msgs[0].Body) != `{"a":1}` || msgs[0].ID != "m" || msgs[0].Deliveries != 4 || msgs[0].Enqueued.IsZero() {
		t.Errorf("single message: %+v, %v", msgs, err)
	}
	for _, bad := range []string{`{"Data":{"msg":[]}}`, `{"Data":{"msg":"[]"}}`, `{"Data":{"msg":"[1,"}}`, `{"Data":{}}`} {
		inv, _ := parseInvocation([]byte(bad))
		if msgs, err := queueMessages(inv, workerBinding); err == nil {
			t.Errorf("%s read as %+v", bad, msgs)
		}
	}
}

// A batch mixes NSGs: each NSG's operations go to ApplyOperations
// together, in queue order, NSG ids compared as ARM compares them (without
// case).
func TestWorkerBatchMixedNSGs(t *testing.T) {
	const a, b = "/subscriptions/s/resourceGroups/g/providers/Microsoft.Network/networkSecurityGroups/a",
		"/subscriptions/s/resourceGroups/g/providers/Microsoft.Network/networkSecurityGroups/b"
	bodies := []string{batchOp("a1", a), batchOp("b1", b), batchOp("a2", strings.ToUpper(a)), batchOp("b2", b), batchOp("a3", a)}
	svc := &recordingService{}
	rec, resp := post(t, newTestHandler(svc), "/worker", batchInvocation(t, bodies, []int{1, 1, 1, 1, 1}, true))
	if rec.Code != 200 {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	var got []string
	for _, batch := range svc.batches {
		var ids []string
		for _, op := range batch {
			ids = append(ids, op.ID)
			if !jit.SameID(op.NSG, batch[0].NSG) {
				t.Errorf("one call mixes NSGs: %+v", batch)
			}
		}
		got = append(got, strings.Join(ids, ","))
	}
	// The groups run in parallel: their calls come in any order.
	slices.Sort(got)
	if !slices.Equal(got, []string{"a1,a2,a3", "b1,b2"}) {
		t.Errorf("calls %v, want [a1 a2 a3] and [b1 b2]", got)
	}
	if len(resp.Logs) == 0 || !strings.Contains(resp.Logs[0], "applied 5 operations on 2 NSGs") {
		t.Errorf("logs %v", resp.Logs)
	}
}

// barrierService holds every ApplyOperations call until want calls are in
// flight at once (or a deadline passes), and notes what overlapped.
type barrierService struct {
	recordingService
	want    int
	release chan struct{} // closed when want calls were in flight at once

	released bool
	mu       sync.Mutex
	inFlight map[string]int // lower-cased NSG -> calls in flight for it
	now      int            // calls in flight
	most     int            // most calls in flight at once
	splits   []string       // NSGs that had two calls in flight at once
}

func (s *barrierService) ApplyOperations(ctx context.Context, ops []jit.Operation) []error {
	nsg := strings.ToLower(ops[0].NSG)
	s.mu.Lock()
	if s.inFlight[nsg]++; s.inFlight[nsg] > 1 {
		s.splits = append(s.splits, nsg)
	}
	s.now++
	s.most = max(s.most, s.now)
	if s.now == s.want && !s.released {
		s.released = true
		close(s.release)
	}
	s.mu.Unlock()

	select {
	case <-s.release:
	case <-time.After(5 * time.Second): // the test then fails: too few at once
	}
	errs := s.recordingService.ApplyOperations(ctx, ops)

	s.mu.Lock()
	s.inFlight[nsg]--
	s.now--
	s.mu.Unlock()
	return errs
}

// The NSGs of one batch are applied in parallel, at most maxParallelNSGs
// at once, and one NSG's operations always in one call: never split
// between two calls that could overlap.
func TestWorkerBatchAppliesNSGsInParallel(t *testing.T) {
	const nsgs, perNSG = maxParallelNSGs + 4, 3
	var bodies []string
	var deliveries []int
	for k := range perNSG { // interleaved, as a queue shared by NSGs holds them
		for n := range nsgs {
			nsg := "/subscriptions/s/resourceGroups/g/providers/Microsoft.Network/networkSecurityGroups/nsg-" + strconv.Itoa(n)
			if k == 1 {
				nsg = strings.ToUpper(nsg) // the same NSG, as ARM compares ids
			}
			bodies = append(bodies, batchOp(fmt.Sprintf("op-%d-%d", n, k), nsg))
			deliveries = append(deliveries, 1)
		}
	}
	svc := &barrierService{want: maxParallelNSGs, release: make(chan struct{}), inFlight: map[string]int{}}
	h := New(Config{API: http.NotFoundHandler(), Worker: svc, Reconciler: svc, DecodeOperation: decodeJSONOp})
	rec, resp := post(t, h, "/worker", batchInvocation(t, bodies, deliveries, true))
	if rec.Code != 200 {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	if svc.most != maxParallelNSGs {
		t.Errorf("at most %d NSGs applied at once, want %d", svc.most, maxParallelNSGs)
	}
	if len(svc.splits) > 0 {
		t.Errorf("NSGs with two calls in flight at once: %v", svc.splits)
	}
	calls := map[string][]string{} // NSG -> the op ids of its calls
	for _, batch := range svc.batches {
		nsg := strings.ToLower(batch[0].NSG)
		if _, twice := calls[nsg]; twice {
			t.Errorf("NSG %s applied in more than one call", nsg)
		}
		for k, op := range batch {
			if !jit.SameID(op.NSG, nsg) || op.ID != fmt.Sprintf("op-%s-%d", strings.TrimPrefix(nsg, "/subscriptions/s/resourcegroups/g/providers/microsoft.network/networksecuritygroups/nsg-"), k) {
				t.Errorf("call for %s holds %s at %d: want its own operations in queue order", nsg, op.ID, k)
			}
			calls[nsg] = append(calls[nsg], op.ID)
		}
	}
	if len(calls) != nsgs || len(svc.ops) != nsgs*perNSG {
		t.Errorf("%d NSGs and %d operations applied, want %d and %d", len(calls), len(svc.ops), nsgs, nsgs*perNSG)
	}
	if len(resp.Logs) == 0 || !strings.Contains(resp.Logs[0], fmt.Sprintf("applied %d operations on %d NSGs", nsgs*perNSG, nsgs)) {
		t.Errorf("logs %v", resp.Logs)
	}
}

// A failure in one NSG's group fails the invocation while the groups that
// ran beside it are applied.
func TestWorkerBatchParallelFailure(t *testing.T) {
	var bodies []string
	for n := range 5 {
		bodies = append(bodies, batchOp("op-"+strconv.Itoa(n), "/subscriptions/s/nsg-"+strconv.Itoa(n)))
	}
	svc := &recordingService{failOp: map[string]error{"op-3": errors.New("arm said no")}}
	rec, resp := post(t, newTestHandler(svc), "/worker", batchInvocation(t, bodies, []int{1, 1, 1, 1, 1}, true))
	if rec.Code != 500 {
		t.Fatalf("status %d with a failed group", rec.Code)
	}
	if len(svc.batches) != 5 {
		t.Errorf("%d calls, want one per NSG", len(svc.batches))
	}
	if last := resp.Logs[len(resp.Logs)-1]; !strings.Contains(last, "1 of 5 queue messages failed") || !strings.Contains(last, "applying op-3: arm said no") {
		t.Errorf("logs %v", resp.Logs)
	}
}

// One failed operation fails the invocation, so the host abandons the
// batch and delivers it again; the others were applied all the same, and
// the log names the one that failed, at error level on its last delivery.
func TestWorkerBatchFailingOp(t *testing.T) {
	const nsg = "/subscriptions/s/nsg"
	bodies := []string{batchOp("open-a", nsg), batchOp("open-b", nsg), batchOp("open-c", nsg)}
	for _, tc := range []struct {
		name       string
		deliveries []int
		wantLevel  string
	}{
		{"early delivery", []int{1, 2, 1}, "warn"},
		{"last delivery", []int{10, 10, 10}, "error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs bytes.Buffer
			svc := &recordingService{failOp: map[string]error{"open-b": errors.New("arm said no")}}
			h := New(Config{API: http.NotFoundHandler(), Worker: svc, Reconciler: svc, DecodeOperation: decodeJSONOp, Log: zerolog.New(&logs)})
			rec, resp := post(t, h, "/worker", batchInvocation(t, bodies, tc.deliveries, true))
			if rec.Code < 300 {
				t.Fatalf("status %d for a batch with a failed operation: the host would complete it", rec.Code)
			}
			if len(svc.ops) != 3 {
				t.Errorf("applied %+v, want all three tried", svc.ops)
			}
			if len(resp.Logs) == 0 || !strings.Contains(resp.Logs[len(resp.Logs)-1], "applying open-b: arm said no") {
				t.Errorf("logs %v", resp.Logs)
			}
			var failedLogged, doneButDeadLettered bool
			for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
				var ev map[string]any
				if err := json.Unmarshal([]byte(line), &ev); err != nil {
					t.Fatalf("log line %q: %v", line, err)
				}
				if ev["op"] == "open-b" && ev["level"] == tc.wantLevel && ev["messageId"] == "m1" && ev["nsg"] == nsg {
					failedLogged = true
				}
				if ev["op"] == "open-a" && ev["messageId"] == "m0" && strings.Contains(line, "dead-lettered though done") {
					doneButDeadLettered = true
				}
			}
			if !failedLogged {
				t.Errorf("no %s log naming the failed operation open-b (message m1):\n%s", tc.wantLevel, logs.String())
			}
			if doneButDeadLettered != (tc.wantLevel == "error") {
				t.Errorf("applied-but-dead-lettered warning for open-a: %v, want %v:\n%s", doneButDeadLettered, tc.wantLevel == "error", logs.String())
			}
		})
	}
	// A service that answers fewer outcomes than operations fails them all.
	svc := &recordingService{short: true}
	if rec, _ := post(t, newTestHandler(svc), "/worker", batchInvocation(t, bodies, []int{1, 1, 1}, true)); rec.Code != 500 {
		t.Errorf("status %d with outcomes missing", rec.Code)
	}
	// A failed NSG write fails every op; the result names the first few.
	many, deliveries := make([]string, 40), make([]int, 40)
	for i := range many {
		many[i], deliveries[i] = batchOp("open-"+strconv.Itoa(i), nsg), 1
	}
	svc = &recordingService{fail: errors.New("arm said no")}
	rec, resp := post(t, newTestHandler(svc), "/worker", batchInvocation(t, many, deliveries, true))
	if last := resp.Logs[len(resp.Logs)-1]; rec.Code != 500 || !strings.Contains(last, "40 of 40 queue messages failed") ||
		!strings.Contains(last, "applying open-4: arm said no; and 35 more") || strings.Contains(last, "open-5:") {
		t.Errorf("status %d, logs %v", rec.Code, resp.Logs)
	}
}

// An unreadable message does not keep its batch companions from being
// applied, but it fails the invocation, so that it is delivered again (a
// newer release may read it) until the queue dead-letters it.
func TestWorkerBatchUnreadableMessage(t *testing.T) {
	const nsg = "/subscriptions/s/nsg"
	bodies := []string{batchOp("open-a", nsg), `{"ID":"open-b","Kind":"open","Colour":"blue"}`, `not json`, batchOp("open-c", nsg)}
	svc := &recordingService{}
	rec, resp := post(t, newTestHandler(svc), "/worker", batchInvocation(t, bodies, []int{1, 1, 1, 1}, true))
	if rec.Code != 500 {
		t.Fatalf("status %d with unreadable messages in the batch", rec.Code)
	}
	if len(svc.batches) != 1 || len(svc.ops) != 2 || svc.ops[0].ID != "open-a" || svc.ops[1].ID != "open-c" {
		t.Errorf("applied %+v, want open-a and open-c in one call", svc.batches)
	}
	last := resp.Logs[len(resp.Logs)-1]
	if !strings.Contains(last, "2 of 4 queue messages failed") || !strings.Contains(last, "reading the queue message m1") || !strings.Contains(last, "reading the queue message m2") {
		t.Errorf("logs %v", resp.Logs)
	}
}
