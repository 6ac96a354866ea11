package funcs

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// invocation is what the Functions host POSTs to /{FunctionName} for every
// trigger but a forwarded HTTP request.
type invocation struct {
	Data     map[string]json.RawMessage `json:"Data"`
	Metadata map[string]json.RawMessage `json:"Metadata"`
}

func parseInvocation(body []byte) (invocation, error) {
	var inv invocation
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := dec.Decode(&inv); err != nil {
		return inv, fmt.Errorf("invocation payload is not a JSON object with Data and Metadata: %w", err)
	}
	if inv.Data == nil {
		return inv, fmt.Errorf("invocation payload has no Data")
	}
	return inv, nil
}

// hostValue unwraps a value the host may have JSON-encoded once or twice
// (a Service Bus body arrives as "{...}" or "\"{...}\""), and returns the
// innermost JSON text.
func hostValue(raw json.RawMessage) []byte {
	v := bytes.TrimSpace(raw)
	for range 3 {
		if len(v) == 0 || v[0] != '"' {
			return v
		}
		var s string
		if err := json.Unmarshal(v, &s); err != nil {
			return v
		}
		v = bytes.TrimSpace([]byte(s))
	}
	return v
}

// metaString reads a metadata value as a string, whatever its encoding.
func metaString(m map[string]json.RawMessage, key string) string {
	raw, ok := m[key]
	if !ok {
		return ""
	}
	v := hostValue(raw)
	if string(v) == "null" {
		return ""
	}
	return string(v)
}

// metaInt reads a metadata value as an integer: 4, "4" and "\"4\"" all work.
func metaInt(m map[string]json.RawMessage, key string) (int64, bool) {
	s := metaString(m, key)
	if s == "" {
		return 0, false
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil
}

// metaTime reads a time the host may send without a zone (UTC is meant).
func metaTime(m map[string]json.RawMessage, key string) (time.Time, bool) {
	s := metaString(m, key)
	if s == "" {
		return time.Time{}, false
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05.9999999", "2006-01-02T15:04:05"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t.UTC(), true
		}
	}
	// .NET may write 7 fractional digits and an offset.
	if i := strings.LastIndexAny(s, "+-Z"); i > 10 {
		if t, err := time.Parse("2006-01-02T15:04:05.9999999Z07:00", s); err == nil {
			return t.UTC(), true
		}
	}
	return time.Time{}, false
}

// response is the custom handler's answer to an invocation.
type response struct {
	Outputs     map[string]any `json:"Outputs"`
	Logs        []string       `json:"Logs"`
	ReturnValue any            `json:"ReturnValue"`
}
