package azurenet_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	azfake "github.com/Azure/azure-sdk-for-go/sdk/azcore/fake"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v9"

	"jitaccess/handler/armsim"
	"jitaccess/handler/azurenet"
	"jitaccess/handler/jit"
)

func manyAllowRules(n int) []jit.SecurityRule {
	rules := make([]jit.SecurityRule, n)
	for i := range rules {
		rules[i] = allowRule(fmt.Sprintf("jit-allow-%03d", i), fmt.Sprintf("203.0.113.%d", i+1))
	}
	return rules
}

func TestApplyRulesOneWrite(t *testing.T) {
	sim, d := newEnv(t, armsim.Options{})
	ctx := context.Background()
	foreign, ok := sim.RuleJSON(nsgVMNIC, "allow-https")
	if !ok {
		t.Fatal("demo estate lacks allow-https")
	}
	// Two existing managed rules: one to change, one to delete.
	for _, r := range []jit.SecurityRule{allowRule("jit-keep", "198.51.100.1"), allowRule("jit-gone", "198.51.100.2")} {
		if err := d.PutRule(ctx, nsgVMNIC, r); err != nil {
			t.Fatal(err)
		}
	}
	keepBefore, _ := findRule(t, d, nsgVMNIC, "jit-keep")
	sim.ResetCalls()

	put := append(manyAllowRules(50), allowRule("jit-keep", "198.51.100.1", "198.51.100.9"), denyRule("jit-deny-vm"))
	if err := d.ApplyRules(ctx, nsgVMNIC, put, []string{"jit-gone", "jit-never-there"}); err != nil {
		t.Fatal(err)
	}
	// One read, one write: following the PUT's operation reads no NSG.
	if c := sim.Calls(); c.Writes != 1 || c.ByKind["PUT networkSecurityGroups"] != 1 || c.ByKind["GET networkSecurityGroups"] != 1 {
		t.Fatalf("calls %v, want one NSG read and one NSG write", c.ByKind)
	}
	rules, err := d.ListRules(ctx, nsgVMNIC)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]jit.SecurityRule{}
	priorities := map[int]string{}
	for _, r := range rules {
		byName[r.Name] = r
		if other, dup := priorities[r.Priority]; dup {
			t.Errorf("%s and %s share priority %d", r.Name, other, r.Priority)
		}
		priorities[r.Priority] = r.Name
	}
	for _, r := range put {
		got, ok := byName[r.Name]
		if !ok {
			t.Errorf("rule %s missing", r.Name)
			continue
		}
		band := azurenet.Band{Min: azurenet.DefaultAllowMin, Max: azurenet.DefaultAllowMax}
		if r.Access == jit.AccessDeny {
			band = azurenet.Band{Min: azurenet.DefaultDenyMin, Max: azurenet.DefaultDenyMax}
		}
		if got.Priority < band.Min || got.Priority > band.Max {
			t.Errorf("rule %s priority %d outside %v", r.Name, got.Priority, band)
		}
	}
	if got := byName["jit-keep"]; got.Priority != keepBefore.Priority || len(got.Sources) != 2 {
		t.Errorf("changed rule %+v: want its priority %d kept and two sources", got, keepBefore.Priority)
	}
	if _, ok := byName["jit-gone"]; ok {
		t.Error("jit-gone not deleted")
	}
	if after, _ := sim.RuleJSON(nsgVMNIC, "allow-https"); !bytes.Equal(foreign, after) {
		t.Errorf("foreign rule changed:\nbefore %s\nafter  %s", foreign, after)
	}

	// The same again changes nothing and writes nothing.
	sim.ResetCalls()
	if err := d.ApplyRules(ctx, nsgVMNIC, put, []string{"jit-gone"}); err != nil {
		t.Fatal(err)
	}
	if c := sim.Calls(); c.Writes != 0 || c.Reads != 1 {
		t.Errorf("repeated ApplyRules made calls %v, want one read", c.ByKind)
	}

	// Deleting everything managed leaves the foreign rule alone.
	var del []string
	for _, r := range put {
		del = append(del, r.Name)
	}
	sim.ResetCalls()
	if err := d.ApplyRules(ctx, nsgVMNIC, nil, del); err != nil {
		t.Fatal(err)
	}
	if c := sim.Calls(); c.Writes != 1 {
		t.Errorf("%d writes to delete %d rules, want 1", c.Writes, len(del))
	}
	if names := sim.RuleNames(nsgVMNIC); !slices.Equal(names, []string{"allow-https"}) {
		t.Errorf("rules left: %v", names)
	}
	if after, _ := sim.RuleJSON(nsgVMNIC, "allow-https"); !bytes.Equal(foreign, after) {
		t.Errorf("foreign rule changed by the delete:\nbefore %s\nafter  %s", foreign, after)
	}
}

