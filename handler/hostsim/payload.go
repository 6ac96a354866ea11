package hostsim

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"
)

// The host builds a custom handler's invocation body, {"Data": {...},
// "Metadata": {...}}, in ToHttpScriptInvocationContext: every trigger
// input goes to Data under its binding name and every binding datum to
// Metadata, each through one conversion: a value that serialises to a JSON
// object is sent as that object (a dictionary such as UserProperties);
// anything else (a string, a number, a date, an array) is sent as a string
// holding its JSON serialisation. So a string arrives quoted inside a
// string ("\"id\""), a number as "4", and an array as "[...]". The Service
// Bus extension's binding data name each property of a single message
// (MessageId, DeliveryCount, ...), and, for a batch, the same names with
// "Array" appended, one element per message in the batch's order.

// invocation is the body the host POSTs to /{FunctionName}.
type invocation struct {
	Data     map[string]any `json:"Data"`
	Metadata map[string]any `json:"Metadata"`
}

// jsonText is how the host sends a value that is not a JSON object: the
// value's JSON serialisation, as a string.
func jsonText(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("hostsim: encoding %T: %v", v, err)) // only our own plain values are encoded
	}
	return string(b)
}

// dotnetDateTime writes a DateTime whose kind is unspecified as
// Newtonsoft.Json does (fraction trimmed, no zone): the Service Bus
// extension takes EnqueuedTime.DateTime, which has lost its offset.
func dotnetDateTime(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.9999999") }

// dotnetDateTimeOffset writes a DateTimeOffset as Newtonsoft.Json does.
func dotnetDateTimeOffset(t time.Time) string {
	return t.UTC().Format("2006-01-02T15:04:05.9999999-07:00")
}

func newGUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return formatGUID(b)
}

func formatGUID(b [16]byte) string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// sysMetadata is the "sys" binding datum every invocation carries.
func sysMetadata(function string) map[string]any {
	return map[string]any{"MethodName": function, "UtcNow": dotnetDateTimeOffset(time.Now()), "RandGuid": newGUID()}
}

func strOrNil(p *string) any {
	if p == nil {
		return nil
	}
	return *p
}

func properties(m *azservicebus.ReceivedMessage) map[string]any {
	if m.ApplicationProperties == nil {
		return map[string]any{}
	}
	return m.ApplicationProperties
}

// singlePayload is one message's invocation ("cardinality": "one", the
// default). It keeps the quirks hosts have been seen to show and the
// handler must parse: the body a JSON string, encoded twice when twice is
// set; metadata strings quoted, numbers as strings; EnqueuedTimeUtc to the
// second without a zone (hosts before ToHttpScriptInvocationContext sent
// dates through DateTime.Parse).
func singlePayload(function, binding string, m *azservicebus.ReceivedMessage, twice bool) invocation {
	body := jsonText(string(m.Body))
	if twice {
		body = jsonText(body)
	}
	var seq int64
	if m.SequenceNumber != nil {
		seq = *m.SequenceNumber
	}
	var enqueued time.Time
	if m.EnqueuedTime != nil {
		enqueued = *m.EnqueuedTime
	}
	meta := map[string]any{
		"MessageId":             jsonText(m.MessageID),
		"DeliveryCount":         jsonText(m.DeliveryCount),
		"SequenceNumber":        jsonText(seq),
		"EnqueuedTimeUtc":       enqueued.UTC().Format("2006-01-02T15:04:05"),
		"EnqueuedTime":          jsonText(dotnetDateTimeOffset(enqueued)),
		"LockToken":             jsonText(formatGUID(m.LockToken)),
		"UserProperties":        properties(m),
		"ApplicationProperties": properties(m),
		"sys":                   sysMetadata(function),
	}
	// Binding data that are null are left out.
	for name, v := range map[string]*string{"SessionId": m.SessionID, "ContentType": m.ContentType,
		"CorrelationId": m.CorrelationID, "Subject": m.Subject, "Label": m.Subject, "ReplyTo": m.ReplyTo, "To": m.To} {
		if v != nil {
			meta[name] = jsonText(*v)
		}
	}
	return invocation{Data: map[string]any{binding: json.RawMessage(body)}, Metadata: meta}
}

