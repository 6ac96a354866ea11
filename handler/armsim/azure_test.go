package armsim_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	azfake "github.com/Azure/azure-sdk-for-go/sdk/azcore/fake"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v9"

	"jitaccess/handler/armsim"
)

// sdkClients are the real armnetwork clients on a simulator over a real
// listener, with the SDK's retries off so each answer is seen as ARM gave it.
type sdkClients struct {
	sim   *armsim.Server
	rules *armnetwork.SecurityRulesClient
	nsgs  *armnetwork.SecurityGroupsClient
}

func startAzure(t *testing.T, az armsim.Azure) sdkClients {
	t.Helper()
	sim, srv := start(t, armsim.Options{Azure: &az})
	co := &arm.ClientOptions{ClientOptions: azcore.ClientOptions{
		Cloud:                           cloud.Configuration{Services: map[cloud.ServiceName]cloud.ServiceConfiguration{cloud.ResourceManager: {Endpoint: srv.URL, Audience: "https://management.azure.com"}}},
		InsecureAllowCredentialWithHTTP: true,
		Retry:                           policy.RetryOptions{MaxRetries: -1},
	}}
	rules, err := armnetwork.NewSecurityRulesClient(armsim.DemoSubscription, &azfake.TokenCredential{}, co)
	if err != nil {
		t.Fatal(err)
	}
	nsgs, err := armnetwork.NewSecurityGroupsClient(armsim.DemoSubscription, &azfake.TokenCredential{}, co)
	if err != nil {
		t.Fatal(err)
	}
	return sdkClients{sim, rules, nsgs}
}

func sdkRule(prio int32, mutate func(*armnetwork.SecurityRulePropertiesFormat)) armnetwork.SecurityRule {
	p := &armnetwork.SecurityRulePropertiesFormat{
		Access: to.Ptr(armnetwork.SecurityRuleAccessAllow), Direction: to.Ptr(armnetwork.SecurityRuleDirectionInbound),
		Priority: to.Ptr(prio), Protocol: to.Ptr(armnetwork.SecurityRuleProtocolTCP),
		SourceAddressPrefix: to.Ptr("203.0.113.7"), SourcePortRange: to.Ptr("*"),
		DestinationAddressPrefix: to.Ptr("10.10.1.4"), DestinationPortRange: to.Ptr("22"),
	}
	if mutate != nil {
		mutate(p)
	}
	return armnetwork.SecurityRule{Properties: p}
}

