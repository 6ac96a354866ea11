package azurenet_test

import (
	"bytes"
	"context"
	"net/http/httptest"
	"slices"
	"strings"
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

// testOwner is the deployment the tests' driver writes for.
var testOwner = jit.Owner{Deployment: "test"}

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
	return newEnvConfig(t, opts, nil)
}

// newEnvConfig is newEnvOptions with the driver's configuration changed by
// edit.
func newEnvConfig(t *testing.T, opts armsim.Options, edit func(*azurenet.Config)) (*armsim.Server, *azurenet.Driver, *arm.ClientOptions) {
	t.Helper()
	sim := armsim.New(opts)
	co := serve(t, sim)
	return sim, newDriver(t, co, edit), co
}

// serve serves sim over HTTP and returns the SDK client options that reach
// it.
func serve(tb testing.TB, sim *armsim.Server) *arm.ClientOptions {
	srv := httptest.NewServer(sim)
	tb.Cleanup(srv.Close)
	return &arm.ClientOptions{ClientOptions: azcore.ClientOptions{
		Cloud: cloud.Configuration{Services: map[cloud.ServiceName]cloud.ServiceConfiguration{
			cloud.ResourceManager: {Endpoint: srv.URL, Audience: "https://management.azure.com"},
		}},
		InsecureAllowCredentialWithHTTP: true,
	}}
}

// newDriver is a driver for testOwner that reaches ARM through co, with
// retry delays small enough that no test sleeps for long, and its
// configuration changed by edit. Benchmarks log nothing.
func newDriver(tb testing.TB, co *arm.ClientOptions, edit func(*azurenet.Config)) *azurenet.Driver {
	tb.Helper()
	log := zerolog.Nop()
	if _, bench := tb.(*testing.B); !bench {
		log = zerolog.New(zerolog.NewTestWriter(tb))
	}
	cfg := azurenet.Config{
		Owner:         testOwner,
		Subscriptions: []string{armsim.DemoSubscription},
		Log:           log,
		Retry:         policy.RetryOptions{MaxRetries: 3, RetryDelay: time.Millisecond, MaxRetryDelay: 200 * time.Millisecond},
		RetryDelay:    time.Millisecond,
		MaxRetryDelay: 5 * time.Millisecond,
		PollFrequency: 5 * time.Millisecond,
	}
	if edit != nil {
		edit(&cfg)
	}
	d, err := azurenet.New(cfg, &azfake.TokenCredential{}, co)
	if err != nil {
		tb.Fatal(err)
	}
	return d
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
		Name: name, Description: testOwner.Marker() + "vm-nic-nsg; grant 1", Access: jit.AccessAllow, Protocol: "Tcp",
		Ports: []string{"22", "3389"}, Sources: sources, Destinations: []string{"10.10.1.4"},
	}
}

func denyRule(name string) jit.SecurityRule {
	return jit.SecurityRule{
		Name: name, Description: testOwner.Marker() + "vm-nic-nsg lockdown", Access: jit.AccessDeny, Protocol: "*",
		Ports: []string{"22", "3389"}, Sources: []string{"*"}, Destinations: []string{"10.10.1.4"},
	}
}

// put is a change that puts rules.
func put(rules ...jit.SecurityRule) jit.RuleChange { return jit.RuleChange{Put: rules} }

// del is a change that deletes rules by name.
func del(names ...string) jit.RuleChange { return jit.RuleChange{Delete: names} }

