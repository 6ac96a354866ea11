package armsim_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	azfake "github.com/Azure/azure-sdk-for-go/sdk/azcore/fake"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v9"

	"jitaccess/handler/armsim"
)

const api = "?api-version=2025-05-01"

var nsgVMNIC = armsim.DemoID("Microsoft.Network/networkSecurityGroups", "nsg-vm-nic")

func start(t *testing.T, opts armsim.Options) (*armsim.Server, *httptest.Server) {
	t.Helper()
	sim := armsim.New(opts)
	var h http.Handler = sim
	if opts.PathPrefix != "" {
		mux := http.NewServeMux()
		mux.Handle(opts.PathPrefix+"/", http.StripPrefix(opts.PathPrefix, sim))
		h = mux
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return sim, srv
}

type answer struct {
	status int
	header http.Header
	body   []byte
}

func (a answer) code() string {
	var e struct{ Error struct{ Code string } }
	_ = json.Unmarshal(a.body, &e)
	return e.Error.Code
}

func do(t *testing.T, method, url string, body any) answer {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return answer{resp.StatusCode, resp.Header, b}
}

func ruleBody(prio int, mutate func(p map[string]any)) map[string]any {
	p := map[string]any{
		"protocol": "Tcp", "sourcePortRange": "*", "destinationPortRange": "22",
		"sourceAddressPrefix": "203.0.113.7", "destinationAddressPrefix": "10.10.1.4",
		"access": "Allow", "priority": prio, "direction": "Inbound",
	}
	if mutate != nil {
		mutate(p)
	}
	return map[string]any{"properties": p}
}

func TestReadsServeARMShapes(t *testing.T) {
	_, srv := start(t, armsim.Options{})
	a := do(t, "GET", srv.URL+nsgVMNIC, nil)
	if a.status != 400 || a.code() != "MissingApiVersionParameter" {
		t.Errorf("no api-version: %d %s", a.status, a.body)
	}
	// Type segments are case-insensitive, as in ARM.
	a = do(t, "GET", srv.URL+strings.NewReplacer("resourceGroups", "RESOURCEGROUPS", "networkSecurityGroups", "networksecuritygroups").Replace(nsgVMNIC)+api, nil)
	if a.status != 200 {
		t.Fatalf("GET NSG: %d %s", a.status, a.body)
	}
	var nsg armnetwork.SecurityGroup
	if err := json.Unmarshal(a.body, &nsg); err != nil {
		t.Fatal(err)
	}
	if *nsg.ID != nsgVMNIC || nsg.Etag == nil || *nsg.Type != "Microsoft.Network/networkSecurityGroups" || *nsg.Properties.ProvisioningState != "Succeeded" {
		t.Errorf("NSG header fields: %s", a.body)
	}
	prios := map[string]int32{}
	for _, r := range nsg.Properties.DefaultSecurityRules {
		prios[*r.Name] = *r.Properties.Priority
	}
	if len(prios) != 6 || prios["AllowVnetInBound"] != 65000 || prios["AllowAzureLoadBalancerInBound"] != 65001 || prios["DenyAllInBound"] != 65500 {
		t.Errorf("default rules: %v", prios)
	}
	if len(nsg.Properties.NetworkInterfaces) != 1 || !strings.HasSuffix(*nsg.Properties.NetworkInterfaces[0].ID, "/vm-nic-nsg-nic") {
		t.Errorf("NSG back-reference to its NIC missing: %s", a.body)
	}

	for _, tt := range []struct {
		path   string
		status int
		code   string
	}{
		{armsim.DemoID("Microsoft.Compute/virtualMachines", "vm-both-nsg"), 200, ""},
		{armsim.DemoID("Microsoft.Network/networkInterfaces", "vm-both-nsg-nic"), 200, ""},
		{armsim.DemoID("Microsoft.Network/virtualNetworks", "demo-vnet") + "/subnets/protected", 200, ""},
		{armsim.DemoID("Microsoft.Network/virtualNetworks", "demo-vnet") + "/subnets", 200, ""},
		{nsgVMNIC + "/securityRules/allow-https", 200, ""},
		{nsgVMNIC + "/defaultSecurityRules/DenyAllInBound", 200, ""},
		{nsgVMNIC + "/securityRules/nope", 404, "NotFound"},
		{armsim.DemoID("Microsoft.Network/networkSecurityGroups", "nope"), 404, "ResourceNotFound"},
		{"/subscriptions/" + armsim.DemoSubscription + "/resourceGroups/nope/providers/Microsoft.Network/networkSecurityGroups/x", 404, "ResourceGroupNotFound"},
		{armsim.DemoID("Microsoft.Network/loadBalancers", "lb"), 404, "InvalidResourceType"},
	} {
		if a := do(t, "GET", srv.URL+tt.path+api, nil); a.status != tt.status || a.code() != tt.code {
			t.Errorf("GET %s: %d %s", tt.path, a.status, a.body)
		}
	}
}

func TestListPaging(t *testing.T) {
	_, srv := start(t, armsim.Options{PageSize: 3, PathPrefix: "/_arm"})
	url := srv.URL + "/_arm/subscriptions/" + armsim.DemoSubscription + "/providers/Microsoft.Compute/virtualMachines" + api
	var names []string
	for pages := 0; url != ""; pages++ {
		if pages > 3 {
			t.Fatal("too many pages")
		}
		a := do(t, "GET", url, nil)
		var page struct {
			Value []struct {
				Name string `json:"name"`
			} `json:"value"`
			NextLink string `json:"nextLink"`
		}
		if err := json.Unmarshal(a.body, &page); err != nil || a.status != 200 {
			t.Fatalf("%d %s", a.status, a.body)
		}
		for _, v := range page.Value {
			names = append(names, v.Name)
		}
		if page.NextLink != "" && !strings.HasPrefix(page.NextLink, srv.URL+"/_arm/") {
			t.Fatalf("nextLink %q is not absolute under the prefix", page.NextLink)
		}
		url = page.NextLink
	}
	if len(names) != 4 {
		t.Errorf("listed %v", names)
	}
}

func TestPutRuleValidation(t *testing.T) {
	tests := []struct {
		name   string
		rule   string
		body   map[string]any
		status int
		code   string
	}{
		{"valid", "jit-a", ruleBody(1000, nil), 201, ""},
		{"priority below 100", "jit-a", ruleBody(99, nil), 400, "SecurityRuleInvalidPriority"},
		{"priority above 4096", "jit-a", ruleBody(4097, nil), 400, "SecurityRuleInvalidPriority"},
		{"priority missing", "jit-a", ruleBody(0, func(p map[string]any) { delete(p, "priority") }), 400, "SecurityRuleParameterMissing"},
		{"duplicate priority same direction", "jit-a", ruleBody(300, nil), 400, "SecurityRuleConflict"},
		{"same priority other direction", "jit-a", ruleBody(300, func(p map[string]any) { p["direction"] = "Outbound" }), 201, ""},
		{"name too long", strings.Repeat("a", 81), ruleBody(1000, nil), 400, "InvalidResourceName"},
		{"bad access", "jit-a", ruleBody(1000, func(p map[string]any) { p["access"] = "Maybe" }), 400, "SecurityRuleInvalidAccess"},
		{"bad direction", "jit-a", ruleBody(1000, func(p map[string]any) { p["direction"] = "Sideways" }), 400, "SecurityRuleInvalidDirection"},
		{"bad protocol", "jit-a", ruleBody(1000, func(p map[string]any) { p["protocol"] = "Sctp" }), 400, "SecurityRuleInvalidProtocol"},
		{"Icmp", "jit-a", ruleBody(1000, func(p map[string]any) { p["protocol"] = "Icmp" }), 201, ""},
		{"plural forms", "jit-a", ruleBody(1000, func(p map[string]any) {
			delete(p, "sourceAddressPrefix")
			delete(p, "destinationPortRange")
			p["sourceAddressPrefixes"] = []string{"203.0.113.7", "198.51.100.0/24"}
			p["destinationPortRanges"] = []string{"22", "3389", "5985-5986"}
		}), 201, ""},
		{"single and plural", "jit-a", ruleBody(1000, func(p map[string]any) { p["sourceAddressPrefixes"] = []string{"198.51.100.1"} }), 400, "SecurityRuleParameterContainsMultipleValues"},
		{"bad port", "jit-a", ruleBody(1000, func(p map[string]any) { p["destinationPortRange"] = "70000" }), 400, "SecurityRuleInvalidParameter"},
		{"bad JSON", "jit-a", nil, 400, "InvalidRequestContent"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, srv := start(t, armsim.Options{})
			var body any = tt.body
			if tt.body == nil {
				body = "not an object"
			}
			a := do(t, "PUT", srv.URL+nsgVMNIC+"/securityRules/"+tt.rule+api, body)
			if a.status != tt.status || a.code() != tt.code {
				t.Fatalf("%d %s, want %d %s", a.status, a.body, tt.status, tt.code)
			}
			if tt.status == 201 && !strings.HasPrefix(a.header.Get("Azure-AsyncOperation"), srv.URL+"/subscriptions/") {
				t.Errorf("Azure-AsyncOperation %q is not absolute", a.header.Get("Azure-AsyncOperation"))
			}
		})
	}
	_, srv := start(t, armsim.Options{})
	a := do(t, "PUT", srv.URL+armsim.DemoID("Microsoft.Network/networkSecurityGroups", "nope")+"/securityRules/jit-a"+api, ruleBody(1000, nil))
	if a.status != 404 || a.code() != "ResourceNotFound" {
		t.Errorf("PUT into missing NSG: %d %s", a.status, a.body)
	}
}

