package servicebus_test

import (
	"strings"
	"testing"
	"time"

	"jitaccess/handler/jit"
	"jitaccess/handler/servicebus"
)

func TestEncodeDecodeRoundTrip(t *testing.T) {
	due := time.Date(2030, 1, 2, 3, 4, 5, 123456789, time.FixedZone("x", 3600))
	for _, o := range []jit.Operation{
		{ID: "open-1", Kind: jit.OpOpen, RequestID: "r1", Grant: 0, NSG: nsgA},
		{ID: "close-1", Kind: jit.OpClose, RequestID: "r1", Grant: 3, NSG: nsgB, Due: due},
	} {
		b, err := servicebus.EncodeOperation(o)
		if err != nil {
			t.Fatal(err)
		}
		got, err := servicebus.DecodeOperation(b)
		if err != nil {
			t.Fatalf("DecodeOperation(%s): %v", b, err)
		}
		if got.ID != o.ID || got.Kind != o.Kind || got.RequestID != o.RequestID || got.Grant != o.Grant ||
			got.NSG != o.NSG || !got.Due.Equal(o.Due) || got.Due.IsZero() != o.Due.IsZero() {
			t.Errorf("round trip of %+v gave %+v", o, got)
		}
	}
}

func TestWireFormat(t *testing.T) {
	due := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	b, err := servicebus.EncodeOperation(jit.Operation{ID: "i", Kind: jit.OpClose, RequestID: "r", Grant: 2, NSG: "n", Due: due})
	if err != nil {
		t.Fatal(err)
	}
	want := `{"id":"i","kind":"close","requestId":"r","grant":2,"nsg":"n","due":"2030-01-02T03:04:05Z"}`
	if string(b) != want {
		t.Errorf("body %s, want %s", b, want)
	}
}

func TestDecodeOperationErrors(t *testing.T) {
	tests := []struct {
		name, body, want string
	}{
		{"empty", ``, "empty body"},
		{"not json", `open please`, "invalid character"},
		{"not an object", `"x"`, "cannot unmarshal"},
		{"unknown field", `{"id":"i","kind":"open","requestId":"r","grant":0,"nsg":"n","port":22}`, `unknown field "port"`},
		{"missing id", `{"kind":"open","requestId":"r","grant":0,"nsg":"n"}`, `missing field "id"`},
		{"missing kind", `{"id":"i","requestId":"r","grant":0,"nsg":"n"}`, `missing field "kind"`},
		{"bad kind", `{"id":"i","kind":"reboot","requestId":"r","grant":0,"nsg":"n"}`, `kind "reboot"`},
		{"missing request", `{"id":"i","kind":"open","grant":0,"nsg":"n"}`, `missing field "requestId"`},
		{"missing grant", `{"id":"i","kind":"open","requestId":"r","nsg":"n"}`, `missing field "grant"`},
		{"negative grant", `{"id":"i","kind":"open","requestId":"r","grant":-1,"nsg":"n"}`, "negative grant"},
		{"missing nsg", `{"id":"i","kind":"open","requestId":"r","grant":0}`, `missing field "nsg"`},
		{"bad due", `{"id":"i","kind":"open","requestId":"r","grant":0,"nsg":"n","due":"tomorrow"}`, "cannot parse"},
		{"grant as string", `{"id":"i","kind":"open","requestId":"r","grant":"0","nsg":"n"}`, "cannot unmarshal"},
		{"trailing data", `{"id":"i","kind":"open","requestId":"r","grant":0,"nsg":"n"} {}`, "data after"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := servicebus.DecodeOperation([]byte(tc.body))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
			if jit.ErrorCode(err) != jit.EINVALID {
				t.Errorf("code %q, want %q", jit.ErrorCode(err), jit.EINVALID)
			}
		})
	}
}
