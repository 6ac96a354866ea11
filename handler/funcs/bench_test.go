package funcs

import "testing"

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
