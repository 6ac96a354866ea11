package servicebus_test

import (
	"bytes"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"jitaccess/handler/jit"
	"jitaccess/handler/servicebus"
)

// Fuzz targets for the queue message codec: a message body comes from the
// queue, which anyone with send rights can write to. Plain `go test` runs
// their seeds (here and in testdata/fuzz); .ci/fuzz.sh fuzzes each for a
// bounded time.

func FuzzDecodeOperation(f *testing.F) {
	for _, s := range []string{
		`{"id":"open-r-0-abc-0","kind":"open","requestId":"r","grant":0,"nsg":"/subscriptions/s/resourceGroups/g/providers/Microsoft.Network/networkSecurityGroups/n"}`,
		`{"id":"i","kind":"close","requestId":"r","grant":2,"nsg":"n","due":"2030-01-02T03:04:05Z"}`,
		`{"id":"i","kind":"close","requestId":"r","grant":2,"nsg":"n","due":"2030-01-02T03:04:05.123456789+01:00"}`,
		`{"id":"i","kind":"close","requestId":"r","grant":2,"nsg":"n","due":"0001-01-01T00:00:00Z"}`,
		`{"id":"i","kind":"close","requestId":"r","grant":2,"nsg":"n","due":null}`,
		`{"id":"i","kind":"close","requestId":"r","grant":2,"nsg":"n","due":"9999-12-31T23:59:59-01:00"}`,
		`{"ID":"i","KIND":"open","RequestID":"r","Grant":1,"NSG":"n"}`,
		` {"id":"i","kind":"open","requestId":"r","grant":0,"nsg":"n"} ` + "\n",
		``, `open please`, `"x"`, `null`, `{}`, `[]`,
		`{"id":"i","kind":"open","requestId":"r","grant":0,"nsg":"n","port":22}`,
		`{"id":"i","kind":"reboot","requestId":"r","grant":0,"nsg":"n"}`,
		`{"id":"i","kind":"open","requestId":"r","grant":-1,"nsg":"n"}`,
		`{"id":"i","kind":"open","requestId":"r","grant":1e3,"nsg":"n"}`,
		`{"id":"i","kind":"open","requestId":"r","grant":99999999999999999999,"nsg":"n"}`,
		`{"id":"i","kind":"open","requestId":"r","grant":"0","nsg":"n"}`,
		`{"id":"i","kind":"open","requestId":"r","grant":0,"nsg":"n","due":"tomorrow"}`,
		`{"id":"i","kind":"open","requestId":"r","grant":0,"nsg":"n"} {}`,
		`{"id":"` + strings.Repeat("i", 129) + `","kind":"open","requestId":"r","grant":0,"nsg":"n"}`,
		`{"id":"i\u0000\ud800","kind":"open","requestId":"r","grant":0,"nsg":"n"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		op, err := servicebus.DecodeOperation(body)
		if err != nil {
			if jit.ErrorCode(err) != jit.EINVALID || jit.ErrorMessage(err) == "" {
				t.Fatalf("DecodeOperation(%q): error %v has code %q", body, err, jit.ErrorCode(err))
			}
			return
		}
		if op.ID == "" || len(op.ID) > 128 || op.Kind != jit.OpOpen && op.Kind != jit.OpClose || op.RequestID == "" || op.NSG == "" || op.Grant < 0 {
			t.Fatalf("DecodeOperation(%q) accepted %+v", body, op)
		}
		b, err := servicebus.EncodeOperation(op)
		if err != nil {
			t.Fatalf("DecodeOperation(%q) = %+v, which does not encode: %v", body, op, err)
		}
		back, err := servicebus.DecodeOperation(b)
		if err != nil || !sameOperation(op, back) {
			t.Fatalf("DecodeOperation(%q) = %+v; encoded %s it decodes to %+v, %v", body, op, b, back, err)
		}
		if b2, _ := servicebus.EncodeOperation(back); !bytes.Equal(b, b2) {
			t.Fatalf("encoding is not stable: %s then %s", b, b2)
		}
	})
}

// FuzzEncodeOperation: whatever EncodeOperation accepts decodes to the same
// operation. Operations the service builds are valid UTF-8 (ids are base32,
// NSG ids come from ARM); JSON would replace anything else.
func FuzzEncodeOperation(f *testing.F) {
	f.Add("open-r-0-abc-0", jit.OpOpen, "r", 0, "/subscriptions/s/nsg", int64(0), int64(0))
	f.Add("close-r-3-abc-1893553445", jit.OpClose, "r", 3, "n", int64(1893553445), int64(123456789))
	f.Add("", "reboot", "", -1, "", int64(-62135596800), int64(0))
	f.Add("i", jit.OpClose, "r", 1, "n", int64(253402300799), int64(999999999))
	f.Fuzz(func(t *testing.T, id, kind, requestID string, grant int, nsg string, sec, nsec int64) {
		for _, s := range []string{id, kind, requestID, nsg} {
			if !utf8.ValidString(s) {
				return
			}
		}
		op := jit.Operation{ID: id, Kind: kind, RequestID: requestID, Grant: grant, NSG: nsg}
		if sec != 0 || nsec != 0 {
			op.Due = time.Unix(sec, nsec)
		}
		b, err := servicebus.EncodeOperation(op)
		if err != nil {
			if y := op.Due.UTC().Year(); jit.ErrorCode(err) == jit.EINVALID || y < 0 || y > 9999 {
				return // refused, or beyond what RFC 3339 can write
			}
			t.Fatalf("EncodeOperation(%+v): %v", op, err)
		}
		back, err := servicebus.DecodeOperation(b)
		if err != nil || !sameOperation(op, back) {
			t.Fatalf("EncodeOperation(%+v) = %s, which decodes to %+v, %v", op, b, back, err)
		}
	})
}

func sameOperation(a, b jit.Operation) bool {
	return a.ID == b.ID && a.Kind == b.Kind && a.RequestID == b.RequestID && a.Grant == b.Grant && a.NSG == b.NSG &&
		a.Due.Equal(b.Due) && a.Due.IsZero() == b.Due.IsZero()
}
