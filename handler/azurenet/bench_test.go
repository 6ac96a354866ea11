package azurenet

import (
	"fmt"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v9"

	"jitaccess/handler/jit"
)

// benchRules is an NSG with n inbound rules at priorities 1000, 1001, ...
func benchRules(n int) []*armnetwork.SecurityRule {
	out := make([]*armnetwork.SecurityRule, n)
	for i := range out {
		out[i] = &armnetwork.SecurityRule{Name: ptr(fmt.Sprintf("jit-allow-%d-0", i)), Properties: &armnetwork.SecurityRulePropertiesFormat{
			Priority: ptr(int32(1000 + i)), Direction: ptr(armnetwork.SecurityRuleDirectionInbound),
			Access: ptr(armnetwork.SecurityRuleAccessAllow), Protocol: ptr(armnetwork.SecurityRuleProtocolTCP),
			SourcePortRange: ptr("*"), DestinationPortRange: ptr("22"), SourceAddressPrefix: ptr("203.0.113.7"),
			DestinationAddressPrefix: ptr("10.0.0.4")}}
	}
	return out
}

// BenchmarkFreePriority chooses a priority in an NSG that already holds
// 100 or 900 managed rules (priority choice runs before every new rule).
func BenchmarkFreePriority(b *testing.B) {
	for _, n := range []int{100, 900} {
		rules := benchRules(n)
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, ok := freePriority(rules, Band{DefaultAllowMin, DefaultAllowMax}, nil); !ok {
					b.Fatal("no priority")
				}
			}
		})
	}
}

// BenchmarkSameRule is the idempotency check that saves a write when the
// rule is already as wanted.
func BenchmarkSameRule(b *testing.B) {
	have := benchRules(1)[0]
	want := fromARM(have)
	b.ReportAllocs()
	for b.Loop() {
		if !sameRule(have, want) {
			b.Fatal("differs")
		}
	}
}

func BenchmarkToARM(b *testing.B) {
	rule := jit.SecurityRule{Name: "jit-allow-x-0", Access: jit.AccessAllow, Protocol: "Tcp", Ports: []string{"22", "3389"},
		Sources: []string{"203.0.113.7"}, Destinations: []string{"10.0.0.4"}, Description: "Managed by jitaccess"}
	b.ReportAllocs()
	for b.Loop() {
		_ = toARM(rule, 1000)
	}
}
