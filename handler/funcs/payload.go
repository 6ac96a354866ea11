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

// valueText reads a host value as text, whatever its encoding; null is "".
func valueText(raw json.RawMessage) string {
	v := hostValue(raw)
	if string(v) == "null" {
		return ""
	}
	return string(v)
}

// valueInt reads a host value as an integer: 4, "4" and "\"4\"" all work.
func valueInt(raw json.RawMessage) (int64, bool) {
	s := valueText(raw)
	if s == "" {
		return 0, false
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil
}

// valueTime reads a time the host may send without a zone (UTC is meant).
func valueTime(raw json.RawMessage) (time.Time, bool) {
	s := valueText(raw)
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

// metaString reads a metadata value as a string, whatever its encoding.
func metaString(m map[string]json.RawMessage, key string) string { return valueText(m[key]) }

// metaInt reads a metadata value as an integer: 4, "4" and "\"4\"" all work.
func metaInt(m map[string]json.RawMessage, key string) (int64, bool) { return valueInt(m[key]) }

// metaTime reads a metadata time the host may send without a zone.
func metaTime(m map[string]json.RawMessage, key string) (time.Time, bool) { return valueTime(m[key]) }

// metaArray reads a binding datum that holds one element per message of a
// batch (MessageIdArray, DeliveryCountArray, ...): an array, or a string
// holding one. It is nil when the datum is missing, is no array or has
// another length than the batch, so that no message is given another's
// data.
func metaArray(m map[string]json.RawMessage, key string, n int) []json.RawMessage {
	v := hostValue(m[key])
	if len(v) == 0 || v[0] != '[' {
		return nil
	}
	var elems []json.RawMessage
	if err := json.Unmarshal(v, &elems); err != nil || len(elems) != n {
		return nil
	}
	return elems
}

// queueMessage is one Service Bus message of an invocation, with the
// binding data the worker uses.
type queueMessage struct {
	Body       []byte    // the innermost JSON text of the body
	ID         string    // MessageId; "" when the host sent none
	Deliveries int64     // DeliveryCount, 1 on the first delivery; 0 when unknown
	Enqueued   time.Time // EnqueuedTimeUtc; zero when unknown
}

// queueMessages reads the messages of a Service Bus trigger's invocation.
// With "cardinality": "many" the host sends Data.<binding> as the array of
// the bodies and each binding datum as an array with one element per
// message, under its name with "Array" appended; each may come as the array
// itself or as a string holding its JSON text, and each body as a string
// (encoded once or twice) or as the JSON object. A single message
// (cardinality one, or an older host) comes as one body with MessageId,
// DeliveryCount and EnqueuedTimeUtc, and is read as a batch of one. An
// operation body is always a JSON object, so an array is never one body.
func queueMessages(inv invocation, binding string) ([]queueMessage, error) {
	raw, ok := inv.Data[binding]
	if !ok {
		return nil, fmt.Errorf("invocation has no Data.%s", binding)
	}
	v := hostValue(raw)
	if len(v) == 0 || v[0] != '[' {
		m := queueMessage{Body: v, ID: metaString(inv.Metadata, "MessageId")}
		m.Deliveries, _ = metaInt(inv.Metadata, "DeliveryCount")
		m.Enqueued, _ = metaTime(inv.Metadata, "EnqueuedTimeUtc")
		return []queueMessage{m}, nil
	}
	var bodies []json.RawMessage
	if err := json.Unmarshal(v, &bodies); err != nil {
		return nil, fmt.Errorf("Data.%s is not a JSON array of message bodies: %w", binding, err)
	}
	if len(bodies) == 0 {
		return nil, fmt.Errorf("Data.%s is a batch of no messages", binding)
	}
	ids := metaArray(inv.Metadata, "MessageIdArray", len(bodies))
	counts := metaArray(inv.Metadata, "DeliveryCountArray", len(bodies))
	times := metaArray(inv.Metadata, "EnqueuedTimeUtcArray", len(bodies))
	msgs := make([]queueMessage, len(bodies))
	for i, b := range bodies {
		msgs[i].Body = hostValue(b)
		if ids != nil {
			msgs[i].ID = valueText(ids[i])
		}
		if counts != nil {
			msgs[i].Deliveries, _ = valueInt(counts[i])
		}
		if times != nil {
			msgs[i].Enqueued, _ = valueTime(times[i])
		}
	}
	return msgs, nil
}

// response is the custom handler's answer to an invocation.
type response struct {
	Outputs     map[string]any `json:"Outputs"`
	Logs        []string       `json:"Logs"`
	ReturnValue any            `json:"ReturnValue"`
}