func TestRuleLimit(t *testing.T) {
	sim, srv := start(t, armsim.Options{})
	for i := 0; i < armsim.MaxRulesPerNSG-1; i++ { // allow-https is the 1000th
		err := sim.AddRule(nsgVMNIC, armnetwork.SecurityRule{Name: to.Ptr(fmt.Sprintf("r%d", i)), Properties: &armnetwork.SecurityRulePropertiesFormat{
			Access: to.Ptr(armnetwork.SecurityRuleAccessDeny), Direction: to.Ptr(armnetwork.SecurityRuleDirectionOutbound),
			Priority: to.Ptr(int32(100 + i)), Protocol: to.Ptr(armnetwork.SecurityRuleProtocolAsterisk),
			SourceAddressPrefix: to.Ptr("*"), SourcePortRange: to.Ptr("*"), DestinationAddressPrefix: to.Ptr("*"), DestinationPortRange: to.Ptr("*"),
		}})
		if err != nil {
			t.Fatal(err)
		}
	}
	if a := do(t, "PUT", srv.URL+nsgVMNIC+"/securityRules/one-too-many"+api, ruleBody(1000, nil)); a.status != 400 || a.code() != "SecurityRuleCountLimitReached" {
		t.Errorf("1001st rule: %d %s", a.status, a.body)
	}
}

