package azurenet_test

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	azfake "github.com/Azure/azure-sdk-for-go/sdk/azcore/fake"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v9"
	"github.com/rs/zerolog"

	"jitaccess/handler/armsim"
	"jitaccess/handler/azurenet"
	"jitaccess/handler/jit"
)

var (
	vmNICNSG    = armsim.DemoID("Microsoft.Compute/virtualMachines", "vm-nic-nsg")
	vmSubnetNSG = armsim.DemoID("Microsoft.Compute/virtualMachines", "vm-subnet-nsg")
	vmBothNSG   = armsim.DemoID("Microsoft.Compute/virtualMachines", "vm-both-nsg")
	vmNoNSG     = armsim.DemoID("Microsoft.Compute/virtualMachines", "vm-no-nsg")

	nsgVMNIC     = armsim.DemoID("Microsoft.Network/networkSecurityGroups", "nsg-vm-nic")
	nsgVMBoth    = armsim.DemoID("Microsoft.Network/networkSecurityGroups", "nsg-vm-both")
	nsgProtected = armsim.DemoID("Microsoft.Network/networkSecurityGroups", "nsg-subnet-protected")
)

// newEnv starts the simulator on a real listener and a driver that reaches
// it through the real SDK clients, with retry delays small enough that no
// test sleeps for long.
func newEnv(t *testing.T, opts armsim.Options) (*armsim.Server, *azurenet.Driver) {
	t.Helper()
	sim, d, _ := newEnvOptions(t, opts)
	return sim, d
}

// newEnvOptions is newEnv that also returns the SDK client options that
// reach the simulator.
func newEnvOptions(t *testing.T, opts armsim.Options) (*armsim.Server, *azurenet.Driver, *arm.ClientOptions) {
	t.Helper()
	sim := armsim.New(opts)
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	co := &arm.ClientOptions{ClientOptions: azcore.ClientOptions{
		Cloud: cloud.Configuration{Services: map[cloud.ServiceName]cloud.ServiceConfiguration{
			cloud.ResourceManager: {Endpoint: srv.URL, Audience: "https://management.azure.com"},
		}},
		InsecureAllowCredentialWithHTTP: true,
	}}
	d, err := azurenet.New(azurenet.Config{
		Subscriptions: []string{armsim.DemoSubscription},
		Log:           zerolog.New(zerolog.NewTestWriter(t)),
		Retry:         policy.RetryOptions{MaxRetries: 3, RetryDelay: time.Millisecond, MaxRetryDelay: 200 * time.Millisecond},
		RetryDelay:    time.Millisecond,
		MaxRetryDelay: 5 * time.Millisecond,
		PollFrequency: 5 * time.Millisecond,
	}, &azfake.TokenCredential{}, co)
	if err != nil {
		t.Fatal(err)
	}
	return sim, d, co
}

func TestResolveVM(t *testing.T) {
	_, d := newEnv(t, armsim.Options{})
	tests := []struct {
		name        string
		vmID        string
		ips         []string
		nsgs        []jit.NSGRef
		unsupported bool
		code        string
	}{
		{"NIC NSG only", vmNICNSG, []string{"10.10.1.4"}, []jit.NSGRef{{ID: nsgVMNIC, Scope: "nic"}}, false, ""},
		{"subnet NSG only", vmSubnetNSG, []string{"10.10.2.4"}, []jit.NSGRef{{ID: nsgProtected, Scope: "subnet"}}, false, ""},
		{"both", vmBothNSG, []string{"10.10.2.5"}, []jit.NSGRef{{ID: nsgVMBoth, Scope: "nic"}, {ID: nsgProtected, Scope: "subnet"}}, false, ""},
		{"no NSG", vmNoNSG, []string{"10.10.1.5"}, nil, true, ""},
		{"id in other letter case", strings.ToUpper(vmNICNSG[:60]) + vmNICNSG[60:], []string{"10.10.1.4"}, []jit.NSGRef{{ID: nsgVMNIC, Scope: "nic"}}, false, ""},
		{"unknown VM", armsim.DemoID("Microsoft.Compute/virtualMachines", "nope"), nil, nil, false, jit.ENOTFOUND},
		{"unknown resource group", "/subscriptions/" + armsim.DemoSubscription + "/resourceGroups/nope/providers/Microsoft.Compute/virtualMachines/x", nil, nil, false, jit.ENOTFOUND},
		{"not a VM id", nsgVMNIC, nil, nil, false, jit.ENOTFOUND},
		{"garbage", "vm-nic-nsg", nil, nil, false, jit.ENOTFOUND},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			info, err := d.ResolveVM(context.Background(), tt.vmID)
			if tt.code != "" {
				if jit.ErrorCode(err) != tt.code {
					t.Fatalf("error %v (code %q), want code %q", err, jit.ErrorCode(err), tt.code)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !strings.EqualFold(info.ID, tt.vmID) || info.Location != armsim.DemoLocation || info.Name == "" {
				t.Errorf("id/name/location = %q/%q/%q", info.ID, info.Name, info.Location)
			}
			if !slices.Equal(info.PrivateIPs, tt.ips) {
				t.Errorf("private IPs %v, want %v", info.PrivateIPs, tt.ips)
			}
			if !slices.Equal(info.NSGs, tt.nsgs) {
				t.Errorf("NSGs %v, want %v", info.NSGs, tt.nsgs)
			}
			if (info.Unsupported != "") != tt.unsupported {
				t.Errorf("unsupported %q, want %v", info.Unsupported, tt.unsupported)
			}
		})
	}
}

