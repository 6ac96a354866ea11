package funcs

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"jitaccess/handler/jit"
	"jitaccess/handler/servicebus"
)

// Fuzz targets for the Functions host's invocation payloads: the parser,
// the unwrapping of values the host encodes once or twice, the metadata
// readers, and the whole handler for each function. Plain `go test` runs
// their seeds (here and in testdata/fuzz); .ci/fuzz.sh fuzzes each for a
// bounded time.

const fuzzOp = `{"id":"open-x-0-abc-0","kind":"open","requestId":"x","grant":0,"nsg":"/subscriptions/s/nsg"}`

// invocationSeeds are payloads as the host really sends them.
var invocationSeeds = func() []string {
	once, _ := json.Marshal(fuzzOp)
	twice, _ := json.Marshal(string(once))
	meta := `"Metadata":{"MessageId":"\"open-x-0-abc-0\"","DeliveryCount":"4","SequenceNumber":"17","EnqueuedTimeUtc":"2023-10-12T20:13:49","SessionId":"\"abc\"","sys":{"MethodName":"worker","UtcNow":"2023-10-12T20:13:50.1234567Z","RandGuid":"d3e0"}}`
	return []string{
		`{"Data":{"msg":` + fuzzOp + `},` + meta + `}`,
		`{"Data":{"msg":` + string(once) + `},` + meta + `}`,
		`{"Data":{"msg":` + string(twice) + `},` + meta + `}`,
		`{"Data":{"msg":` + string(once) + `},"Metadata":{"DeliveryCount":10,"EnqueuedTimeUtc":"2023-10-12T20:13:49.1234567+02:00"}}`,
		`{"Data":{"msg":"{\"id\":\"a\",\"kind\":\"reboot\"}"},"Metadata":{"DeliveryCount":"x","EnqueuedTimeUtc":"yesterday"}}`,
		`{"Data":{"timer":{"Schedule":{"AdjustForDST":true},"ScheduleStatus":{"Last":"2026-11-24T07:00:00+00:00","Next":"2026-11-24T07:01:00+00:00","LastUpdated":"2026-11-24T07:00:00+00:00"},"IsPastDue":false}},"Metadata":{}}`,
		`{"Data":{"timer":"{\"IsPastDue\":true}"},"Metadata":null}`,
		`{"Data":{"event":{"id":"e1","topic":"/subscriptions/s","subject":"/subscriptions/s/resourceGroups/demo/providers/Microsoft.Network/networkSecurityGroups/n","eventType":"Microsoft.Resources.ResourceWriteSuccess","eventTime":"2026-11-24T07:00:00Z","data":{},"dataVersion":"","metadataVersion":"1"}},"Metadata":{}}`,
		`{"Data":{"event":{"subject":"x"}},"Metadata":{}}`,
		``, `[]`, `null`, `{"Data":{}}`, `{"Data":null}`, `{"Metadata":{}}`, `{"Data":{"msg":"not json"}}`, `{"Data":{"msg":null}}`,
		`{"Data":{"msg":1e999}}`, `{"Data":{"msg":""}} trailing`, `{"Data":{"msg":"\"\\\"\\\\\\\"\\\"\""}}`,
		// Batches ("cardinality": "many"): the bodies' array as JSON text
		// in a string (as the host sends it) or as the array, bodies as
		// strings or objects, the metadata as arrays.
		`{"Data":{"msg":` + batchText + `},` + batchMeta + `}`,
		`{"Data":{"msg":[` + string(once) + `,` + string(once) + `]},"Metadata":{"MessageIdArray":["a","b"],"DeliveryCountArray":[1,10]}}`,
		`{"Data":{"msg":[` + fuzzOp + `,` + fuzzOpOther + `]},` + batchMeta + `}`,
		`{"Data":{"msg":[` + string(once) + `,"not json"]},` + batchMeta + `}`,
		`{"Data":{"msg":"[]"},"Metadata":{}}`, `{"Data":{"msg":[null]},"Metadata":{"DeliveryCountArray":"[1,2,3]"}}`,
	}
}()

// fuzzOpOther is an operation of another NSG.
const fuzzOpOther = `{"id":"close-y-1-def-0","kind":"close","requestId":"y","grant":1,"nsg":"/subscriptions/s/nsg2","due":"2030-01-02T03:04:05.5Z"}`

// batchText is a batch of two bodies as the host sends it: a string
// holding the JSON array of the bodies, each a string.
var batchText = func() string {
	b, _ := json.Marshal([]string{fuzzOp, fuzzOpOther})
	s, _ := json.Marshal(string(b))
	return string(s)
}()

