package azurenet_test

import (
	"context"
	"errors"
	"reflect"
	"sort"
	"testing"

	azfake "github.com/Azure/azure-sdk-for-go/sdk/azcore/fake"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v9"

	"jitaccess/handler/armsim"
	"jitaccess/handler/jit"
)

// TestScanNSGsMatchesSDK holds the lean NSG list to what the SDK's own
// models decode from the same pages: every NSG across pages, inbound rules
// only, singular and plural forms merged, ordered by priority.
func TestScanNSGsMatchesSDK(t *testing.T) {
	ctx := context.Background()
	sim, d, co := newEnvOptions(t, armsim.Options{PageSize: 2})
	// Rules of every shape beside the demo's: plural ports and prefixes,
	// an outbound rule (not listed), a description.
	apply(t, d, nsgVMNIC, put(allowRule("jit-allow-0", "203.0.113.7", "203.0.113.8")))
	err := sim.AddRule(nsgVMBoth, armnetwork.SecurityRule{Name: to.Ptr("hand-made"), Properties: &armnetwork.SecurityRulePropertiesFormat{
		Access: to.Ptr(armnetwork.SecurityRuleAccessAllow), Direction: to.Ptr(armnetwork.SecurityRuleDirectionInbound),
		Protocol: to.Ptr(armnetwork.SecurityRuleProtocolTCP), Priority: to.Ptr[int32](300), Description: to.Ptr("ops"),
		DestinationPortRanges: []*string{to.Ptr("22"), to.Ptr("3389")}, SourceAddressPrefix: to.Ptr("10.0.0.0/8"),
		SourcePortRange: to.Ptr("*"), DestinationAddressPrefixes: []*string{to.Ptr("10.1.0.4"), to.Ptr("10.1.0.5")},
	}})
	if err != nil {
		t.Fatal(err)
	}
	err = sim.AddRule(nsgVMBoth, armnetwork.SecurityRule{Name: to.Ptr("outbound"), Properties: &armnetwork.SecurityRulePropertiesFormat{
		Access: to.Ptr(armnetwork.SecurityRuleAccessDeny), Direction: to.Ptr(armnetwork.SecurityRuleDirectionOutbound),
		Protocol: to.Ptr(armnetwork.SecurityRuleProtocolAsterisk), Priority: to.Ptr[int32](200),
		DestinationPortRange: to.Ptr("*"), SourceAddressPrefix: to.Ptr("*"), SourcePortRange: to.Ptr("*"), DestinationAddressPrefix: to.Ptr("*"),
	}})
	if err != nil {
		t.Fatal(err)
	}

	// The scan reads a page, hands out its NSGs, then reads the next.
	sim.ResetCalls()
	var got []jit.NSGInfo
	err = d.ScanNSGs(ctx, func(n jit.NSGInfo) error {
		if pages, want := sim.Calls().ByKind["LIST networkSecurityGroups"], len(got)/2+1; pages != want {
			t.Errorf("NSG %d handed out after %d page reads, want %d", len(got), pages, want)
		}
		got = append(got, n)
		return nil
	})
	if err != nil {
		t.Fatalf("ScanNSGs: %v", err)
	}

	// The same pages through the SDK's client and models.
	client, err := armnetwork.NewSecurityGroupsClient(armsim.DemoSubscription, &azfake.TokenCredential{}, co)
	if err != nil {
		t.Fatal(err)
	}
	var want []jit.NSGInfo
	pages := 0
	for pager := client.NewListAllPager(nil); pager.More(); {
		page, err := pager.NextPage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, nsg := range page.Value {
			info := jit.NSGInfo{ID: *nsg.ID}
			for _, sr := range nsg.Properties.SecurityRules {
				p := sr.Properties
				if *p.Direction != armnetwork.SecurityRuleDirectionInbound {
					continue
				}
				info.Rules = append(info.Rules, jit.SecurityRule{Name: *sr.Name, Description: deref(p.Description), Access: string(*p.Access),
					Protocol: string(*p.Protocol), Priority: int(*p.Priority), SourcePorts: both(p.SourcePortRange, p.SourcePortRanges),
					SourceASGs: asgs(p.SourceApplicationSecurityGroups), DestinationASGs: asgs(p.DestinationApplicationSecurityGroups),
					Ports: both(p.DestinationPortRange, p.DestinationPortRanges), Sources: both(p.SourceAddressPrefix, p.SourceAddressPrefixes),
					Destinations: both(p.DestinationAddressPrefix, p.DestinationAddressPrefixes)})
			}
			sort.SliceStable(info.Rules, func(i, j int) bool { return info.Rules[i].Priority < info.Rules[j].Priority })
			want = append(want, info)
		}
	}
	if pages < 2 {
		t.Fatalf("the estate fits one page (%d): the test does not cover paging", pages)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("ScanNSGs differs from the SDK's decoding:\n got %+v\nwant %+v", got, want)
	}
	// The shapes above are there.
	var sawPlural, sawOutbound bool
	for _, n := range got {
		for _, r := range n.Rules {
			sawPlural = sawPlural || (r.Name == "hand-made" && len(r.Ports) == 2 && len(r.Destinations) == 2 && r.Description == "ops")
			sawOutbound = sawOutbound || r.Name == "outbound"
		}
	}
	if !sawPlural || sawOutbound {
		t.Fatalf("plural rule listed %v, outbound rule listed %v; want true, false", sawPlural, sawOutbound)
	}
}

