package servicebus

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"time"

	"jitaccess/handler/jit"
)

// wireOperation is the message body of an operation, stable across
// releases because messages outlive deployments (a close can be scheduled
// days ahead):
//
//	{"id":"...","kind":"open"|"close","requestId":"...","grant":0,
//	 "nsg":"/subscriptions/.../networkSecurityGroups/...","due":"RFC 3339"}
//
// due is absent for "now". Adding a field means teaching DecodeOperation to
// accept it before any sender writes it.
type wireOperation struct {
	ID        string     `json:"id"`
	Kind      string     `json:"kind"`
	RequestID string     `json:"requestId"`
	Grant     *int       `json:"grant"`
	NSG       string     `json:"nsg"`
	Due       *time.Time `json:"due,omitempty"`
}

// EncodeOperation returns the message body of op.
func EncodeOperation(op jit.Operation) ([]byte, error) {
	if err := validate(op); err != nil {
		return nil, err
	}
	w := wireOperation{ID: op.ID, Kind: op.Kind, RequestID: op.RequestID, Grant: &op.Grant, NSG: op.NSG}
	if !op.Due.IsZero() {
		due := op.Due.UTC()
		w.Due = &due
	}
	b, err := json.Marshal(w)
	if err != nil {
		return nil, jit.Wrap(jit.EINTERNAL, err, "encoding an operation")
	}
	return b, nil
}

// DecodeOperation parses a message body written by EncodeOperation. It is
// strict: unknown fields, missing fields, an unknown kind or trailing data
// are errors (code EINVALID), since a message that cannot be understood
// must not be half-applied.
func DecodeOperation(body []byte) (jit.Operation, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	var w wireOperation
	if err := dec.Decode(&w); err != nil {
		if errors.Is(err, io.EOF) {
			return jit.Operation{}, jit.Errorf(jit.EINVALID, "operation message: empty body")
		}
		return jit.Operation{}, jit.Errorf(jit.EINVALID, "operation message: %v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return jit.Operation{}, jit.Errorf(jit.EINVALID, "operation message: data after the JSON object")
	}
	if w.Grant == nil {
		return jit.Operation{}, jit.Errorf(jit.EINVALID, "operation message: missing field \"grant\"")
	}
	op := jit.Operation{ID: w.ID, Kind: w.Kind, RequestID: w.RequestID, Grant: *w.Grant, NSG: w.NSG}
	if w.Due != nil {
		op.Due = w.Due.UTC()
	}
	if err := validate(op); err != nil {
		return jit.Operation{}, err
	}
	return op, nil
}

func validate(op jit.Operation) error {
	missing := func(field string) error {
		return jit.Errorf(jit.EINVALID, "operation message: missing field %q", field)
	}
	switch {
	case op.ID == "":
		return missing("id")
	case op.Kind == "":
		return missing("kind")
	case op.Kind != jit.OpOpen && op.Kind != jit.OpClose && op.Kind != jit.OpSync:
		return jit.Errorf(jit.EINVALID, "operation message: kind %q is not %q, %q or %q", op.Kind, jit.OpOpen, jit.OpClose, jit.OpSync)
	case op.RequestID == "" && op.Kind != jit.OpSync:
		return missing("requestId")
	case op.NSG == "":
		return missing("nsg")
	case op.Grant < 0:
		return jit.Errorf(jit.EINVALID, "operation message: negative grant %d", op.Grant)
	case len(op.ID) > 128:
		return jit.Errorf(jit.EINVALID, "operation message: id longer than 128 characters")
	}
	// Zero means now; otherwise a due time this service can have made.
	if y := op.Due.UTC().Year(); !op.Due.IsZero() && (y < 2000 || y > 9999) {
		return jit.Errorf(jit.EINVALID, "operation message: due time %s is out of range", op.Due.UTC().Format(time.RFC3339))
	}
	return nil
}