const batchMeta = `"Metadata":{"MessageIdArray":"[\"open-x-0-abc-0\",\"close-y-1-def-0\"]","DeliveryCountArray":"[1,10]",` +
	`"EnqueuedTimeUtcArray":"[\"2026-11-24T07:00:00.123\",\"2026-11-24T07:00:01\"]","SessionIdArray":"[\"abc\",\"abc\"]",` +
	`"sys":{"MethodName":"worker","UtcNow":"2026-11-24T07:00:02.1234567+00:00","RandGuid":"d3e0"}}`

func FuzzParseInvocation(f *testing.F) {
	for _, s := range invocationSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		inv, err := parseInvocation(body)
		if err != nil {
			if err.Error() == "" {
				t.Fatalf("parseInvocation(%q): empty error", body)
			}
			return
		}
		if inv.Data == nil {
			t.Fatalf("parseInvocation(%q) accepted a payload without Data", body)
		}
		for _, raw := range inv.Data {
			_ = hostValue(raw)
		}
		for k := range inv.Metadata {
			_ = metaString(inv.Metadata, k)
			_, _ = metaInt(inv.Metadata, k)
			if tm, ok := metaTime(inv.Metadata, k); ok && tm.Location() != time.UTC {
				t.Fatalf("metaTime(%s) = %v, not in UTC", inv.Metadata[k], tm)
			}
		}
	})
}

// FuzzQueueMessages: the batch decoder never panics, reads a batch as
// many messages as the array has elements and gives a message metadata
// only from arrays as long as the batch; a batch of bodies reads the same
// whether the host sends it as an array or as a string holding one.
func FuzzQueueMessages(f *testing.F) {
	for _, s := range invocationSeeds {
		f.Add([]byte(s), fuzzOp, fuzzOpOther, uint8(0))
	}
	f.Add([]byte(`{"Data":{"msg":"[\"{}\",{}]"},"Metadata":{"DeliveryCountArray":"[1,\"2\"]","MessageIdArray":[null,"b"]}}`), `{"a":1}`, ` [] `, uint8(1))
	f.Add([]byte(`{"Data":{"msg":"[1,2"},"Metadata":{"DeliveryCountArray":"[1]"}}`), `4`, `"x"`, uint8(2))
	f.Fuzz(func(t *testing.T, payload []byte, a, b string, form uint8) {
		if inv, err := parseInvocation(payload); err == nil {
			msgs, err := queueMessages(inv, workerBinding)
			if err == nil && len(msgs) == 0 {
				t.Fatalf("queueMessages(%q) read no message and no error", payload)
			}
		}
		// Two bodies, each valid JSON of at most one string level (what
		// a sender writes), in the forms the host sends.
		for _, body := range []string{a, b} {
			if !json.Valid([]byte(body)) || stringDepth([]byte(body)) > 1 || !utf8.ValidString(body) {
				return
			}
		}
		elems := []string{a, b}
		if form%2 == 1 { // each body as a string
			for i, e := range elems {
				s, _ := json.Marshal(e)
				elems[i] = string(s)
			}
		}
		array := "[" + strings.Join(elems, ",") + "]"
		text, _ := json.Marshal(array)
		meta := map[string]json.RawMessage{"DeliveryCountArray": json.RawMessage(`"[1,2]"`), "MessageIdArray": json.RawMessage(`["x"]`)}
		var got [2][]queueMessage
		for k, data := range []string{array, string(text)} {
			msgs, err := queueMessages(invocation{Data: map[string]json.RawMessage{"msg": json.RawMessage(data)}, Metadata: meta}, "msg")
			if err != nil || len(msgs) != 2 {
				t.Fatalf("batch %s: %+v, %v; want two messages", data, msgs, err)
			}
			if msgs[0].Deliveries != 1 || msgs[1].Deliveries != 2 || msgs[0].ID != "" {
				t.Fatalf("batch %s: metadata read as %+v", data, msgs)
			}
			got[k] = msgs
		}
		for i := range 2 {
			if !bytes.Equal(got[0][i].Body, got[1][i].Body) {
				t.Fatalf("body %d reads %q from the array, %q from its text", i, got[0][i].Body, got[1][i].Body)
			}
			if stringDepth([]byte(elems[i])) == 0 && !bytes.Equal(got[0][i].Body, bytes.TrimSpace([]byte(elems[i]))) {
				t.Fatalf("body %q reads %q", elems[i], got[0][i].Body)
			}
		}
	})
}

