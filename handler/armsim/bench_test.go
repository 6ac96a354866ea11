package armsim

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v9"
)

// BenchmarkSaveAfterWrite is what local mode pays for every ARM write: one
// rule written, then the whole estate saved to disk. JIT_BENCH_ESTATE names
// a larger estate file (the demo estate by default; `make bench` documents
// how to generate one).
func BenchmarkSaveAfterWrite(b *testing.B) {
	s := New(Options{})
	var nsg *string
	demo := DemoID("Microsoft.Network/networkSecurityGroups", "nsg-vm-nic")
	if path := os.Getenv("JIT_BENCH_ESTATE"); path != "" {
		if err := s.LoadFile(path); err != nil {
			b.Fatal(err)
		}
		nsg = sortedValues(s.st.nsgs)[0].ID
		nsg = to.Ptr(*nsg)
		b.Logf("estate %s, rule written in %s", path, *nsg)
	} else {
		nsg = to.Ptr(demo)
	}
	out := filepath.Join(b.TempDir(), "estate.json")
	rule := armnetwork.SecurityRule{Name: to.Ptr("jit-bench"), Properties: &armnetwork.SecurityRulePropertiesFormat{
		Access: to.Ptr(armnetwork.SecurityRuleAccessAllow), Direction: to.Ptr(armnetwork.SecurityRuleDirectionInbound),
		Protocol: to.Ptr(armnetwork.SecurityRuleProtocolTCP), Priority: to.Ptr[int32](1000),
		SourcePortRange: to.Ptr("*"), DestinationPortRange: to.Ptr("22"),
		SourceAddressPrefix: to.Ptr("203.0.113.7"), DestinationAddressPrefix: to.Ptr("10.0.0.4")}}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		rule.Properties.Priority = to.Ptr(int32(1000 + i%2))
		if err := s.AddRule(*nsg, rule); err != nil {
			b.Fatal(err)
		}
		if err := s.Save(out); err != nil {
			b.Fatal(err)
		}
	}
}
