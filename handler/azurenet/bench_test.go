package azurenet

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v9"

	"jitaccess/handler/jit"
)

// benchRules is an NSG with n inbound rules at priorities 1000, 1001, ...
func benchRules(n int) []*armnetwork.SecurityRule {
	out := make([]*armnetwork.SecurityRule, n)
	for i := range out {
		out[i] = &armnetwork.SecurityRule{Name: ptr(fmt.Sprintf("jit-allow-%d-0", i)), ID: ptr(fmt.Sprintf("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/networkSecurityGroups/n/securityRules/jit-allow-%d-0", i)),
			Etag: ptr(`W/"1"`), Type: ptr("Microsoft.Network/networkSecurityGroups/securityRules"),
			Properties: &armnetwork.SecurityRulePropertiesFormat{
				Priority: ptr(int32(1000 + i)), Direction: ptr(armnetwork.SecurityRuleDirectionInbound),
				Access: ptr(armnetwork.SecurityRuleAccessAllow), Protocol: ptr(armnetwork.SecurityRuleProtocolTCP),
				SourcePortRange: ptr("*"), DestinationPortRange: ptr("22"), SourceAddressPrefix: ptr("203.0.113.7"),
				DestinationAddressPrefix: ptr("10.0.0.4"), Description: ptr("Managed by jitaccess"),
				ProvisioningState: ptr(armnetwork.ProvisioningStateSucceeded)}}
	}
	return out
}

// benchNSG is the JSON of an NSG with n rules and Azure's default rules,
// as ARM answers a GET.
func benchNSG(b *testing.B, n int) []byte {
	nsg := armnetwork.SecurityGroup{ID: ptr("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/networkSecurityGroups/n"),
		Name: ptr("n"), Location: ptr("westeurope"), Etag: ptr(`W/"1"`),
		Properties: &armnetwork.SecurityGroupPropertiesFormat{SecurityRules: benchRules(n), DefaultSecurityRules: benchRules(6),
			ProvisioningState: ptr(armnetwork.ProvisioningStateSucceeded), ResourceGUID: ptr("00000000-0000-0000-0000-000000000001")}}
	body, err := json.Marshal(&nsg)
	if err != nil {
		b.Fatal(err)
	}
	return body
}

func leanRules(b *testing.B, n int) []leanRule {
	doc, err := decodeNSG(benchNSG(b, n))
	if err != nil {
		b.Fatal(err)
	}
	return doc.rules
}

// BenchmarkFreePriority chooses a priority in an NSG that already holds
// 100 or 900 managed rules (priority choice runs before every new rule).
func BenchmarkFreePriority(b *testing.B) {
	for _, n := range []int{100, 900} {
		used := map[int]bool{}
		for i := range n {
			used[1000+i] = true
		}
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, ok := freePriority(used, Band{DefaultAllowMin, DefaultAllowMax}); !ok {
					b.Fatal("no priority")
				}
			}
		})
	}
}

// BenchmarkSameRule is the idempotency check that saves a write when the
// rule is already as wanted.
func BenchmarkSameRule(b *testing.B) {
	have := leanRules(b, 1)[0]
	want := have.rule()
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

// BenchmarkNSGRoundTrip is the CPU of one NSG write on the client side
// before ARM answers: decode the NSG read, plan one new rule, encode the
// PUT body. "lean" is the driver's; "sdk" is the same through the
// armnetwork models, as the driver did before.
func BenchmarkNSGRoundTrip(b *testing.B) {
	owner := jit.Owner{Deployment: "bench"}
	put := []jit.SecurityRule{{Name: "jit-allow-new-0", Description: owner.Marker() + "grant", Access: jit.AccessAllow, Protocol: "Tcp", Ports: []string{"22"},
		Sources: []string{"198.51.100.1"}, Destinations: []string{"10.0.0.4"}}}
	bands := []Band{{DefaultAllowMin, DefaultAllowMax}}
	for _, n := range []int{5, 30} {
		body := benchNSG(b, n)
		b.Run(fmt.Sprintf("lean/%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				doc, err := decodeNSG(body)
				if err != nil {
					b.Fatal(err)
				}
				rules, _, err := planRules(doc, "nsg", jit.RuleChange{Put: put}, bands, owner)
				if err != nil {
					b.Fatal(err)
				}
				w := doc.wire
				w.Properties.SecurityRules = rules
				if _, err := json.Marshal(&w); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("sdk/%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				var nsg armnetwork.SecurityGroup
				if err := json.Unmarshal(body, &nsg); err != nil {
					b.Fatal(err)
				}
				sr := toARM(put[0], 1000+int32(n))
				sr.Name = ptr(put[0].Name)
				nsg.Properties.SecurityRules = append(nsg.Properties.SecurityRules, &sr)
				if _, err := json.Marshal(&nsg); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