// apply is ApplyRules that must succeed.
func apply(t *testing.T, d *azurenet.Driver, nsgID string, c jit.RuleChange) jit.Applied {
	t.Helper()
	a, err := d.ApplyRules(context.Background(), nsgID, c)
	if err != nil {
		t.Fatalf("ApplyRules(%s): %v", nsgID, err)
	}
	return a
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

func TestApplyRulesIsIdempotent(t *testing.T) {
	sim, d := newEnv(t, armsim.Options{})
	rule := allowRule("jit-allow-1", "203.0.113.7")
	if a := apply(t, d, nsgVMNIC, put(rule)); !slices.Equal(a.Created, []string{rule.Name}) {
		t.Fatalf("applied %+v, want %s created", a, rule.Name)
	}
	if w := sim.Calls().Writes; w != 1 {
		t.Fatalf("%d writes for a new rule, want 1", w)
	}
	got, ok := findRule(t, d, nsgVMNIC, rule.Name)
	if !ok || got.Priority != azurenet.DefaultAllowMin || !slices.Equal(got.Ports, rule.Ports) || got.Description != rule.Description ||
		!slices.Equal(got.SourcePorts, []string{"*"}) {
		t.Fatalf("rule after put: %+v", got)
	}

	sim.ResetCalls()
	same := rule
	same.Ports = []string{"3389", "22"} // order does not matter
	same.Protocol = "TCP"               // nor letter case
	same.SourcePorts = []string{"*"}    // nor the default spelt out
	if a := apply(t, d, nsgVMNIC, put(same)); a.Wrote() || len(a.Rules) != 2 {
		t.Fatalf("identical put: %+v, want nothing written and the two rules read", a)
	}
	if c := sim.Calls(); c.Writes != 0 || c.Reads != 1 {
		t.Fatalf("identical put made %d writes and %d reads, want 0 and 1: %v", c.Writes, c.Reads, c.ByKind)
	}

	// A change keeps the rule's priority even though a lower one is free.
	apply(t, d, nsgVMNIC, put(allowRule("jit-allow-0", "198.51.100.1")))
	apply(t, d, nsgVMNIC, jit.RuleChange{Delete: []string{"jit-allow-0"}})
	apply(t, d, nsgVMNIC, put(allowRule("jit-allow-2", "198.51.100.1")))
	a := apply(t, d, nsgVMNIC, put(allowRule("jit-allow-1", "203.0.113.7", "203.0.113.8")))
	if !slices.Equal(a.Updated, []string{"jit-allow-1"}) {
		t.Errorf("applied %+v, want jit-allow-1 updated", a)
	}
	got, _ = findRule(t, d, nsgVMNIC, "jit-allow-1")
	if got.Priority != azurenet.DefaultAllowMin || len(got.Sources) != 2 {
		t.Fatalf("updated rule: %+v", got)
	}
	other, _ := findRule(t, d, nsgVMNIC, "jit-allow-2")
	if other.Priority != azurenet.DefaultAllowMin+1 {
		t.Fatalf("second rule priority %d, want %d", other.Priority, azurenet.DefaultAllowMin+1)
	}
}

func TestRefusesRulesItWouldNotOwn(t *testing.T) {
	sim, d := newEnv(t, armsim.Options{})
	ctx := context.Background()
	unmarked := allowRule("jit-allow-1", "*")
	unmarked.Description = "Managed by jitaccess: grant 1" // a legacy description is not this deployment's
	withASG := allowRule("jit-allow-2", "*")
	withASG.SourceASGs = []string{armsim.DemoID("Microsoft.Network/applicationSecurityGroups", "asg")}
	for _, r := range []jit.SecurityRule{allowRule("allow-https", "*"), unmarked, withASG, {Name: "jit-x", Description: testOwner.Marker(), Access: "Maybe", Ports: []string{"22"}, Sources: []string{"*"}, Destinations: []string{"*"}}} {
		if _, err := d.ApplyRules(ctx, nsgVMNIC, put(r)); jit.ErrorCode(err) != jit.EINVALID {
			t.Errorf("put %s (%q): %v, want EINVALID", r.Name, r.Description, err)
		}
	}
	if c := sim.Calls(); c.Writes != 0 || c.Reads != 0 {
		t.Errorf("refused calls still reached ARM: %v", c.ByKind)
	}
	// Deleting a rule the deployment does not own leaves it alone.
	before, _ := sim.RuleJSON(nsgVMNIC, "allow-https")
	if a := apply(t, d, nsgVMNIC, del("allow-https")); a.Wrote() || len(a.Rules) != 1 {
		t.Errorf("delete allow-https: %+v, want nothing done", a)
	}
	if after, _ := sim.RuleJSON(nsgVMNIC, "allow-https"); !bytes.Equal(before, after) {
		t.Errorf("allow-https changed:\nbefore %s\nafter  %s", before, after)
	}
}

func TestMissingNSG(t *testing.T) {
	sim, d := newEnv(t, armsim.Options{})
	missing := armsim.DemoID("Microsoft.Network/networkSecurityGroups", "no-such-nsg")
	prune := func(jit.SecurityRule) bool { return true }
	for _, c := range []jit.RuleChange{{}, del("jit-allow-missing"), {Prune: prune}} {
		a, err := d.ApplyRules(context.Background(), missing, c)
		if err != nil || !a.Missing || a.Wrote() || a.Rules != nil {
			t.Errorf("%+v in a missing NSG: %+v, %v; want Missing", c, a, err)
		}
	}
	_, err := d.ApplyRules(context.Background(), missing, jit.RuleChange{Put: []jit.SecurityRule{allowRule("jit-a", "*")}, Prune: prune})
	if jit.ErrorCode(err) != jit.ENOTFOUND {
		t.Errorf("put in a missing NSG: %v, want ENOTFOUND", err)
	}
	if _, err := d.ListRules(context.Background(), missing); jit.ErrorCode(err) != jit.ENOTFOUND {
		t.Errorf("ListRules of a missing NSG: %v, want ENOTFOUND", err)
	}
	if c := sim.Calls(); c.Writes != 0 {
		t.Errorf("%d writes to a missing NSG", c.Writes)
	}
	// Deleting a rule that is not there writes nothing either.
	if a := apply(t, d, nsgVMNIC, del("jit-allow-missing")); a.Wrote() || a.Missing {
		t.Errorf("delete of a missing rule: %+v", a)
	}
}

func TestPersistentFailureIsUnavailable(t *testing.T) {
	for _, f := range []armsim.Fault{armsim.AnotherOperationInProgress(), armsim.Throttled(time.Millisecond), armsim.InternalServerError(), armsim.LROFailed("InternalServerError")} {
		sim, d := newEnv(t, armsim.Options{})
		sim.FailNext(armsim.Writes, 1000, f)
		_, err := d.ApplyRules(context.Background(), nsgVMNIC, put(allowRule("jit-allow-1", "203.0.113.7")))
		if jit.ErrorCode(err) != jit.EUNAVAILABLE {
			t.Errorf("%s: err %v (code %q), want EUNAVAILABLE", f.Code, err, jit.ErrorCode(err))
		}
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
	apply(t, d, nsgVMNIC, put(allowRule("jit-a", "*")))
	if r, _ := findRule(t, d, nsgVMNIC, "jit-a"); r.Priority != 1002 {
		t.Errorf("priority %d, want 1002 (lowest free)", r.Priority)
	}

	// A band with no free priority left is a conflict that writes nothing.
	_, narrow, _ := newEnvConfig(t, armsim.Options{}, func(c *azurenet.Config) { c.AllowBand = azurenet.Band{Min: 1000, Max: 1001} })
	apply(t, narrow, nsgVMNIC, put(allowRule("jit-a", "*"), allowRule("jit-b", "*")))
	if _, err := narrow.ApplyRules(context.Background(), nsgVMNIC, put(allowRule("jit-c", "*"))); jit.ErrorCode(err) != jit.ECONFLICT {
		t.Errorf("third rule in a band of two: %v, want ECONFLICT", err)
	}
}

func TestNewChecksConfig(t *testing.T) {
	for _, cfg := range []azurenet.Config{
		{Owner: testOwner, AllowBand: azurenet.Band{Min: 50, Max: 60}},
		{Owner: testOwner, DenyBand: azurenet.Band{Min: 4000, Max: 5000}},
		{Owner: testOwner, AllowBand: azurenet.Band{Min: 4000, Max: 4050}, DenyBand: azurenet.Band{Min: 1000, Max: 1100}},
		{},
		{Owner: jit.Owner{Deployment: "Prod"}},
		{Owner: jit.Owner{Deployment: "-prod"}},
	} {
		if _, err := azurenet.New(cfg, &azfake.TokenCredential{}, nil); err == nil {
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
	_, err := azurenet.New(azurenet.Config{}, &azfake.TokenCredential{}, nil)
	if err == nil || !strings.Contains(err.Error(), "Owner") || !strings.Contains(err.Error(), "deployment name") {
		t.Errorf("New without an owner: %v, want a message naming Config.Owner and the deployment name", err)
	}
}