// TestApplyRulesKeepsWritableMembers: a PUT replaces the whole NSG, so the
// write must carry back what someone else set on it besides its rules.
func TestApplyRulesKeepsWritableMembers(t *testing.T) {
	ctx := context.Background()
	_, d, co := newEnvOptions(t, armsim.Options{})
	client, err := armnetwork.NewSecurityGroupsClient(armsim.DemoSubscription, &azfake.TokenCredential{}, co)
	if err != nil {
		t.Fatal(err)
	}
	got, err := client.Get(ctx, armsim.DemoResourceGroup, "nsg-vm-nic", nil)
	if err != nil {
		t.Fatal(err)
	}
	nsg := got.SecurityGroup
	nsg.Tags = map[string]*string{"owner": to.Ptr("network-team"), "cost-centre": to.Ptr("4711")}
	nsg.Properties.FlushConnection = to.Ptr(true)
	poller, err := client.BeginCreateOrUpdate(ctx, armsim.DemoResourceGroup, "nsg-vm-nic", nsg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := poller.PollUntilDone(ctx, &runtime.PollUntilDoneOptions{Frequency: time.Millisecond}); err != nil {
		t.Fatal(err)
	}

	if err := d.ApplyRules(ctx, nsgVMNIC, manyAllowRules(3), nil); err != nil {
		t.Fatal(err)
	}
	after, err := client.Get(ctx, armsim.DemoResourceGroup, "nsg-vm-nic", nil)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(after.Properties.SecurityRules); n != 4 {
		t.Errorf("%d rules after the write, want the foreign one and 3", n)
	}
	if len(after.Tags) != 2 || deref(after.Tags["owner"]) != "network-team" || deref(after.Tags["cost-centre"]) != "4711" {
		t.Errorf("tags after the write: %v, want owner and cost-centre kept", after.Tags)
	}
	if !deref(after.Properties.FlushConnection) {
		t.Error("flushConnection lost by the write")
	}
	if deref(after.Location) != deref(nsg.Location) {
		t.Errorf("location %q, want %q", deref(after.Location), deref(nsg.Location))
	}
}

func deref[T any](p *T) T {
	var zero T
	if p != nil {
		return *p
	}
	return zero
}

func TestApplyRulesRetriesEtagConflict(t *testing.T) {
	var sim *armsim.Server
	var raced atomic.Bool
	// Another writer changes the NSG between the driver's read and its PUT,
	// taking the priority the driver picked.
	sim, d := newEnv(t, armsim.Options{Intercept: func(r *http.Request, c armsim.Call) *armsim.Fault {
		if c.Kind() == "PUT networkSecurityGroups" && raced.CompareAndSwap(false, true) {
			err := sim.AddRule(nsgVMNIC, armnetwork.SecurityRule{Name: to.Ptr("someone-else"), Properties: &armnetwork.SecurityRulePropertiesFormat{
				Access: to.Ptr(armnetwork.SecurityRuleAccessAllow), Direction: to.Ptr(armnetwork.SecurityRuleDirectionInbound),
				Priority: to.Ptr[int32](azurenet.DefaultAllowMin), Protocol: to.Ptr(armnetwork.SecurityRuleProtocolTCP),
				SourceAddressPrefix: to.Ptr("*"), SourcePortRange: to.Ptr("*"), DestinationAddressPrefix: to.Ptr("*"), DestinationPortRange: to.Ptr("80"),
			}})
			if err != nil {
				panic(err)
			}
		}
		return nil
	}})
	if err := d.ApplyRules(context.Background(), nsgVMNIC, manyAllowRules(3), nil); err != nil {
		t.Fatal(err)
	}
	if c := sim.Calls(); c.ByKind["PUT networkSecurityGroups"] != 2 || c.ByKind["GET networkSecurityGroups"] < 2 {
		t.Errorf("calls %v: want a 412, a re-read and a second PUT", c.ByKind)
	}
	if _, ok := findRule(t, d, nsgVMNIC, "someone-else"); !ok {
		t.Error("the other writer's rule was lost")
	}
	for _, name := range []string{"jit-allow-000", "jit-allow-001", "jit-allow-002"} {
		if r, ok := findRule(t, d, nsgVMNIC, name); !ok || r.Priority == azurenet.DefaultAllowMin {
			t.Errorf("rule %s = %+v, %v: want it written beside the other writer's", name, r, ok)
		}
	}
}

func TestApplyRulesRetriesTransientFailures(t *testing.T) {
	tests := []struct {
		name   string
		target armsim.Target
		n      int
		fault  armsim.Fault
	}{
		{"429 on writes", armsim.Writes, 2, armsim.Throttled(5 * time.Millisecond)},
		{"429 on reads", armsim.Reads, 2, armsim.Throttled(5 * time.Millisecond)},
		{"409 AnotherOperationInProgress", armsim.Writes, 2, armsim.AnotherOperationInProgress()},
		{"operation failed", armsim.Writes, 2, armsim.LROFailed("InternalServerError")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sim, d := newEnv(t, armsim.Options{InProgressPolls: 1})
			ctx := context.Background()
			sim.FailNext(tt.target, tt.n, tt.fault)
			if err := d.ApplyRules(ctx, nsgVMNIC, manyAllowRules(2), nil); err != nil {
				t.Fatal(err)
			}
			if c := sim.Calls(); c.Faults != tt.n {
				t.Errorf("%d faults served, want %d", c.Faults, tt.n)
			}
			sim.FailNext(tt.target, tt.n, tt.fault)
			if err := d.ApplyRules(ctx, nsgVMNIC, nil, []string{"jit-allow-000", "jit-allow-001"}); err != nil {
				t.Fatal(err)
			}
			if names := sim.RuleNames(nsgVMNIC); !slices.Equal(names, []string{"allow-https"}) {
				t.Errorf("rules left: %v", names)
			}
		})
	}
}