// TestScanNSGsStops: an error of fn comes back as it is and ends the scan,
// as does the end of ctx; a page that cannot be read ends it with an
// EUNAVAILABLE error after the NSGs of the pages before were handed out.
func TestScanNSGsStops(t *testing.T) {
	ctx := context.Background()
	sim, d, _ := newEnvOptions(t, armsim.Options{PageSize: 2})
	stop := errors.New("stop")
	calls := 0
	sim.ResetCalls()
	err := d.ScanNSGs(ctx, func(jit.NSGInfo) error { calls++; return stop })
	if err != stop || calls != 1 {
		t.Errorf("fn failing: ScanNSGs returned %v after %d calls, want fn's error, unwrapped, after 1", err, calls)
	}
	if pages := sim.Calls().ByKind["LIST networkSecurityGroups"]; pages != 1 {
		t.Errorf("%d pages read after fn failed on the first NSG, want 1", pages)
	}

	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	calls = 0
	err = d.ScanNSGs(cctx, func(jit.NSGInfo) error { calls++; cancel(); return nil })
	if !errors.Is(err, context.Canceled) || calls != 1 {
		t.Errorf("ctx cancelled: ScanNSGs returned %v after %d calls, want context.Canceled after 1", err, calls)
	}

	calls = 0
	err = d.ScanNSGs(ctx, func(jit.NSGInfo) error {
		if calls++; calls == 1 {
			sim.FailNext(armsim.Reads, 10, armsim.InternalServerError()) // every retry of the next page
		}
		return nil
	})
	if jit.ErrorCode(err) != jit.EUNAVAILABLE || calls != 2 {
		t.Errorf("second page failing: ScanNSGs returned %v (%s) after %d calls, want EUNAVAILABLE after the first page's 2", err, jit.ErrorCode(err), calls)
	}
	sim.ClearFaults()
}

func both(single *string, plural []*string) []string {
	var out []string
	if single != nil && *single != "" {
		out = append(out, *single)
	}
	for _, v := range plural {
		if v != nil && *v != "" {
			out = append(out, *v)
		}
	}
	return out
}

func asgs(refs []*armnetwork.ApplicationSecurityGroup) []string {
	var out []string
	for _, r := range refs {
		if r != nil && r.ID != nil {
			out = append(out, *r.ID)
		}
	}
	return out
}