// FuzzHostValue: the host encodes a value once or twice, and both read the
// same. hostValue unwraps at most three string levels, so this holds for
// values that are at most one string deep themselves (objects, numbers, a
// plain string), which is all the host sends; "\"\\\"x\\\"\"" does not.
func FuzzHostValue(f *testing.F) {
	for _, s := range []string{fuzzOp, ` {"a":1} `, `"open-x"`, `4`, `"4"`, `null`, `[1,"2"]`, `"\"x\""`, `"<&>"`, `""`, `" "`, `not json`, `"unterminated`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v := hostValue(json.RawMessage(s)) // any bytes: must not panic
		if !strings.HasPrefix(strings.TrimSpace(s), `"`) && string(v) != strings.TrimSpace(s) {
			t.Fatalf("hostValue(%q) = %q; a value that is no string must come back as it is", s, v)
		}
		if !json.Valid([]byte(s)) || stringDepth([]byte(s)) > 1 {
			return
		}
		once, _ := json.Marshal(s)
		twice, _ := json.Marshal(string(once))
		a, b := hostValue(once), hostValue(twice)
		if !bytes.Equal(a, b) {
			t.Fatalf("value %q encoded once reads %q, twice %q", s, a, b)
		}
		// (Marshal replaces invalid UTF-8, so compare only valid text.)
		if stringDepth([]byte(s)) == 0 && utf8.ValidString(s) && !bytes.Equal(a, hostValue(json.RawMessage(s))) {
			t.Fatalf("value %q reads %q encoded once, %q as it is", s, a, hostValue(json.RawMessage(s)))
		}
	})
}

// stringDepth counts the JSON string levels around a JSON value.
func stringDepth(b []byte) int {
	n := 0
	for {
		b = bytes.TrimSpace(b)
		var s string
		if len(b) == 0 || b[0] != '"' || json.Unmarshal(b, &s) != nil {
			return n
		}
		b, n = []byte(s), n+1
	}
}

// FuzzMetaInt: DeliveryCount arrives as 4, "4" or "\"4\"", all read as 4.
func FuzzMetaInt(f *testing.F) {
	f.Add(int64(4), "")
	f.Add(int64(-1), `"x"`)
	f.Add(int64(1)<<62, `1e3`)
	f.Add(int64(0), `"\"0\""`)
	f.Fuzz(func(t *testing.T, n int64, raw string) {
		_, _ = metaInt(map[string]json.RawMessage{"k": json.RawMessage(raw)}, "k")
		plain := strconv.FormatInt(n, 10)
		once, _ := json.Marshal(plain)
		twice, _ := json.Marshal(string(once))
		for _, v := range []string{plain, string(once), string(twice), " " + string(once) + "\n"} {
			got, ok := metaInt(map[string]json.RawMessage{"DeliveryCount": json.RawMessage(v)}, "DeliveryCount")
			if !ok || got != n {
				t.Fatalf("metaInt(%s) = %d, %v; want %d", v, got, ok, n)
			}
		}
		if _, ok := metaInt(map[string]json.RawMessage{}, "DeliveryCount"); ok {
			t.Fatalf("metaInt of a missing key reports a value")
		}
	})
}

// FuzzMetaTime: EnqueuedTimeUtc arrives in RFC 3339, without a zone, or
// with .NET's seven fractional digits; each reads as the instant meant.
func FuzzMetaTime(f *testing.F) {
	f.Add(int64(1697141629), int64(123456789), uint8(0), int16(0), "")
	f.Add(int64(1697141629), int64(0), uint8(1), int16(120), `"2023-10-12T20:13:49"`)
	f.Add(int64(-62135596800), int64(999999999), uint8(2), int16(-720), `"2023-10-12T20:13:49.12345678901+02:00"`)
	f.Add(int64(253402300799), int64(1), uint8(3), int16(59), `"\"2023-10-12T20:13:49\""`)
	f.Fuzz(func(t *testing.T, sec, nsec int64, form uint8, offsetMinutes int16, raw string) {
		if tm, ok := metaTime(map[string]json.RawMessage{"k": json.RawMessage(raw)}, "k"); ok && tm.Location() != time.UTC {
			t.Fatalf("metaTime(%s) = %v, not in UTC", raw, tm)
		}
		const first, last = -62135596800, 253402300799 // 0001-01-01 to 9999-12-31
		sec = first + (sec%(last-first)+(last-first))%(last-first)
		zone := time.FixedZone("", int(offsetMinutes%(14*60))*60)
		want := time.Unix(sec, (nsec%1e9+1e9)%1e9).UTC()
		if y := want.In(zone).Year(); y < 1 || y > 9999 {
			return // RFC 3339 has four-digit years only
		}
		var s string
		switch form % 4 {
		case 0:
			s = want.In(zone).Format(time.RFC3339Nano)
		case 1: // no zone, UTC meant
			want = want.Truncate(time.Second)
			s = want.Format("2006-01-02T15:04:05")
		case 2: // .NET: seven digits, no zone
			want = want.Truncate(100 * time.Nanosecond)
			s = want.Format("2006-01-02T15:04:05.0000000")
		case 3: // .NET: seven digits and an offset
			want = want.Truncate(100 * time.Nanosecond)
			s = want.In(zone).Format("2006-01-02T15:04:05.0000000Z07:00")
		}
		once, _ := json.Marshal(s)
		twice, _ := json.Marshal(string(once))
		for _, v := range [][]byte{once, twice} {
			got, ok := metaTime(map[string]json.RawMessage{"EnqueuedTimeUtc": v}, "EnqueuedTimeUtc")
			if !ok || !got.Equal(want) || got.Location() != time.UTC {
				t.Fatalf("metaTime(%s) = %v, %v; want %v", v, got, ok, want)
			}
		}
	})
}