func TestListVMsJoinsListsWithoutPerVMReads(t *testing.T) {
	sim, d := newEnv(t, armsim.Options{PageSize: 3}) // 4 VMs: two pages
	vms, err := d.ListVMs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]jit.VMInfo{}
	for _, vm := range vms {
		got[vm.Name] = vm
	}
	if len(vms) != 4 || len(got) != 4 {
		t.Fatalf("got %d VMs: %v", len(vms), vms)
	}
	if g := got["vm-both-nsg"]; !slices.Equal(g.NSGs, []jit.NSGRef{{ID: nsgVMBoth, Scope: "nic"}, {ID: nsgProtected, Scope: "subnet"}}) || g.ID != vmBothNSG {
		t.Errorf("vm-both-nsg = %+v", g)
	}
	if got["vm-no-nsg"].Unsupported == "" || got["vm-nic-nsg"].Unsupported != "" {
		t.Errorf("unsupported flags wrong: %+v", got)
	}
	calls := sim.Calls()
	for _, kind := range []string{"GET virtualMachines", "GET networkInterfaces", "GET subnets", "GET virtualNetworks"} {
		if calls.ByKind[kind] != 0 {
			t.Errorf("%d %s calls, want list calls only: %v", calls.ByKind[kind], kind, calls.ByKind)
		}
	}
	if calls.ByKind["LIST virtualMachines"] != 2 || calls.ByKind["LIST networkInterfaces"] != 2 || calls.Reads != 5 {
		t.Errorf("calls %v, want 2 VM pages, 2 NIC pages, 1 VNet page", calls.ByKind)
	}
}

func allowRule(name string, sources ...string) jit.SecurityRule {
	return jit.SecurityRule{
		Name: name, Description: "managed by jitaccess; vm-nic-nsg; grant 1", Access: jit.AccessAllow, Protocol: "Tcp",
		Ports: []string{"22", "3389"}, Sources: sources, Destinations: []string{"10.10.1.4"},
	}
}

func denyRule(name string) jit.SecurityRule {
	return jit.SecurityRule{
		Name: name, Description: "managed by jitaccess; vm-nic-nsg lockdown", Access: jit.AccessDeny, Protocol: "*",
		Ports: []string{"22", "3389"}, Sources: []string{"*"}, Destinations: []string{"10.10.1.4"},
	}
}

func findRule(t *testing.T, d *azurenet.Driver, nsgID, name string) (jit.SecurityRule, bool) {
	t.Helper()
	rules, err := d.ListRules(context.Background(), nsgID)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rules {
		if r.Name == name {
			return r, true
		}
	}
	return jit.SecurityRule{}, false
}

