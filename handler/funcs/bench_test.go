package funcs

import (
	"encoding/json"
	"strconv"
	"testing"
)

const benchInvocation = `{"Data":{"msg":"{\"ID\":\"open-k5c3hdq2x4mv7n8p9rwb6tyz1a-0-1a2b3c4d-0\",\"Kind\":\"open\",\"RequestID\":\"k5c3hdq2x4mv7n8p9rwb6tyz1a\",\"Grant\":0,\"NSG\":\"/subscriptions/s/resourceGroups/g/providers/Microsoft.Network/networkSecurityGroups/n\"}"},
 "Metadata":{"DeliveryCount":1,"SequenceNumber":42,"SessionId":"1a2b3c4d","EnqueuedTimeUtc":"2030-01-01T10:00:00Z","sys":{"MethodName":"worker"}}}`

// BenchmarkParseInvocation is the Functions host's invocation payload, as
// every Service Bus delivery brings it.
func BenchmarkParseInvocation(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		inv, err := parseInvocation([]byte(benchInvocation))
		if err != nil {
			b.Fatal(err)
		}
		_ = hostValue(inv.Data["msg"])
		_, _ = metaInt(inv.Metadata, "DeliveryCount")
		_, _ = metaTime(inv.Metadata, "EnqueuedTimeUtc")
	}
}

// BenchmarkQueueMessages reads a batch of 100 messages (host.json's
// maxMessageBatchSize) in the shape the host sends it.
func BenchmarkQueueMessages(b *testing.B) {
	const op = `{"id":"open-k5c3hdq2x4mv7n8p9rwb6tyz1a-0-1a2b3c4d-0","kind":"open","requestId":"k5c3hdq2x4mv7n8p9rwb6tyz1a","grant":0,"nsg":"/subscriptions/s/resourceGroups/g/providers/Microsoft.Network/networkSecurityGroups/n"}`
	bodies, ids, counts := make([]string, 100), make([]string, 100), make([]int, 100)
	for i := range bodies {
		bodies[i], ids[i], counts[i] = op, "open-"+strconv.Itoa(i), 1
	}
	text := func(v any) string {
		j, _ := json.Marshal(v)
		s, _ := json.Marshal(string(j))
		return string(s)
	}
	payload := []byte(`{"Data":{"msg":` + text(bodies) + `},"Metadata":{"MessageIdArray":` + text(ids) + `,"DeliveryCountArray":` + text(counts) + `}}`)
	b.ReportAllocs()
	for b.Loop() {
		inv, err := parseInvocation(payload)
		if err != nil {
			b.Fatal(err)
		}
		if msgs, err := queueMessages(inv, workerBinding); err != nil || len(msgs) != 100 {
			b.Fatal(len(msgs), err)
		}
	}
}