// FuzzInvocation posts any payload to each function through the whole
// handler, over the production decoder and a stub service. It must never
// panic, must always answer application/json in the host's shape, and must
// answer non-2xx exactly when the work was not done, so the host
// redelivers.
func FuzzInvocation(f *testing.F) {
	for i, s := range invocationSeeds {
		for fn := range uint8(3) {
			f.Add(fn, []byte(s), i%2 == 1)
		}
	}
	f.Fuzz(func(t *testing.T, fn uint8, body []byte, fail bool) {
		svc := &stubService{}
		if fail {
			svc.err = errors.New("arm said no")
		}
		h := New(Config{API: http.NotFoundHandler(), Worker: svc, Reconciler: svc, DecodeOperation: servicebus.DecodeOperation})
		path := []string{WorkerFunction, EventsFunction, SweeperFunction}[fn%3]
		req := httptest.NewRequest(http.MethodPost, "/"+path, bytes.NewReader(body))
		req.Header.Set("X-Azure-Functions-InvocationId", "11111111-2222-3333-4444-555555555555")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)

		if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
			t.Fatalf("POST /%s %q: Content-Type %q", path, body, ct)
		}
		var resp struct {
			Outputs map[string]any
			Logs    []string
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &resp); err != nil || resp.Outputs == nil || len(resp.Logs) == 0 {
			t.Fatalf("POST /%s %q: answer %d %s is not the host's shape (%v)", path, body, rec.Code, rec.Body, err)
		}
		switch rec.Code {
		case http.StatusOK:
			calls := map[string]int{WorkerFunction: len(svc.ops), EventsFunction: len(svc.events), SweeperFunction: svc.sweeps}
			if fail || calls[path] < 1 || (path != WorkerFunction && calls[path] != 1) {
				t.Fatalf("POST /%s %q: 200 with service failing=%v, calls %v", path, body, fail, calls)
			}
			if path == EventsFunction && (svc.events[0].ID == "" || svc.events[0].Type == "") {
				t.Fatalf("POST /%s %q: handled an event without id or type: %+v", path, body, svc.events[0])
			}
			if path == WorkerFunction {
				// Every message of the batch was read and applied.
				inv, err := parseInvocation(body)
				if err != nil {
					t.Fatalf("POST /%s %q: 200 for a payload that does not parse: %v", path, body, err)
				}
				if msgs, err := queueMessages(inv, workerBinding); err != nil || len(msgs) != len(svc.ops) {
					t.Fatalf("POST /%s %q: 200 with %d operations applied of messages %+v (%v)", path, body, len(svc.ops), msgs, err)
				}
				for _, op := range svc.ops {
					if _, err := servicebus.EncodeOperation(op); err != nil {
						t.Fatalf("POST /%s %q applied an operation that does not encode: %+v: %v", path, body, op, err)
					}
				}
			}
			if path == WorkerFunction {
				for _, batch := range svc.batches {
					for _, op := range batch {
						if !jit.SameID(op.NSG, batch[0].NSG) {
							t.Fatalf("POST /%s %q: one ApplyOperations call mixes NSGs: %+v", path, body, batch)
						}
					}
				}
			}
		case http.StatusInternalServerError:
		default:
			t.Fatalf("POST /%s %q: status %d", path, body, rec.Code)
		}
	})
}

type stubService struct {
	mu      sync.Mutex
	ops     []jit.Operation
	batches [][]jit.Operation
	events  []jit.ResourceEvent
	sweeps  int
	err     error
}

func (s *stubService) ApplyOperations(_ context.Context, ops []jit.Operation) []error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ops = append(s.ops, ops...)
	s.batches = append(s.batches, ops)
	errs := make([]error, len(ops))
	for k := range errs {
		errs[k] = s.err
	}
	return errs
}

func (s *stubService) Reconcile(context.Context) (jit.SweepReport, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sweeps++
	return jit.SweepReport{}, s.err
}

func (s *stubService) HandleResourceEvent(_ context.Context, ev jit.ResourceEvent) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.events = append(s.events, ev)
	return s.err
}