func TestPutRuleIsIdempotent(t *testing.T) {
	sim, d := newEnv(t, armsim.Options{})
	ctx := context.Background()
	rule := allowRule("jit-allow-1", "203.0.113.7")
	if err := d.PutRule(ctx, nsgVMNIC, rule); err != nil {
		t.Fatal(err)
	}
	if w := sim.Calls().Writes; w != 1 {
		t.Fatalf("%d writes for a new rule, want 1", w)
	}
	got, ok := findRule(t, d, nsgVMNIC, rule.Name)
	if !ok || got.Priority != azurenet.DefaultAllowMin || !slices.Equal(got.Ports, rule.Ports) || got.Description != rule.Description {
		t.Fatalf("rule after put: %+v", got)
	}

	sim.ResetCalls()
	same := rule
	same.Ports = []string{"3389", "22"} // order does not matter
	same.Protocol = "TCP"
	if err := d.PutRule(ctx, nsgVMNIC, same); err != nil {
		t.Fatal(err)
	}
	if c := sim.Calls(); c.Writes != 0 || c.Reads != 1 {
		t.Fatalf("identical PutRule made %d writes and %d reads, want 0 and 1: %v", c.Writes, c.Reads, c.ByKind)
	}

	// A change keeps the rule's priority even though a lower one is free.
	if err := d.PutRule(ctx, nsgVMNIC, allowRule("jit-allow-0", "198.51.100.1")); err != nil {
		t.Fatal(err)
	}
	if err := d.PutRule(ctx, nsgVMNIC, allowRule("jit-allow-1", "203.0.113.7", "203.0.113.8")); err != nil {
		t.Fatal(err)
	}
	got, _ = findRule(t, d, nsgVMNIC, "jit-allow-1")
	if got.Priority != azurenet.DefaultAllowMin || len(got.Sources) != 2 {
		t.Fatalf("updated rule: %+v", got)
	}
	other, _ := findRule(t, d, nsgVMNIC, "jit-allow-0")
	if other.Priority != azurenet.DefaultAllowMin+1 {
		t.Fatalf("second rule priority %d, want %d", other.Priority, azurenet.DefaultAllowMin+1)
	}
}

func TestForeignRulesUntouched(t *testing.T) {
	sim, d := newEnv(t, armsim.Options{})
	ctx := context.Background()
	before, ok := sim.RuleJSON(nsgVMNIC, "allow-https")
	if !ok {
		t.Fatal("demo estate lacks allow-https")
	}
	deny, allow := denyRule("jit-deny-vm-nic-nsg"), allowRule("jit-allow-1", "203.0.113.7")
	for _, r := range []jit.SecurityRule{deny, allow} {
		if err := d.PutRule(ctx, nsgVMNIC, r); err != nil {
			t.Fatal(err)
		}
	}
	if r, _ := findRule(t, d, nsgVMNIC, deny.Name); r.Priority != azurenet.DefaultDenyMin {
		t.Errorf("deny rule priority %d, want %d", r.Priority, azurenet.DefaultDenyMin)
	}
	for _, name := range []string{allow.Name, deny.Name} {
		if err := d.DeleteRule(ctx, nsgVMNIC, name); err != nil {
			t.Fatal(err)
		}
	}
	after, _ := sim.RuleJSON(nsgVMNIC, "allow-https")
	if !bytes.Equal(before, after) {
		t.Errorf("foreign rule changed:\nbefore %s\nafter  %s", before, after)
	}
	if names := sim.RuleNames(nsgVMNIC); !slices.Equal(names, []string{"allow-https"}) {
		t.Errorf("rules left: %v", names)
	}
}

func TestRefusesUnmanagedNames(t *testing.T) {
	sim, d := newEnv(t, armsim.Options{})
	ctx := context.Background()
	r := allowRule("allow-https", "*")
	if err := d.PutRule(ctx, nsgVMNIC, r); jit.ErrorCode(err) != jit.EINVALID {
		t.Errorf("PutRule(allow-https) = %v, want EINVALID", err)
	}
	if err := d.DeleteRule(ctx, nsgVMNIC, "allow-https"); jit.ErrorCode(err) != jit.EINVALID {
		t.Errorf("DeleteRule(allow-https) = %v, want EINVALID", err)
	}
	if c := sim.Calls(); c.Writes != 0 || c.Reads != 0 {
		t.Errorf("refused calls still reached ARM: %v", c.ByKind)
	}
}

func TestDeleteMissingIsSuccess(t *testing.T) {
	_, d := newEnv(t, armsim.Options{})
	for _, nsg := range []string{nsgVMNIC, armsim.DemoID("Microsoft.Network/networkSecurityGroups", "no-such-nsg")} {
		if err := d.DeleteRule(context.Background(), nsg, "jit-allow-missing"); err != nil {
			t.Errorf("DeleteRule in %s: %v", nsg, err)
		}
	}
}