func TestApplyRulesRefusesUnmanagedNames(t *testing.T) {
	sim, d := newEnv(t, armsim.Options{})
	ctx := context.Background()
	if err := d.ApplyRules(ctx, nsgVMNIC, []jit.SecurityRule{allowRule("allow-https", "*")}, nil); jit.ErrorCode(err) != jit.EINVALID {
		t.Errorf("put allow-https: %v, want EINVALID", err)
	}
	if err := d.ApplyRules(ctx, nsgVMNIC, manyAllowRules(1), []string{"allow-https"}); jit.ErrorCode(err) != jit.EINVALID {
		t.Errorf("delete allow-https: %v, want EINVALID", err)
	}
	if c := sim.Calls(); c.Writes != 0 || c.Reads != 0 {
		t.Errorf("refused calls still reached ARM: %v", c.ByKind)
	}
	missing := armsim.DemoID("Microsoft.Network/networkSecurityGroups", "no-such-nsg")
	if err := d.ApplyRules(ctx, missing, nil, []string{"jit-a"}); err != nil {
		t.Errorf("delete in a missing NSG: %v, want success", err)
	}
	if err := d.ApplyRules(ctx, missing, manyAllowRules(1), nil); jit.ErrorCode(err) != jit.ENOTFOUND {
		t.Errorf("put in a missing NSG: %v, want ENOTFOUND", err)
	}
}