func TestWriteLifecycleOverHTTP(t *testing.T) {
	var mu sync.Mutex
	var changes []armsim.Change
	sim, srv := start(t, armsim.Options{PathPrefix: "/_arm", InProgressPolls: 1, OnChange: func(c armsim.Change) {
		mu.Lock()
		defer mu.Unlock()
		changes = append(changes, c)
	}})
	base := srv.URL + "/_arm"
	etag := func() string {
		var n armnetwork.SecurityGroup
		_ = json.Unmarshal(do(t, "GET", base+nsgVMNIC+api, nil).body, &n)
		return *n.Etag
	}
	e0 := etag()
	a := do(t, "PUT", base+nsgVMNIC+"/securityRules/jit-a"+api, ruleBody(1000, nil))
	op := a.header.Get("Azure-AsyncOperation")
	if a.status != 201 || !strings.HasPrefix(op, base+"/subscriptions/") {
		t.Fatalf("PUT: %d %q %s", a.status, op, a.body)
	}
	if p := do(t, "GET", op, nil); !strings.Contains(string(p.body), "InProgress") || p.header.Get("Retry-After-Ms") == "" {
		t.Errorf("first poll: %s %v", p.body, p.header)
	}
	if p := do(t, "GET", op, nil); string(p.body) != `{"status":"Succeeded"}` {
		t.Errorf("second poll: %s", p.body)
	}
	e1 := etag()
	if a := do(t, "PUT", base+nsgVMNIC+"/securityRules/jit-a"+api, ruleBody(1001, nil)); a.status != 200 {
		t.Errorf("update: %d %s", a.status, a.body)
	}
	if e2 := etag(); e0 == e1 || e1 == e2 {
		t.Errorf("etags did not change on write: %s %s %s", e0, e1, e2)
	}
	a = do(t, "DELETE", base+nsgVMNIC+"/securityRules/jit-a"+api, nil)
	loc := a.header.Get("Location")
	if a.status != 202 || !strings.HasPrefix(loc, base+"/") {
		t.Fatalf("DELETE: %d %q", a.status, loc)
	}
	if p := do(t, "GET", loc, nil); p.status != 202 {
		t.Errorf("first Location poll: %d", p.status)
	}
	if p := do(t, "GET", loc, nil); p.status != 204 {
		t.Errorf("second Location poll: %d", p.status)
	}
	if a := do(t, "DELETE", base+nsgVMNIC+"/securityRules/jit-a"+api, nil); a.status != 204 {
		t.Errorf("DELETE of a missing rule: %d", a.status)
	}
	c := sim.Calls()
	if c.ByKind["PUT securityRules"] != 2 || c.ByKind["DELETE securityRules"] != 2 || c.Polls != 4 {
		t.Errorf("calls: %+v", c)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(changes) != 3 || changes[2].Operation != "delete" || !strings.HasSuffix(changes[0].ID, "/securityRules/jit-a") {
		t.Errorf("changes: %+v", changes)
	}
}

func TestFaults(t *testing.T) {
	sim, srv := start(t, armsim.Options{})
	sim.FailNext(armsim.Writes, 1, armsim.Throttled(1500*time.Millisecond))
	sim.FailNext(armsim.Writes, 1, armsim.AnotherOperationInProgress())
	if a := do(t, "GET", srv.URL+nsgVMNIC+api, nil); a.status != 200 {
		t.Errorf("a read hit a write fault: %d", a.status)
	}
	a := do(t, "PUT", srv.URL+nsgVMNIC+"/securityRules/jit-a"+api, ruleBody(1000, nil))
	if a.status != 429 || a.header.Get("Retry-After") != "2" || a.header.Get("Retry-After-Ms") != "1500" {
		t.Errorf("throttle: %d %v", a.status, a.header)
	}
	if a := do(t, "PUT", srv.URL+nsgVMNIC+"/securityRules/jit-a"+api, ruleBody(1000, nil)); a.status != 409 || a.code() != "AnotherOperationInProgress" {
		t.Errorf("busy: %d %s", a.status, a.body)
	}
	sim.FailNext(armsim.Writes, 1, armsim.LROFailed("CanceledAndSupersededDueToAnotherOperation"))
	a = do(t, "PUT", srv.URL+nsgVMNIC+"/securityRules/jit-a"+api, ruleBody(1000, nil))
	if p := do(t, "GET", a.header.Get("Azure-AsyncOperation"), nil); !strings.Contains(string(p.body), `"Failed"`) || !strings.Contains(string(p.body), "CanceledAndSuperseded") {
		t.Errorf("failed operation: %s", p.body)
	}
	if _, ok := sim.RuleJSON(nsgVMNIC, "jit-a"); ok {
		t.Error("a failed operation changed the NSG")
	}
	if c := sim.Calls(); c.Faults != 3 {
		t.Errorf("faults %d, want 3", c.Faults)
	}

	// Chaos with one seed is reproducible.
	run := func() []int {
		s, srv := start(t, armsim.Options{})
		s.SetChaos(&armsim.Chaos{Seed: 42, Target: armsim.Reads, Faults: []armsim.ChaosFault{{Probability: 0.5, Fault: armsim.InternalServerError()}}})
		var out []int
		for i := 0; i < 20; i++ {
			out = append(out, do(t, "GET", srv.URL+nsgVMNIC+api, nil).status)
		}
		return out
	}
	if a, b := run(), run(); fmt.Sprint(a) != fmt.Sprint(b) || !strings.Contains(fmt.Sprint(a), "500") || !strings.Contains(fmt.Sprint(a), "200") {
		t.Errorf("chaos runs differ or are one-sided: %v %v", a, b)
	}
}

// The real SDK's pollers must complete against the simulator, under a prefix
// and with InProgress answers first.
func TestSDKPollersComplete(t *testing.T) {
	_, srv := start(t, armsim.Options{PathPrefix: "/_arm", InProgressPolls: 2})
	co := &arm.ClientOptions{ClientOptions: azcore.ClientOptions{
		Cloud:                           cloud.Configuration{Services: map[cloud.ServiceName]cloud.ServiceConfiguration{cloud.ResourceManager: {Endpoint: srv.URL + "/_arm", Audience: "https://management.azure.com"}}},
		InsecureAllowCredentialWithHTTP: true,
	}}
	rules, err := armnetwork.NewSecurityRulesClient(armsim.DemoSubscription, &azfake.TokenCredential{}, co)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	poller, err := rules.BeginCreateOrUpdate(ctx, "demo", "nsg-vm-nic", "jit-sdk", armnetwork.SecurityRule{Properties: &armnetwork.SecurityRulePropertiesFormat{
		Access: to.Ptr(armnetwork.SecurityRuleAccessAllow), Direction: to.Ptr(armnetwork.SecurityRuleDirectionInbound),
		Priority: to.Ptr[int32](1000), Protocol: to.Ptr(armnetwork.SecurityRuleProtocolTCP),
		SourceAddressPrefixes: to.SliceOfPtrs("203.0.113.7", "203.0.113.8"), SourcePortRange: to.Ptr("*"),
		DestinationAddressPrefix: to.Ptr("10.10.1.4"), DestinationPortRange: to.Ptr("22"),
	}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := poller.PollUntilDone(ctx, &runtime.PollUntilDoneOptions{Frequency: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if *res.Properties.ProvisioningState != armnetwork.ProvisioningStateSucceeded || len(res.Properties.SourceAddressPrefixes) != 2 || res.Etag == nil {
		t.Errorf("result %+v", res.Properties)
	}
	del, err := rules.BeginDelete(ctx, "demo", "nsg-vm-nic", "jit-sdk", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := del.PollUntilDone(ctx, &runtime.PollUntilDoneOptions{Frequency: time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	if _, err := rules.Get(ctx, "demo", "nsg-vm-nic", "jit-sdk", nil); err == nil {
		t.Error("rule still there after delete")
	}
}

func TestSnapshotRoundTrip(t *testing.T) {
	sim, srv := start(t, armsim.Options{})
	if a := do(t, "PUT", srv.URL+nsgVMNIC+"/securityRules/jit-a"+api, ruleBody(1000, nil)); a.status != 201 {
		t.Fatal(a.status)
	}
	snap, err := sim.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	copySim, copySrv := start(t, armsim.Options{Empty: true})
	if err := copySim.Load(bytes.NewReader(snap)); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{nsgVMNIC, armsim.DemoID("Microsoft.Network/virtualNetworks", "demo-vnet"), armsim.DemoID("Microsoft.Compute/virtualMachines", "vm-both-nsg")} {
		a, b := do(t, "GET", srv.URL+id+api, nil), do(t, "GET", copySrv.URL+id+api, nil)
		if a.status != 200 || !bytes.Equal(a.body, b.body) {
			t.Errorf("%s differs after Snapshot/Load:\n%s\n%s", id, a.body, b.body)
		}
	}
}

// A whole NSG written back unchanged but for one rule keeps the other
// rules as they were, etags included, whether they came from the compact
// estate or from a snapshot.
func TestPutWholeNSG(t *testing.T) {
	snapshot, err := armsim.New(armsim.Options{}).Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		start func(*armsim.Server) error
	}{
		{"demo estate", func(*armsim.Server) error { return nil }},
		{"from a snapshot", func(sim *armsim.Server) error { return sim.Load(bytes.NewReader(snapshot)) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sim, srv := start(t, armsim.Options{})
			if err := tc.start(sim); err != nil {
				t.Fatal(err)
			}
			before := do(t, "GET", srv.URL+nsgVMNIC+"/securityRules/allow-https"+api, nil).body
			var nsg map[string]any
			_ = json.Unmarshal(do(t, "GET", srv.URL+nsgVMNIC+api, nil).body, &nsg)
			props := nsg["properties"].(map[string]any)
			props["securityRules"] = append(props["securityRules"].([]any), map[string]any{"name": "hand-made", "properties": ruleBody(500, nil)["properties"]})
			if a := do(t, "PUT", srv.URL+nsgVMNIC+api, nsg); a.status != 200 {
				t.Fatalf("PUT NSG: %d %s", a.status, a.body)
			}
			if a := do(t, "GET", srv.URL+nsgVMNIC+"/securityRules/hand-made"+api, nil); a.status != 200 {
				t.Errorf("hand-made rule: %d", a.status)
			}
			if after := do(t, "GET", srv.URL+nsgVMNIC+"/securityRules/allow-https"+api, nil).body; !bytes.Equal(before, after) {
				t.Errorf("unchanged rule was rewritten:\n%s\n%s", before, after)
			}
		})
	}
}

func TestRoleAction(t *testing.T) {
	for kind, want := range map[string]string{
		"GET virtualMachines":          "Microsoft.Compute/virtualMachines/read",
		"LIST networkInterfaces":       "Microsoft.Network/networkInterfaces/read",
		"GET subnets":                  "Microsoft.Network/virtualNetworks/subnets/read",
		"PUT securityRules":            "Microsoft.Network/networkSecurityGroups/securityRules/write",
		"DELETE securityRules":         "Microsoft.Network/networkSecurityGroups/securityRules/delete",
		"PUT networkSecurityGroups":    "Microsoft.Network/networkSecurityGroups/write",
		"POLL operations":              "Microsoft.Network/locations/operations/read",
		"POLL operationResults":        "Microsoft.Network/locations/operationResults/read",
		"PUT virtualMachines":          "",
		"DELETE subnets":               "",
		"GET applicationSecurityGroup": "",
		"virtualMachines":              "",
	} {
		got, ok := armsim.RoleAction(kind)
		if got != want || ok != (want != "") {
			t.Errorf("RoleAction(%q) = %q, %v; want %q", kind, got, ok, want)
		}
	}
}

// Save keeps a snapshot and a journal of changes; LoadFile must give back
// exactly the estate that was saved, whatever changed in between: rules
// written and deleted, a VM's tags, a VM deleted.
func TestSaveJournalRoundTrip(t *testing.T) {
	sim, srv := start(t, armsim.Options{})
	path := filepath.Join(t.TempDir(), "estate.json")
	save := func() {
		t.Helper()
		if err := sim.Save(path); err != nil {
			t.Fatal(err)
		}
	}
	save() // the snapshot
	snapshot, _ := os.ReadFile(path)
	if a := do(t, "PUT", srv.URL+nsgVMNIC+"/securityRules/jit-a"+api, ruleBody(1000, nil)); a.status != 201 {
		t.Fatal(a.status)
	}
	save()
	if a := do(t, "PUT", srv.URL+nsgVMNIC+"/securityRules/jit-b"+api, ruleBody(1001, nil)); a.status != 201 {
		t.Fatal(a.status)
	}
	if a := do(t, "DELETE", srv.URL+nsgVMNIC+"/securityRules/jit-a"+api, nil); a.status/100 != 2 {
		t.Fatal(a.status)
	}
	vm := armsim.DemoID("Microsoft.Compute/virtualMachines", "vm-both-nsg")
	if _, err := sim.SetVMTags(vm, map[string]*string{"jit-policy": to.Ptr("auto")}); err != nil {
		t.Fatal(err)
	}
	if err := sim.DeleteVM(armsim.DemoID("Microsoft.Compute/virtualMachines", "vm-no-nsg")); err != nil {
		t.Fatal(err)
	}
	if _, err := sim.Snapshot(); err != nil { // reading the estate must not disturb saving it
		t.Fatal(err)
	}
	save()
	if now, _ := os.ReadFile(path); !bytes.Equal(now, snapshot) {
		t.Error("small changes rewrote the snapshot instead of appending to the journal")
	}
	// jit-a's NSG after the first save; the NSG again, a VM's tags and a VM
	// deleted after the second.
	if j, _ := os.ReadFile(path + ".journal"); bytes.Count(j, []byte("\n")) != 4 {
		t.Errorf("journal has %d lines, want 4, one per resource changed since each save:\n%s", bytes.Count(j, []byte("\n")), j)
	}
	load := func() *armsim.Server {
		t.Helper()
		c := armsim.New(armsim.Options{Empty: true})
		if err := c.LoadFile(path); err != nil {
			t.Fatal(err)
		}
		return c
	}
	want, _ := sim.Snapshot()
	if got, _ := load().Snapshot(); !bytes.Equal(got, want) {
		t.Errorf("estate after LoadFile differs from the saved one:\n%s\nwant\n%s", got, want)
	}

	// A torn last line (a crash mid-append) and a line of another snapshot's
	// generation are ignored.
	f, err := os.OpenFile(path+".journal", os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(f, "{\"generation\":1,\"id\":%q,\"resource\":null}\n{\"generation\":", nsgVMNIC)
	f.Close()
	if got, _ := load().Snapshot(); !bytes.Equal(got, want) {
		t.Errorf("a stale or torn journal line changed the estate:\n%s", got)
	}
	// After a load the next save is a new snapshot with an empty journal.
	sim2 := load()
	if err := sim2.Save(path); err != nil {
		t.Fatal(err)
	}
	if j, _ := os.ReadFile(path + ".journal"); len(j) != 0 {
		t.Errorf("journal not restarted with the new snapshot: %d bytes", len(j))
	}
	if got, _ := load().Snapshot(); !bytes.Equal(got, want) {
		t.Errorf("estate after a new snapshot differs")
	}
}

// restarted is a new simulator loaded from the estate Save wrote at path.
func restarted(t *testing.T, path string) *armsim.Server {
	t.Helper()
	c := armsim.New(armsim.Options{Empty: true})
	if err := c.LoadFile(path); err != nil {
		t.Fatal(err)
	}
	return c
}

// sameEstate fails the test unless a simulator restarted from path holds
// exactly sim's estate.
func sameEstate(t *testing.T, sim *armsim.Server, path string) {
	t.Helper()
	want, err := sim.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := restarted(t, path).Snapshot(); !bytes.Equal(got, want) {
		t.Errorf("estate after a restart differs from the simulator's:\n%s\nwant\n%s", got, want)
	}
}

// journalIDs returns the ids of the journal's lines, and "-" after those of
// deleted resources.
func journalIDs(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path + ".journal")
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for line := range bytes.Lines(b) {
		var l struct {
			ID       string
			Resource json.RawMessage
		}
		if err := json.Unmarshal(line, &l); err != nil {
			t.Fatalf("journal line %q: %v", line, err)
		}
		if string(l.Resource) == "null" {
			l.ID += " -"
		}
		ids = append(ids, l.ID)
	}
	return ids
}

// Save journals the resources that changed since the last save and nothing
// else: each step below adds the lines it names, and a restart from disk
// reproduces the estate after every step.
func TestSaveJournalsWhatChanged(t *testing.T) {
	sim, srv := start(t, armsim.Options{})
	path := filepath.Join(t.TempDir(), "estate.json")
	vmBoth := armsim.DemoID("Microsoft.Compute/virtualMachines", "vm-both-nsg")
	vmNone := armsim.DemoID("Microsoft.Compute/virtualMachines", "vm-no-nsg")
	nsgNew := armsim.DemoID("Microsoft.Network/networkSecurityGroups", "nsg-new")
	lower := strings.ToLower
	steps := []struct {
		name     string
		change   func()
		snapshot bool     // the save writes a new snapshot, and starts the journal again
		lines    []string // the journal's new lines
	}{
		{name: "first save", snapshot: true},
		{name: "nothing changed", change: func() {}},
		{name: "rule written", change: func() {
			if a := do(t, "PUT", srv.URL+nsgVMNIC+"/securityRules/jit-a"+api, ruleBody(1000, nil)); a.status != 201 {
				t.Fatalf("PUT rule: %d %s", a.status, a.body)
			}
		}, lines: []string{nsgVMNIC}},
		{name: "two writes to one NSG", change: func() {
			if a := do(t, "PUT", srv.URL+nsgVMNIC+"/securityRules/jit-b"+api, ruleBody(1001, nil)); a.status != 201 {
				t.Fatalf("PUT rule: %d %s", a.status, a.body)
			}
			if a := do(t, "DELETE", srv.URL+nsgVMNIC+"/securityRules/jit-a"+api, nil); a.status != 202 {
				t.Fatalf("DELETE rule: %d %s", a.status, a.body)
			}
		}, lines: []string{nsgVMNIC}},
		{name: "rule deleted", change: func() {
			if a := do(t, "DELETE", srv.URL+nsgVMNIC+"/securityRules/jit-b"+api, nil); a.status != 202 {
				t.Fatalf("DELETE rule: %d %s", a.status, a.body)
			}
		}, lines: []string{nsgVMNIC}},
		{name: "VM tagged", change: func() {
			if _, err := sim.SetVMTags(vmBoth, map[string]*string{"jit-policy": to.Ptr("auto")}); err != nil {
				t.Fatal(err)
			}
		}, lines: []string{vmBoth}},
		{name: "VM deleted", change: func() {
			if err := sim.DeleteVM(vmNone); err != nil {
				t.Fatal(err)
			}
		}, lines: []string{lower(vmNone) + " -"}},
		{name: "NSG created", change: func() { // re-links back-references, so a snapshot
			if a := do(t, "PUT", srv.URL+nsgNew+api, map[string]any{"location": armsim.DemoLocation}); a.status != 201 {
				t.Fatalf("PUT NSG: %d %s", a.status, a.body)
			}
		}, snapshot: true},
		{name: "NSG replaced whole", change: func() {
			var nsg map[string]any
			_ = json.Unmarshal(do(t, "GET", srv.URL+nsgNew+api, nil).body, &nsg)
			nsg["tags"] = map[string]string{"owner": "someone"}
			if a := do(t, "PUT", srv.URL+nsgNew+api, nsg); a.status != 200 {
				t.Fatalf("PUT NSG: %d %s", a.status, a.body)
			}
		}, lines: []string{nsgNew}},
		{name: "rule added behind the service's back", change: func() {
			rule := armnetwork.SecurityRule{Name: to.Ptr("by-hand"), Properties: &armnetwork.SecurityRulePropertiesFormat{
				Access: to.Ptr(armnetwork.SecurityRuleAccessDeny), Direction: to.Ptr(armnetwork.SecurityRuleDirectionInbound),
				Protocol: to.Ptr(armnetwork.SecurityRuleProtocolAsterisk), Priority: to.Ptr[int32](4000),
				SourcePortRange: to.Ptr("*"), DestinationPortRange: to.Ptr("*"),
				SourceAddressPrefix: to.Ptr("*"), DestinationAddressPrefix: to.Ptr("*")}}
			if err := sim.AddRule(nsgNew, rule); err != nil {
				t.Fatal(err)
			}
		}, lines: []string{nsgNew}},
		{name: "NSG deleted", change: func() {
			if a := do(t, "DELETE", srv.URL+nsgNew+api, nil); a.status != 202 {
				t.Fatalf("DELETE NSG: %d %s", a.status, a.body)
			}
		}, lines: []string{lower(nsgNew) + " -"}},
		{name: "written and deleted between saves", change: func() {
			rule := ruleBody(1002, nil)
			if a := do(t, "PUT", srv.URL+nsgVMNIC+"/securityRules/jit-c"+api, rule); a.status != 201 {
				t.Fatalf("PUT rule: %d %s", a.status, a.body)
			}
			if a := do(t, "DELETE", srv.URL+nsgVMNIC+"/securityRules/jit-c"+api, nil); a.status != 202 {
				t.Fatalf("DELETE rule: %d %s", a.status, a.body)
			}
		}, lines: []string{nsgVMNIC}},
	}
	var journal []string
	snapshot, _ := os.ReadFile(path)
	for _, step := range steps {
		if step.change != nil {
			step.change()
		}
		if _, err := sim.Snapshot(); err != nil { // reading the estate must not disturb saving it
			t.Fatal(err)
		}
		if err := sim.Save(path); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		now, _ := os.ReadFile(path)
		if wrote := !bytes.Equal(now, snapshot); wrote != step.snapshot {
			t.Errorf("%s: snapshot written %v, want %v", step.name, wrote, step.snapshot)
		}
		if step.snapshot {
			snapshot, journal = now, nil
		}
		journal = append(journal, step.lines...)
		if got := journalIDs(t, path); !slices.Equal(got, journal) {
			t.Errorf("%s: journal holds\n%q\nwant\n%q", step.name, got, journal)
		}
		sameEstate(t, sim, path)
	}
}

// A save that does not reach the disk leaves the estate on disk as the last
// good save wrote it, and the next save writes a whole new snapshot: the
// cache of what was saved is forgotten, so no change is lost.
func TestSaveAfterFailedWrite(t *testing.T) {
	for _, tc := range []struct {
		name    string
		blocked string // a directory in the way of this file makes the save fail
		change  func(t *testing.T, srv string)
	}{
		{"journal append", ".journal", func(t *testing.T, srv string) {
			if a := do(t, "PUT", srv+nsgVMNIC+"/securityRules/jit-a"+api, ruleBody(1000, nil)); a.status != 201 {
				t.Fatalf("PUT rule: %d %s", a.status, a.body)
			}
		}},
		{"snapshot", ".tmp", func(t *testing.T, srv string) {
			nsg := armsim.DemoID("Microsoft.Network/networkSecurityGroups", "nsg-new")
			if a := do(t, "PUT", srv+nsg+api, map[string]any{"location": armsim.DemoLocation}); a.status != 201 {
				t.Fatalf("PUT NSG: %d %s", a.status, a.body)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sim, srv := start(t, armsim.Options{})
			path := filepath.Join(t.TempDir(), "estate.json")
			if err := sim.Save(path); err != nil {
				t.Fatal(err)
			}
			before, _ := sim.Snapshot()
			blocker := path + tc.blocked
			if err := os.RemoveAll(blocker); err != nil {
				t.Fatal(err)
			}
			if err := os.Mkdir(blocker, 0o700); err != nil {
				t.Fatal(err)
			}
			tc.change(t, srv.URL)
			if err := sim.Save(path); err == nil {
				t.Fatal("Save succeeded with a directory in its way")
			}
			if err := os.Remove(blocker); err != nil {
				t.Fatal(err)
			}
			if got, _ := restarted(t, path).Snapshot(); !bytes.Equal(got, before) {
				t.Error("a failed save changed the estate on disk")
			}
			snapshot, _ := os.ReadFile(path)
			if a := do(t, "PUT", srv.URL+nsgVMNIC+"/securityRules/jit-b"+api, ruleBody(1001, nil)); a.status != 201 {
				t.Fatalf("PUT rule: %d %s", a.status, a.body)
			}
			if err := sim.Save(path); err != nil {
				t.Fatal(err)
			}
			if now, _ := os.ReadFile(path); bytes.Equal(now, snapshot) {
				t.Error("the save after a failed one appended to the journal instead of writing a snapshot")
			}
			sameEstate(t, sim, path)
		})
	}
}

// Writers that save after each write, as local mode's OnChange hook does,
// leave every write on disk however their saves interleave.
func TestSaveConcurrentWriters(t *testing.T) {
	path := filepath.Join(t.TempDir(), "estate.json")
	var sim *armsim.Server
	saveErr := make(chan error, 1)
	sim, srv := start(t, armsim.Options{OnChange: func(armsim.Change) {
		if err := sim.Save(path); err != nil {
			select {
			case saveErr <- err:
			default:
			}
		}
	}})
	nsgs := []string{nsgVMNIC, armsim.DemoID("Microsoft.Network/networkSecurityGroups", "nsg-subnet-protected")}
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 25 {
				rule := fmt.Sprintf("%s/securityRules/jit-%d-%d", nsgs[w%2], w, i)
				if a := do(t, "PUT", srv.URL+rule+api, ruleBody(1000+w*100+i, nil)); a.status != 201 {
					t.Errorf("PUT %s: %d %s", rule, a.status, a.body)
				}
				if i%5 == 4 {
					vm := armsim.DemoID("Microsoft.Compute/virtualMachines", "vm-both-nsg")
					if _, err := sim.SetVMTags(vm, map[string]*string{"writer": to.Ptr(fmt.Sprint(w, i))}); err != nil {
						t.Error(err)
					}
				}
			}
		})
	}
	wg.Wait()
	select {
	case err := <-saveErr:
		t.Fatal(err)
	default:
	}
	sameEstate(t, sim, path)
}