// batchPayload is a batch's invocation ("cardinality": "many"): the
// trigger input is the array of bodies (strings), sent as the array's JSON
// text; each binding datum is an array with one element per message, also
// sent as its JSON text, e.g. "MessageIdArray": "[\"a\",\"b\"]",
// "DeliveryCountArray": "[1,2]", "EnqueuedTimeUtcArray":
// "[\"2026-11-24T07:00:00.123\"]", "UserPropertiesArray": "[{},{}]".
func batchPayload(function, binding string, msgs []*azservicebus.ReceivedMessage) invocation {
	n := len(msgs)
	var (
		bodies      = make([]string, n)
		ids         = make([]string, n)
		counts      = make([]uint32, n)
		seqs        = make([]int64, n)
		enqueuedUTC = make([]string, n)
		enqueued    = make([]string, n)
		sessions    = make([]any, n)
		tokens      = make([]string, n)
		contentType = make([]any, n)
		correlation = make([]any, n)
		subjects    = make([]any, n)
		props       = make([]map[string]any, n)
	)
	for i, m := range msgs {
		bodies[i] = string(m.Body)
		ids[i] = m.MessageID
		counts[i] = m.DeliveryCount
		if m.SequenceNumber != nil {
			seqs[i] = *m.SequenceNumber
		}
		var t time.Time
		if m.EnqueuedTime != nil {
			t = *m.EnqueuedTime
		}
		enqueuedUTC[i], enqueued[i] = dotnetDateTime(t), dotnetDateTimeOffset(t)
		sessions[i] = strOrNil(m.SessionID)
		tokens[i] = formatGUID(m.LockToken)
		contentType[i] = strOrNil(m.ContentType)
		correlation[i] = strOrNil(m.CorrelationID)
		subjects[i] = strOrNil(m.Subject)
		props[i] = properties(m)
	}
	meta := map[string]any{
		"MessageIdArray":             jsonText(ids),
		"DeliveryCountArray":         jsonText(counts),
		"SequenceNumberArray":        jsonText(seqs),
		"EnqueuedTimeUtcArray":       jsonText(enqueuedUTC),
		"EnqueuedTimeArray":          jsonText(enqueued),
		"SessionIdArray":             jsonText(sessions),
		"LockTokenArray":             jsonText(tokens),
		"ContentTypeArray":           jsonText(contentType),
		"CorrelationIdArray":         jsonText(correlation),
		"SubjectArray":               jsonText(subjects),
		"LabelArray":                 jsonText(subjects),
		"UserPropertiesArray":        jsonText(props),
		"ApplicationPropertiesArray": jsonText(props),
		"sys":                        sysMetadata(function),
	}
	return invocation{Data: map[string]any{binding: jsonText(bodies)}, Metadata: meta}
}

// timerPayload is a timer trigger's invocation: the TimerInfo object.
func timerPayload(function, binding string, last, next time.Time) invocation {
	status := any(nil)
	if !last.IsZero() {
		status = map[string]any{"Last": dotnetDateTimeOffset(last), "Next": dotnetDateTimeOffset(next),
			"LastUpdated": dotnetDateTimeOffset(last)}
	}
	info := map[string]any{"Schedule": map[string]any{"AdjustForDST": true}, "ScheduleStatus": status, "IsPastDue": false}
	return invocation{Data: map[string]any{binding: info}, Metadata: map[string]any{"sys": sysMetadata(function)}}
}

// eventPayload is an Event Grid trigger's invocation: the event object.
func eventPayload(function, binding string, event json.RawMessage) invocation {
	return invocation{Data: map[string]any{binding: event}, Metadata: map[string]any{"sys": sysMetadata(function)}}
}