func TestPutRuleMissingNSG(t *testing.T) {
	_, d := newEnv(t, armsim.Options{})
	err := d.PutRule(context.Background(), armsim.DemoID("Microsoft.Network/networkSecurityGroups", "no-such-nsg"), allowRule("jit-a", "*"))
	if jit.ErrorCode(err) != jit.ENOTFOUND {
		t.Fatalf("err %v, want ENOTFOUND", err)
	}
}

func TestTransientFailuresAreRetried(t *testing.T) {
	tests := []struct {
		name   string
		target armsim.Target
		n      int
		fault  armsim.Fault
	}{
		{"429 with Retry-After", armsim.Writes, 2, armsim.Throttled(5 * time.Millisecond)},
		{"429 on reads", armsim.Reads, 2, armsim.Throttled(5 * time.Millisecond)},
		{"409 AnotherOperationInProgress", armsim.Writes, 2, armsim.AnotherOperationInProgress()},
		{"500", armsim.Writes, 2, armsim.InternalServerError()},
		{"operation superseded", armsim.Writes, 1, armsim.LROFailed("CanceledAndSupersededDueToAnotherOperation")},
		{"operation failed", armsim.Writes, 2, armsim.LROFailed("InternalServerError")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sim, d := newEnv(t, armsim.Options{InProgressPolls: 1})
			ctx := context.Background()
			sim.FailNext(tt.target, tt.n, tt.fault)
			start := time.Now()
			if err := d.PutRule(ctx, nsgVMNIC, allowRule("jit-allow-1", "203.0.113.7")); err != nil {
				t.Fatal(err)
			}
			if _, ok := findRule(t, d, nsgVMNIC, "jit-allow-1"); !ok {
				t.Fatal("rule not written")
			}
			if c := sim.Calls(); c.Faults != tt.n {
				t.Errorf("%d faults served, want %d", c.Faults, tt.n)
			}
			sim.FailNext(tt.target, tt.n, tt.fault)
			if err := d.DeleteRule(ctx, nsgVMNIC, "jit-allow-1"); err != nil {
				t.Fatal(err)
			}
			if _, ok := findRule(t, d, nsgVMNIC, "jit-allow-1"); ok {
				t.Fatal("rule not deleted")
			}
			if el := time.Since(start); el > 3*time.Second {
				t.Errorf("took %v; retry delays should be tiny in tests", el)
			}
		})
	}
}

func TestPersistentFailureIsUnavailable(t *testing.T) {
	for _, f := range []armsim.Fault{armsim.AnotherOperationInProgress(), armsim.Throttled(time.Millisecond), armsim.LROFailed("InternalServerError")} {
		sim, d := newEnv(t, armsim.Options{})
		sim.FailNext(armsim.Writes, 1000, f)
		err := d.PutRule(context.Background(), nsgVMNIC, allowRule("jit-allow-1", "203.0.113.7"))
		if jit.ErrorCode(err) != jit.EUNAVAILABLE {
			t.Errorf("%s: err %v (code %q), want EUNAVAILABLE", f.Code, err, jit.ErrorCode(err))
		}
	}
}