// armCode is the ARM error code and status of err, or fails the test.
func armCode(t *testing.T, err error) (int, string) {
	t.Helper()
	var re *azcore.ResponseError
	if !errors.As(err, &re) {
		t.Fatalf("want an ARM error answer, got %v", err)
	}
	return re.StatusCode, re.ErrorCode
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// A write is answered at once and its operation stays InProgress until
// WriteTime has passed; then it succeeds.
func TestAzureWriteTakesTime(t *testing.T) {
	c := startAzure(t, armsim.Azure{WriteTime: 1500 * time.Millisecond})
	ctx := ctxFor(t, 20*time.Second)
	poller, err := c.rules.BeginCreateOrUpdate(ctx, "demo", "nsg-vm-nic", "jit-slow", sdkRule(1000, nil), nil)
	if err != nil {
		t.Fatal(err)
	}
	accepted := time.Now()
	resp, err := poller.Poll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if poller.Done() {
		t.Fatalf("the operation was done at its first poll (status %d)", resp.StatusCode)
	}
	if ra := resp.Header.Get("Retry-After"); ra != "1" || resp.Header.Get("Retry-After-Ms") != "" {
		t.Errorf("InProgress poll: Retry-After %q, Retry-After-Ms %q; want whole seconds as ARM sends", ra, resp.Header.Get("Retry-After-Ms"))
	}
	res, err := poller.PollUntilDone(ctx, &runtime.PollUntilDoneOptions{Frequency: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(accepted); took < 1500*time.Millisecond {
		t.Errorf("the operation ended after %s, before its write time", took)
	}
	if *res.Properties.ProvisioningState != armnetwork.ProvisioningStateSucceeded {
		t.Errorf("final state %s", *res.Properties.ProvisioningState)
	}
}

// One operation at a time per NSG: a second write to the same NSG, whole or
// one rule, is refused while the first runs; another NSG is not held up.
func TestAzureOneOperationPerNSG(t *testing.T) {
	for _, tc := range []struct {
		busy   armsim.BusyAnswer
		status int
		code   string
	}{
		{armsim.BusyRetryable, 429, "RetryableErrorDueToAnotherOperation"},
		{armsim.BusyConflict, 409, "AnotherOperationInProgress"},
	} {
		t.Run(tc.code, func(t *testing.T) {
			c := startAzure(t, armsim.Azure{WriteTime: 2 * time.Second, Busy: tc.busy})
			ctx := ctxFor(t, 20*time.Second)
			first, err := c.rules.BeginCreateOrUpdate(ctx, "demo", "nsg-vm-nic", "jit-first", sdkRule(1000, nil), nil)
			if err != nil {
				t.Fatal(err)
			}
			var resp *http.Response
			_, err = c.rules.BeginCreateOrUpdate(policy.WithCaptureResponse(ctx, &resp), "demo", "nsg-vm-nic", "jit-second", sdkRule(1001, nil), nil)
			if st, code := armCode(t, err); st != tc.status || code != tc.code {
				t.Errorf("rule PUT during an operation: %d %s, want %d %s", st, code, tc.status, tc.code)
			}
			if ra := resp.Header.Get("Retry-After"); ra == "" || ra == "0" {
				t.Errorf("busy answer without Retry-After")
			}
			if slices.Contains(c.sim.RuleNames(nsgVMNIC), "jit-second") {
				t.Errorf("a refused write changed the NSG")
			}
			_, err = c.rules.BeginDelete(ctx, "demo", "nsg-vm-nic", "jit-first", nil)
			if st, code := armCode(t, err); st != tc.status || code != tc.code {
				t.Errorf("rule DELETE during an operation: %d %s", st, code)
			}
			nsg, err := c.nsgs.Get(ctx, "demo", "nsg-vm-nic", nil)
			if err != nil {
				t.Fatalf("reads go on during an operation: %v", err)
			}
			if st := nsg.Properties.ProvisioningState; st == nil || *st != armnetwork.ProvisioningStateUpdating {
				t.Errorf("NSG read during its operation: provisioningState %v, want Updating", st)
			}
			_, err = c.nsgs.BeginCreateOrUpdate(ctx, "demo", "nsg-vm-nic", nsg.SecurityGroup, nil)
			if st, code := armCode(t, err); st != tc.status || code != tc.code {
				t.Errorf("whole-NSG PUT during an operation: %d %s", st, code)
			}
			// Another NSG is free.
			other, err := c.rules.BeginCreateOrUpdate(ctx, "demo", "nsg-subnet-protected", "jit-other", sdkRule(1000, nil), nil)
			if err != nil {
				t.Fatalf("a write to another NSG was held up: %v", err)
			}
			for _, p := range []*runtime.Poller[armnetwork.SecurityRulesClientCreateOrUpdateResponse]{first, other} {
				if _, err := p.PollUntilDone(ctx, &runtime.PollUntilDoneOptions{Frequency: 100 * time.Millisecond}); err != nil {
					t.Fatal(err)
				}
			}
			// Once the operation is over, the NSG takes writes again.
			second, err := c.rules.BeginCreateOrUpdate(ctx, "demo", "nsg-vm-nic", "jit-second", sdkRule(1001, nil), nil)
			if err != nil {
				t.Fatalf("write after the operation ended: %v", err)
			}
			if _, err := second.PollUntilDone(ctx, &runtime.PollUntilDoneOptions{Frequency: 100 * time.Millisecond}); err != nil {
				t.Fatal(err)
			}
			if got := c.sim.Calls().Busy; got != 3 {
				t.Errorf("Busy count %d, want 3", got)
			}
			if nsg, err := c.nsgs.Get(ctx, "demo", "nsg-subnet-protected", nil); err != nil || *nsg.Properties.ProvisioningState != armnetwork.ProvisioningStateSucceeded {
				t.Errorf("NSG read after its operation: %v %v, want Succeeded", nsg.Properties.ProvisioningState, err)
			}
		})
	}
}

// The subscription's budgets: every answer says what is left; an empty
// bucket answers 429 with Retry-After; writes and deletes have their own
// buckets; the bucket refills.
func TestAzureWriteBudget(t *testing.T) {
	c := startAzure(t, armsim.Azure{Writes: armsim.Bucket{Size: 3, PerSecond: 0.5}, Deletes: armsim.Bucket{Size: 1, PerSecond: 0.5}, Reads: armsim.Bucket{Size: -1}})
	ctx := ctxFor(t, 20*time.Second)
	for i := range 3 {
		var resp *http.Response
		p, err := c.rules.BeginCreateOrUpdate(policy.WithCaptureResponse(ctx, &resp), "demo", "nsg-vm-nic", fmt.Sprintf("jit-b%d", i), sdkRule(int32(1000+i), nil), nil)
		if err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		if got, want := resp.Header.Get("x-ms-ratelimit-remaining-subscription-writes"), fmt.Sprint(2-i); got != want {
			t.Errorf("write %d: remaining writes %q, want %s", i, got, want)
		}
		if _, err := p.PollUntilDone(ctx, &runtime.PollUntilDoneOptions{Frequency: 10 * time.Millisecond}); err != nil {
			t.Fatal(err)
		}
	}
	var resp *http.Response
	_, err := c.rules.BeginCreateOrUpdate(policy.WithCaptureResponse(ctx, &resp), "demo", "nsg-vm-nic", "jit-b3", sdkRule(1003, nil), nil)
	if st, code := armCode(t, err); st != 429 || code != "SubscriptionRequestsThrottled" {
		t.Errorf("write past the budget: %d %s", st, code)
	}
	if ra := resp.Header.Get("Retry-After"); ra != "1" && ra != "2" {
		t.Errorf("throttled write: Retry-After %q, want the 1 to 2 s until the next token", ra)
	}
	if got := resp.Header.Get("x-ms-ratelimit-remaining-subscription-writes"); got != "0" {
		t.Errorf("throttled write: remaining %q", got)
	}
	// Deletes draw from their own bucket.
	del, err := c.rules.BeginDelete(policy.WithCaptureResponse(ctx, &resp), "demo", "nsg-vm-nic", "jit-b0", nil)
	if err != nil {
		t.Fatalf("a delete was throttled by the write budget: %v", err)
	}
	if got := resp.Header.Get("x-ms-ratelimit-remaining-subscription-deletes"); got != "0" {
		t.Errorf("remaining deletes %q, want 0", got)
	}
	if _, err := del.PollUntilDone(ctx, &runtime.PollUntilDoneOptions{Frequency: 10 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	_, err = c.rules.BeginDelete(ctx, "demo", "nsg-vm-nic", "jit-b1", nil)
	if st, code := armCode(t, err); st != 429 || code != "SubscriptionRequestsThrottled" {
		t.Errorf("delete past the delete budget: %d %s", st, code)
	}
	if !slices.Contains(c.sim.RuleNames(nsgVMNIC), "jit-b1") {
		t.Errorf("a throttled delete removed the rule")
	}
	// The bucket refills at its rate: a token back within 2 s.
	time.Sleep(2200 * time.Millisecond)
	if _, err := c.rules.BeginCreateOrUpdate(ctx, "demo", "nsg-vm-nic", "jit-b3", sdkRule(1003, nil), nil); err != nil {
		t.Errorf("write after the refill: %v", err)
	}
	if got := c.sim.Calls().Throttled; got != 2 {
		t.Errorf("Throttled count %d, want 2", got)
	}
}

// NSG limits as Azure documents them, through the real SDK clients.
func TestAzureNSGLimits(t *testing.T) {
	c := startAzure(t, armsim.Azure{Writes: armsim.Bucket{Size: -1}, Reads: armsim.Bucket{Size: -1}})
	ctx := ctxFor(t, 30*time.Second)
	prefixes := func(n int, f string) []*string {
		out := make([]*string, n)
		for i := range out {
			out[i] = to.Ptr(fmt.Sprintf(f, i/250, i%250))
		}
		return out
	}
	for _, tc := range []struct {
		name, rule string
		mutate     func(*armnetwork.SecurityRulePropertiesFormat)
		code       string
	}{
		{"priority below 100", "jit-p", func(p *armnetwork.SecurityRulePropertiesFormat) { p.Priority = to.Ptr[int32](99) }, "SecurityRuleInvalidPriority"},
		{"priority above 4096", "jit-p", func(p *armnetwork.SecurityRulePropertiesFormat) { p.Priority = to.Ptr[int32](4097) }, "SecurityRuleInvalidPriority"},
		{"same priority and direction", "jit-p", func(p *armnetwork.SecurityRulePropertiesFormat) { p.Priority = to.Ptr[int32](300) }, "SecurityRuleConflict"},
		{"name of 81 characters", strings.Repeat("n", 81), nil, "InvalidResourceName"},
		{"description of 141 characters", "jit-d", func(p *armnetwork.SecurityRulePropertiesFormat) { p.Description = to.Ptr(strings.Repeat("d", 141)) }, "SecurityRuleDescriptionTooLong"},
		{"4,001 source prefixes", "jit-s", func(p *armnetwork.SecurityRulePropertiesFormat) {
			p.SourceAddressPrefix, p.SourceAddressPrefixes = nil, prefixes(4001, "10.20.%d.%d")
		}, "SecurityRuleTooManyValues"},
		{"IPv4 and IPv6 sources", "jit-f", func(p *armnetwork.SecurityRulePropertiesFormat) {
			p.SourceAddressPrefix, p.SourceAddressPrefixes = nil, to.SliceOfPtrs("203.0.113.7", "2001:db8::7")
		}, "ResourceCannotContainAddressPrefixesFromDifferentAddressFamilies"},
		{"IPv6 source, IPv4 destination", "jit-f", func(p *armnetwork.SecurityRulePropertiesFormat) { p.SourceAddressPrefix = to.Ptr("2001:db8::/64") }, "ResourceCannotContainAddressPrefixesFromDifferentAddressFamilies"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.rules.BeginCreateOrUpdate(ctx, "demo", "nsg-vm-nic", tc.rule, sdkRule(1000, tc.mutate), nil)
			if st, code := armCode(t, err); st != 400 || code != tc.code {
				t.Errorf("got %d %s, want 400 %s", st, code, tc.code)
			}
		})
	}
	// Sanity: the same rule shapes within the limits are accepted, a
	// service tag beside IPv6 included.
	for i, mutate := range []func(*armnetwork.SecurityRulePropertiesFormat){
		func(p *armnetwork.SecurityRulePropertiesFormat) {
			p.Priority, p.Description = to.Ptr[int32](100), to.Ptr(strings.Repeat("d", 140))
		},
		func(p *armnetwork.SecurityRulePropertiesFormat) {
			p.Priority, p.SourceAddressPrefix, p.DestinationAddressPrefix = to.Ptr[int32](4096), to.Ptr("2001:db8::/64"), to.Ptr("VirtualNetwork")
		},
	} {
		p, err := c.rules.BeginCreateOrUpdate(ctx, "demo", "nsg-vm-nic", fmt.Sprintf("jit-ok-%d", i), sdkRule(1000, mutate), nil)
		if err != nil {
			t.Fatalf("rule %d within the limits refused: %v", i, err)
		}
		if _, err := p.PollUntilDone(ctx, &runtime.PollUntilDoneOptions{Frequency: 10 * time.Millisecond}); err != nil {
			t.Fatal(err)
		}
	}

	// Per NSG: 4,000 destination prefixes over all rules, and 1,000 rules.
	nsg, err := c.nsgs.Get(ctx, "demo", "nsg-subnet-protected", nil)
	if err != nil {
		t.Fatal(err)
	}
	group := nsg.SecurityGroup
	base := group.Properties.SecurityRules
	for i := range 4 {
		r := sdkRule(int32(2000+i), func(p *armnetwork.SecurityRulePropertiesFormat) {
			p.DestinationAddressPrefix, p.DestinationAddressPrefixes = nil, prefixes(1000, fmt.Sprintf("10.%d.%%d.%%d", 100+i))
		})
		r.Name = to.Ptr(fmt.Sprintf("jit-wide-%d", i))
		group.Properties.SecurityRules = append(group.Properties.SecurityRules, &r)
	}
	p, err := c.nsgs.BeginCreateOrUpdate(ctx, "demo", "nsg-subnet-protected", group, nil)
	if err != nil {
		t.Fatalf("4,000 destination prefixes in one NSG refused: %v", err)
	}
	res, err := p.PollUntilDone(ctx, &runtime.PollUntilDoneOptions{Frequency: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	group = res.SecurityGroup
	one := sdkRule(2100, nil)
	one.Name = to.Ptr("jit-one-more")
	group.Properties.SecurityRules = append(group.Properties.SecurityRules, &one)
	_, err = c.nsgs.BeginCreateOrUpdate(ctx, "demo", "nsg-subnet-protected", group, nil)
	if st, code := armCode(t, err); st != 400 || code != "SecurityRuleAddressesOrPortsPerSecurityGroupLimitReached" {
		t.Errorf("4,001st destination prefix in one NSG: %d %s", st, code)
	}
	group.Properties.SecurityRules = base
	for i := len(base); i <= armsim.MaxRulesPerNSG; i++ {
		r := sdkRule(int32(100+i), nil)
		r.Name = to.Ptr(fmt.Sprintf("jit-r%04d", i))
		group.Properties.SecurityRules = append(group.Properties.SecurityRules, &r)
	}
	_, err = c.nsgs.BeginCreateOrUpdate(ctx, "demo", "nsg-subnet-protected", group, nil)
	if st, code := armCode(t, err); st != 400 || code != "SecurityRuleCountLimitReached" {
		t.Errorf("1,001 rules: %d %s", st, code)
	}
}

// A whole-NSG PUT replaces the resource: a member it leaves out is not
// kept from before.
func TestAzureWholeNSGPutReplaces(t *testing.T) {
	c := startAzure(t, armsim.Azure{})
	ctx := ctxFor(t, 20*time.Second)
	nsg, err := c.nsgs.Get(ctx, "demo", "nsg-vm-nic", nil)
	if err != nil {
		t.Fatal(err)
	}
	group := nsg.SecurityGroup
	group.Properties.FlushConnection = to.Ptr(true)
	put := func(g armnetwork.SecurityGroup) (armnetwork.SecurityGroup, error) {
		p, err := c.nsgs.BeginCreateOrUpdate(ctx, "demo", "nsg-vm-nic", g, nil)
		if err != nil {
			return armnetwork.SecurityGroup{}, err
		}
		res, err := p.PollUntilDone(ctx, &runtime.PollUntilDoneOptions{Frequency: 10 * time.Millisecond})
		return res.SecurityGroup, err
	}
	got, err := put(group)
	if err != nil {
		t.Fatal(err)
	}
	if got.Properties.FlushConnection == nil || !*got.Properties.FlushConnection {
		t.Fatalf("flushConnection not set by the PUT")
	}
	got.Properties.FlushConnection = nil
	if got, err = put(got); err != nil {
		t.Fatal(err)
	}
	if got.Properties.FlushConnection == nil || *got.Properties.FlushConnection {
		t.Errorf("a PUT without flushConnection kept the old value %v, want ARM's default false", got.Properties.FlushConnection)
	}
	noLocation := got
	noLocation.Location = nil
	if _, err := put(noLocation); err == nil {
		t.Errorf("a PUT without location was accepted")
	} else if st, code := armCode(t, err); st != 400 || code != "LocationRequired" {
		t.Errorf("a PUT without location: %d %s", st, code)
	}
	moved := got
	moved.Location = to.Ptr("eastus")
	if _, err := put(moved); err == nil {
		t.Errorf("a PUT that moves the NSG to another region was accepted")
	} else if st, code := armCode(t, err); st != 400 || code != "InvalidResourceLocation" {
		t.Errorf("a PUT to another region: %d %s", st, code)
	}
}

// An observer's GET is not ARM traffic: not counted, never throttled.
func TestObserverReadsAreFree(t *testing.T) {
	sim, srv := start(t, armsim.Options{Azure: &armsim.Azure{Reads: armsim.Bucket{Size: 1, PerSecond: 0.01}}})
	get := func(observer bool) int {
		req, _ := http.NewRequest("GET", srv.URL+nsgVMNIC+api, nil)
		if observer {
			req.Header.Set(armsim.ObserverHeader, "bench")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if a, b := get(false), get(false); a != 200 || b != 429 {
		t.Fatalf("reads with a bucket of one: %d then %d, want 200 then 429", a, b)
	}
	for range 5 {
		if c := get(true); c != 200 {
			t.Fatalf("observer read answered %d", c)
		}
	}
	if c := sim.Calls(); c.Reads != 2 || c.Throttled != 1 {
		t.Errorf("calls %+v: observer reads were counted", c)
	}
	sim.SetAzure(nil)
	if c := get(false); c != 200 {
		t.Errorf("with the Azure behaviours off a read answered %d", c)
	}
}
