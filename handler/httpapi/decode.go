package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"jitaccess/handler/jit"
)

// decodeStrict reads one JSON value from the request body into v. Unknown
// fields, trailing data and bodies over the limit are refused with a message
// that names the problem.
func decodeStrict(w http.ResponseWriter, r *http.Request, limit int64, v any) error {
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(strings.ToLower(ct), "application/json") {
		return &httpError{status: http.StatusUnsupportedMediaType, code: "UnsupportedMediaType",
			msg: fmt.Sprintf("Content-Type %s is not supported: send application/json", quoteShort(ct))}
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return &httpError{status: http.StatusRequestEntityTooLarge, code: "RequestEntityTooLarge",
				msg: fmt.Sprintf("request body is larger than %d bytes", limit)}
		}
		return jit.Errorf(jit.EINVALID, "reading the request body failed")
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return jit.Errorf(jit.EINVALID, "request body is empty: send a JSON object")
	}
	if r.Header.Get("Content-Type") == "" {
		// A browser lets another site's page send a body without a type
		// (no-cors); a body is only taken as JSON when it says so.
		return &httpError{status: http.StatusUnsupportedMediaType, code: "UnsupportedMediaType",
			msg: "Content-Type is missing: send application/json"}
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return jit.Errorf(jit.EINVALID, "%s", describeJSONError(err, body))
	}
	if _, err := dec.Token(); err != io.EOF {
		return jit.Errorf(jit.EINVALID, "malformed JSON: unexpected data after the JSON object at byte %d", dec.InputOffset())
	}
	return nil
}

// describeJSONError turns encoding/json's errors into sentences for users.
func describeJSONError(err error, body []byte) string {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return fmt.Sprintf("malformed JSON at byte %d: %s", syn.Offset, syn.Error())
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "malformed JSON: the body ends before the JSON value is complete"
	case errors.As(err, &typ):
		field := typ.Field
		if field == "" {
			return fmt.Sprintf("the body must be a JSON object, not a %s", typ.Value)
		}
		return fmt.Sprintf("field %s: expected %s, got a JSON %s", field, describeGoType(typ.Type.Kind().String()), typ.Value)
	}
	msg := err.Error()
	if rest, ok := strings.CutPrefix(msg, "json: unknown field "); ok {
		return "unknown field " + clip(rest) + ": check the spelling against the API reference"
	}
	var fe *fieldError
	if errors.As(err, &fe) {
		return fe.Error()
	}
	return "malformed JSON: " + strings.TrimPrefix(msg, "json: ")
}

func describeGoType(kind string) string {
	switch kind {
	case "int", "int64", "int32":
		return "a whole number"
	case "string":
		return "a string"
	case "slice":
		return "an array"
	case "struct", "map":
		return "an object"
	case "bool":
		return "true or false"
	}
	return kind
}

// fieldError is returned by custom unmarshallers.
type fieldError struct{ msg string }

func (e *fieldError) Error() string { return e.msg }

// prefixList accepts a source prefix as a JSON string or an array of strings.
type prefixList []string

func (p *prefixList) UnmarshalJSON(b []byte) error {
	b = bytes.Trim(b, " \t\r\n") // JSON's white space, not Unicode's
	if string(b) == "null" {
		*p = nil
		return nil
	}
	if len(b) > 0 && b[0] == '[' {
		var list []string
		if err := json.Unmarshal(b, &list); err != nil {
			return &fieldError{"allowedSourceAddressPrefix: expected a string or an array of strings"}
		}
		*p = list
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return &fieldError{"allowedSourceAddressPrefix: expected a string or an array of strings"}
	}
	*p = []string{s}
	return nil
}

// quoteShort quotes what a client sent for an error message, cut to 100
// bytes: a message stays short whatever the header held.
func quoteShort(s string) string {
	if len(s) > 100 {
		return strconv.Quote(s[:100]) + "…"
	}
	return strconv.Quote(s)
}