func TestPriorityClashIsRetried(t *testing.T) {
	var sim *armsim.Server
	var raced atomic.Bool
	// Another writer takes priority 1000 between the driver's read of the
	// NSG and its PUT, as a concurrent portal edit or second worker would.
	sim, d := newEnv(t, armsim.Options{Intercept: func(r *http.Request, c armsim.Call) *armsim.Fault {
		if c.Kind() == "PUT securityRules" && raced.CompareAndSwap(false, true) {
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
	if err := d.PutRule(context.Background(), nsgVMNIC, allowRule("jit-allow-1", "203.0.113.7")); err != nil {
		t.Fatal(err)
	}
	got, ok := findRule(t, d, nsgVMNIC, "jit-allow-1")
	if !ok || got.Priority != azurenet.DefaultAllowMin+1 {
		t.Fatalf("rule %+v, want priority %d", got, azurenet.DefaultAllowMin+1)
	}
	if c := sim.Calls(); c.ByKind["PUT securityRules"] != 2 || c.ByKind["GET networkSecurityGroups"] < 2 {
		t.Errorf("calls %v: want a re-read and a second PUT", c.ByKind)
	}
}

func TestPrioritySkipsForeignAndFullBand(t *testing.T) {
	sim, d := newEnv(t, armsim.Options{})
	for _, p := range []int32{1000, 1001, 1003} {
		if err := sim.AddRule(nsgVMNIC, armnetwork.SecurityRule{Name: to.Ptr("foreign-" + string(rune('a'+p-1000))), Properties: &armnetwork.SecurityRulePropertiesFormat{
			Access: to.Ptr(armnetwork.SecurityRuleAccessAllow), Direction: to.Ptr(armnetwork.SecurityRuleDirectionInbound),
			Priority: to.Ptr(p), Protocol: to.Ptr(armnetwork.SecurityRuleProtocolAsterisk),
			SourceAddressPrefix: to.Ptr("*"), SourcePortRange: to.Ptr("*"), DestinationAddressPrefix: to.Ptr("*"), DestinationPortRange: to.Ptr("8080"),
		}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.PutRule(context.Background(), nsgVMNIC, allowRule("jit-a", "*")); err != nil {
		t.Fatal(err)
	}
	if r, _ := findRule(t, d, nsgVMNIC, "jit-a"); r.Priority != 1002 {
		t.Errorf("priority %d, want 1002 (lowest free)", r.Priority)
	}
}

func TestNewRejectsBadBands(t *testing.T) {
	for _, cfg := range []azurenet.Config{
		{AllowBand: azurenet.Band{Min: 50, Max: 60}},
		{DenyBand: azurenet.Band{Min: 4000, Max: 5000}},
		{AllowBand: azurenet.Band{Min: 4000, Max: 4050}, DenyBand: azurenet.Band{Min: 1000, Max: 1100}},
	} {
		if _, err := azurenet.New(cfg, &azfake.TokenCredential{}, nil); err == nil {
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
}

// A 429's Retry-After is waited out before the call is tried again, also
// when it is longer than azcore's own maximum retry delay (200 ms here),
// for which azcore gives up at once. A lower bound only: a slow machine
// takes longer and still passes.
func TestThrottlingWaitsRetryAfter(t *testing.T) {
	for _, tc := range []struct {
		name   string
		target armsim.Target
		kind   string
	}{{"write", armsim.Writes, "PUT securityRules"}, {"read", armsim.Reads, "GET networkSecurityGroups"}} {
		t.Run(tc.name, func(t *testing.T) {
			sim, d := newEnv(t, armsim.Options{})
			const wait = 400 * time.Millisecond
			sim.FailNext(tc.target, 1, armsim.Throttled(wait))
			start := time.Now()
			if err := d.PutRule(context.Background(), nsgVMNIC, allowRule("jit-allow-1", "203.0.113.7")); err != nil {
				t.Fatal(err)
			}
			if el := time.Since(start); el < wait {
				t.Errorf("retried %v after a 429 asking for %v", el, wait)
			}
			if c := sim.Calls(); c.Faults != 1 || c.ByKind[tc.kind] != 2 {
				t.Errorf("calls %+v: want the throttled %s and one retry", c.ByKind, tc.kind)
			}
		})
	}
	// Throttling azcore already waits out (Retry-After within its maximum)
	// is not retried again on top: the driver gives up when azcore does,
	// instead of multiplying the calls to a throttled ARM.
	{
		sim, d := newEnv(t, armsim.Options{})
		sim.FailNext(armsim.Writes, 100, armsim.Throttled(20*time.Millisecond))
		err := d.PutRule(context.Background(), nsgVMNIC, allowRule("jit-allow-1", "203.0.113.7"))
		if jit.ErrorCode(err) != jit.EUNAVAILABLE {
			t.Errorf("persistent throttling: %v, want unavailable", err)
		}
		if n := sim.Calls().ByKind["PUT securityRules"]; n != 4 {
			t.Errorf("persistent throttling made %d PUTs, want 4 (azcore's first try and 3 retries)", n)
		}
	}
	// A Retry-After beyond what a worker waits out fails the operation at
	// once, for the queue to deliver again later.
	sim, d := newEnv(t, armsim.Options{})
	sim.FailNext(armsim.Writes, 1, armsim.Throttled(10*time.Minute))
	start := time.Now()
	err := d.PutRule(context.Background(), nsgVMNIC, allowRule("jit-allow-1", "203.0.113.7"))
	if jit.ErrorCode(err) != jit.EUNAVAILABLE {
		t.Errorf("a 429 asking for 10 minutes: %v, want unavailable", err)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("a 429 asking for 10 minutes held the worker %v", el)
	}
}
