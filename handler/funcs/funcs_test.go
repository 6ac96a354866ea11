package funcs

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"jitaccess/handler/jit"
)

type recordingService struct {
	mu     sync.Mutex
	ops    []jit.Operation
	sweeps int
	events []jit.ResourceEvent
	fail   error
}

func (s *recordingService) ApplyOperation(_ context.Context, op jit.Operation) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ops = append(s.ops, op)
	return s.fail
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
	return New(Config{API: api, Service: svc, DecodeOperation: decodeJSONOp})
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
	if svc.sweeps != 1 || len(svc.events) != 1 || svc.events[0].Type != "Microsoft.Resources.ResourceWriteSuccess" || !strings.HasSuffix(svc.events[0].Subject, "/n") {
		t.Errorf("sweeps = %d, events = %+v", svc.sweeps, svc.events)
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
