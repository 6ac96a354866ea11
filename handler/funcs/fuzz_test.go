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
	}
}()

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
		h := New(Config{API: http.NotFoundHandler(), Service: svc, DecodeOperation: servicebus.DecodeOperation})
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
			if fail || calls[path] != 1 {
				t.Fatalf("POST /%s %q: 200 with service failing=%v, calls %v", path, body, fail, calls)
			}
			if path == EventsFunction && (svc.events[0].ID == "" || svc.events[0].Type == "") {
				t.Fatalf("POST /%s %q: handled an event without id or type: %+v", path, body, svc.events[0])
			}
			if path == WorkerFunction {
				if _, err := servicebus.EncodeOperation(svc.ops[0]); err != nil {
					t.Fatalf("POST /%s %q applied an operation that does not encode: %+v: %v", path, body, svc.ops[0], err)
				}
			}
		case http.StatusInternalServerError:
		default:
			t.Fatalf("POST /%s %q: status %d", path, body, rec.Code)
		}
	})
}

type stubService struct {
	mu     sync.Mutex
	ops    []jit.Operation
	events []jit.ResourceEvent
	sweeps int
	err    error
}

func (s *stubService) ApplyOperation(_ context.Context, op jit.Operation) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ops = append(s.ops, op)
	return s.err
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
