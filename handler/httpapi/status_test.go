package httpapi_test

import (
	"encoding/json"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v9"

	"jitaccess/handler/armsim"
	"jitaccess/handler/jit"
)

// denyRules returns the names of this deployment's deny rules in the NSG.
func (s *stack) denyRules(nsg string) []string {
	var out []string
	for _, name := range s.sim.RuleNames(nsgID(nsg)) {
		r, _ := s.rule(nsg, name)
		if strings.HasPrefix(name, "jit-deny-") && r.Properties != nil && strings.HasPrefix(deref(r.Properties.Description), "[jit:"+jit.DefaultDeployment+"] ") {
			out = append(out, name)
		}
	}
	return out
}

// lockedInARM reports whether ARM, read now, has a deny rule of ours in
// the NSG closing TCP port to ip from anywhere.
func (s *stack) lockedInARM(nsg string, port int, ip string) bool {
	a := netip.MustParseAddr(ip)
	for _, name := range s.denyRules(nsg) {
		r, _ := s.rule(nsg, name)
		p := r.Properties
		srcPorts := append([]*string{p.SourcePortRange}, p.SourcePortRanges...)
		if *p.Access != armnetwork.SecurityRuleAccessDeny || *p.Direction != armnetwork.SecurityRuleDirectionInbound ||
			!slices.ContainsFunc(srcPorts, func(x *string) bool { return x != nil && *x == "*" }) {
			continue
		}
		ports := append([]*string{p.DestinationPortRange}, p.DestinationPortRanges...)
		dests := append([]*string{p.DestinationAddressPrefix}, p.DestinationAddressPrefixes...)
		if slices.ContainsFunc(ports, func(x *string) bool { return x != nil && (*x == "*" || *x == itoa(port)) }) &&
			slices.ContainsFunc(dests, func(x *string) bool {
				if x == nil {
					return false
				}
				pf, err := netip.ParsePrefix(*x)
				if err != nil {
					if ad, err := netip.ParseAddr(*x); err == nil {
						pf = netip.PrefixFrom(ad, ad.BitLen())
					} else {
						return false
					}
				}
				return pf.Contains(a)
			}) {
			return true
		}
	}
	return false
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

type vmView struct {
	Name     string   `json:"name"`
	State    string   `json:"state"`
	Reason   string   `json:"reason"`
	Warnings []string `json:"warnings"`
	IPs      []string `json:"privateIpAddresses"`
	NSGs     []struct {
		ID string `json:"id"`
	} `json:"networkSecurityGroups"`
}

// vm reads one VM's status and checks it does not lie: Configured only
// when ARM, read right after, locks port 22 to every IP of it in every NSG.
func (s *stack) vm(name string) vmView {
	s.t.Helper()
	var out struct{ Value []vmView }
	s.must(200, nil, "GET", "/api/v1/vms", nil, &out)
	for _, v := range out.Value {
		if v.Name != name {
			continue
		}
		if v.State == jit.VMConfigured {
			for _, n := range v.NSGs {
				for _, ip := range v.IPs {
					if !s.lockedInARM(n.ID[strings.LastIndexByte(n.ID, '/')+1:], 22, ip) {
						s.t.Fatalf("VM %s is called Configured while NSG %s does not deny port 22 to %s", name, n.ID, ip)
					}
				}
			}
		}
		return v
	}
	s.t.Fatalf("VM %s not listed", name)
	return vmView{}
}

// TestVMStatusNeverLies deletes and disables the deny rule by hand, with
// the repair blocked, and checks every state the VM page shows against ARM.
func TestVMStatusNeverLies(t *testing.T) {
	s := newStack(t, stackOptions{local: true})
	ctx := t.Context()
	var pol struct {
		Properties struct {
			ProvisioningState string `json:"provisioningState"`
			VirtualMachines   []struct {
				LockdownState string `json:"lockdownState"`
			} `json:"virtualMachines"`
		} `json:"properties"`
	}
	s.must(200, nil, "PUT", "/api/v1/policies/p", policyBody("vm-nic-nsg", nil), &pol)
	if ps := pol.Properties.ProvisioningState; ps != jit.PolicyUpdating && ps != jit.PolicySucceeded {
		t.Fatalf("provisioningState after PUT = %s", ps)
	}
	waitFor(t, "the lockdown", func() bool { return s.vm("vm-nic-nsg").State == jit.VMConfigured })
	s.must(200, nil, "GET", "/api/v1/policies/p", nil, &pol)
	if pol.Properties.ProvisioningState != jit.PolicySucceeded || pol.Properties.VirtualMachines[0].LockdownState != jit.VMConfigured {
		t.Fatalf("policy after the lockdown: %+v", pol.Properties)
	}
	deny := s.denyRules("nsg-vm-nic")
	if len(deny) != 1 {
		t.Fatalf("deny rules in nsg-vm-nic: %v", deny)
	}
	rules := nsgID("nsg-vm-nic") + "/securityRules/"
	forbidden := armsim.Fault{Status: http.StatusForbidden, Code: "AuthorizationFailed", Message: "The client does not have authorization to perform action."}

	// 1. Deleted by hand, the repair refused: never Configured.
	s.handEdit("DELETE", rules+deny[0], nil)
	s.sim.FailNext(armsim.Writes, 100, forbidden)
	_, _ = s.rec.Reconcile(ctx)
	v := s.vm("vm-nic-nsg")
	if v.State != jit.VMLockdownFailed || !strings.Contains(v.Reason, "deny rule missing in NSG nsg-vm-nic") || !strings.Contains(v.Reason, "repairing it failed") {
		t.Errorf("deleted deny rule, failed repair: %s %q", v.State, v.Reason)
	}
	s.sim.ClearFaults()
	if _, err := s.rec.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if v := s.vm("vm-nic-nsg"); v.State != jit.VMConfigured {
		t.Errorf("after the repair: %s %q", v.State, v.Reason)
	}

	// 2. Disabled by hand (source port 1 matches almost nothing).
	r, _ := s.rule("nsg-vm-nic", deny[0])
	r.Properties.SourcePortRange = to.Ptr("1")
	s.handEdit("PUT", rules+deny[0], map[string]any{"properties": r.Properties})
	s.sim.FailNext(armsim.Writes, 100, forbidden)
	_, _ = s.rec.Reconcile(ctx)
	if v := s.vm("vm-nic-nsg"); v.State == jit.VMConfigured {
		t.Errorf("a deny rule with source port 1 counts as a lockdown")
	}
	s.sim.ClearFaults()
	if _, err := s.rec.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.rule("nsg-vm-nic", deny[0]); deref(got.Properties.SourcePortRange) != "*" {
		t.Errorf("source port not put back: %v", deref(got.Properties.SourcePortRange))
	}
	s.vm("vm-nic-nsg")
	if d := s.auditDetails("drift"); !slices.ContainsFunc(d, func(x string) bool { return strings.Contains(x, deny[0]) }) {
		t.Errorf("no drift audit for the disabled deny rule: %v", d)
	}

	// 3. Foreign rules named like ours: never touched; a bypass is a warning.
	add := func(name, access string, priority int32, asg bool) {
		p := &armnetwork.SecurityRulePropertiesFormat{Access: to.Ptr(armnetwork.SecurityRuleAccess(access)), Direction: to.Ptr(armnetwork.SecurityRuleDirectionInbound),
			Priority: to.Ptr(priority), Protocol: to.Ptr(armnetwork.SecurityRuleProtocolAsterisk), SourceAddressPrefix: to.Ptr("*"), SourcePortRange: to.Ptr("*"),
			DestinationPortRange: to.Ptr("*"), Description: to.Ptr("network team")}
		if asg {
			p.DestinationApplicationSecurityGroups = []*armnetwork.ApplicationSecurityGroup{{ID: to.Ptr("/subscriptions/" + sub + "/resourceGroups/demo/providers/Microsoft.Network/applicationSecurityGroups/web")}}
		} else {
			p.DestinationAddressPrefix = to.Ptr("*")
		}
		if err := s.sim.AddRule(nsgID("nsg-vm-nic"), armnetwork.SecurityRule{Name: to.Ptr(name), Properties: p}); err != nil {
			t.Fatal(err)
		}
	}
	add("jit-deny-telnet-everywhere", "Deny", 250, false)
	add("jit-backdoor", "Allow", 260, false)
	add("web-asg-open", "Allow", 270, true)
	for range 2 {
		if _, err := s.rec.Reconcile(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"jit-deny-telnet-everywhere", "jit-backdoor", "web-asg-open"} {
		if got, ok := s.rule("nsg-vm-nic", name); !ok || deref(got.Properties.Description) != "network team" {
			t.Errorf("foreign rule %s was changed or deleted", name)
		}
	}
	v = s.vm("vm-nic-nsg")
	for _, name := range []string{"jit-backdoor", "web-asg-open"} {
		if !slices.ContainsFunc(v.Warnings, func(w string) bool { return strings.Contains(w, "rule "+name+" ") }) {
			t.Errorf("no warning about %s: %v", name, v.Warnings)
		}
	}
	if slices.ContainsFunc(v.Warnings, func(w string) bool { return strings.Contains(w, "telnet") }) {
		t.Errorf("a deny rule is reported as a bypass: %v", v.Warnings)
	}

	// 4. Deleting: Releasing, then gone with its deny rules.
	s.must(202, nil, "DELETE", "/api/v1/policies/p", nil, &pol)
	if pol.Properties.ProvisioningState != jit.PolicyDeleting {
		t.Errorf("provisioningState after DELETE = %s", pol.Properties.ProvisioningState)
	}
	waitFor(t, "the policy to go", func() bool {
		code, _ := s.do(nil, "GET", "/api/v1/policies/p", nil, nil)
		return code == http.StatusNotFound
	})
	if d := s.denyRules("nsg-vm-nic"); len(d) != 0 {
		t.Errorf("deny rules left after the policy went: %v", d)
	}
	if v := s.vm("vm-nic-nsg"); v.State != jit.VMNotConfigured {
		t.Errorf("after deletion: %s", v.State)
	}
}

// TestLegacyDenyRulesMigrateInOneWrite: a per-VM deny rule of an earlier
// version is replaced by the aggregated one in the same NSG write.
func TestLegacyDenyRulesMigrateInOneWrite(t *testing.T) {
	s := newStack(t, stackOptions{local: true})
	legacy := jit.LegacyDenyRuleName(vmID("vm-nic-nsg"))
	if err := s.sim.AddRule(nsgID("nsg-vm-nic"), armnetwork.SecurityRule{Name: to.Ptr(legacy), Properties: &armnetwork.SecurityRulePropertiesFormat{
		Access: to.Ptr(armnetwork.SecurityRuleAccessDeny), Direction: to.Ptr(armnetwork.SecurityRuleDirectionInbound), Priority: to.Ptr[int32](4000),
		Protocol: to.Ptr(armnetwork.SecurityRuleProtocolTCP), SourceAddressPrefix: to.Ptr("*"), SourcePortRange: to.Ptr("*"),
		DestinationAddressPrefix: to.Ptr("10.10.1.4"), DestinationPortRange: to.Ptr("22"),
		Description: to.Ptr("Managed by jitaccess: lockdown of VM vm-nic-nsg (policy p). Do not edit.")}}); err != nil {
		t.Fatal(err)
	}
	before := s.sim.Calls().Writes
	s.must(200, nil, "PUT", "/api/v1/policies/p", policyBody("vm-nic-nsg", nil), nil)
	waitFor(t, "the lockdown", func() bool { return s.vm("vm-nic-nsg").State == jit.VMConfigured })
	if _, ok := s.rule("nsg-vm-nic", legacy); ok {
		t.Errorf("the legacy deny rule %s is still there", legacy)
	}
	if len(s.denyRules("nsg-vm-nic")) != 1 {
		t.Errorf("deny rules: %v", s.denyRules("nsg-vm-nic"))
	}
	// vm-nic-nsg is behind one NSG: the migration is that one write.
	if w := s.sim.Calls().Writes - before; w != 1 {
		t.Errorf("the migration took %d writes to ARM, want 1", w)
	}
}

// TestConcurrentPolicyPuts: two policies naming one VM at once, one wins;
// the same PUT twice at once leaves one lockdown matching it.
func TestConcurrentPolicyPuts(t *testing.T) {
	s := newStack(t, stackOptions{local: true})
	for round := range 5 {
		a, b := "a"+itoa(round), "b"+itoa(round)
		var wg sync.WaitGroup
		codes := make([]int, 2)
		for i, name := range []string{a, b} {
			wg.Go(func() { codes[i], _ = s.do(nil, "PUT", "/api/v1/policies/"+name, policyBody("vm-nic-nsg", nil), nil) })
		}
		wg.Wait()
		slices.Sort(codes)
		if codes[0] != 200 || codes[1] != 409 {
			t.Fatalf("round %d: two policies naming one VM answered %v, want one 200 and one 409", round, codes)
		}
		var list struct{ Value []struct{ Name string } }
		s.must(200, nil, "GET", "/api/v1/policies", nil, &list)
		if len(list.Value) != 1 {
			t.Fatalf("round %d: %d policies stored", round, len(list.Value))
		}
		s.must(202, nil, "DELETE", "/api/v1/policies/"+list.Value[0].Name, nil, nil)
		waitFor(t, "the policy to go", func() bool {
			code, _ := s.do(nil, "GET", "/api/v1/policies/"+list.Value[0].Name, nil, nil)
			return code == http.StatusNotFound
		})
	}
	// The same new policy twice at once (a double click).
	var wg sync.WaitGroup
	codes := make([]int, 2)
	for i := range 2 {
		wg.Go(func() { codes[i], _ = s.do(nil, "PUT", "/api/v1/policies/same", policyBody("vm-nic-nsg", nil), nil) })
	}
	wg.Wait()
	if !slices.Contains(codes, 200) {
		t.Fatalf("the same PUT twice: %v", codes)
	}
	waitFor(t, "the lockdown", func() bool { return s.vm("vm-nic-nsg").State == jit.VMConfigured })
	if _, err := s.rec.Reconcile(t.Context()); err != nil {
		t.Fatal(err)
	}
	if d := s.denyRules("nsg-vm-nic"); len(d) != 1 || !s.lockedInARM("nsg-vm-nic", 22, "10.10.1.4") {
		t.Errorf("after the same PUT twice: deny rules %v", d)
	}
}

func deref(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

// TestDualStackAndIPv6Sources: a dual-stack VM gets deny rules per address
// family and protocol, an IPv6 "My IP" opens an IPv6-only allow rule, and
// an IPv6 source for an IPv4-only VM is refused before anything is stored.
func TestDualStackAndIPv6Sources(t *testing.T) {
	s := newStack(t, stackOptions{local: true})
	estate := `{"subscriptions":[{"id":"` + sub + `","resourceGroups":[{"name":"demo","location":"westeurope",
	  "networkSecurityGroups":[{"name":"nsg-dual"}],
	  "virtualNetworks":[{"name":"vnet","addressPrefixes":["10.40.0.0/16","fd00:40::/48"],"subnets":[{"name":"s","addressPrefix":"10.40.0.0/24"}]}],
	  "virtualMachines":[
	    {"name":"vm-dual","nics":[{"subnet":"vnet/s","privateIPAddress":"10.40.0.4","networkSecurityGroup":"nsg-dual"},{"subnet":"vnet/s","privateIPAddress":"fd00:40::4","networkSecurityGroup":"nsg-dual"}]},
	    {"name":"vm-v4","nics":[{"subnet":"vnet/s","privateIPAddress":"10.40.0.5","networkSecurityGroup":"nsg-dual"}]}]}]}]}`
	if err := s.sim.Load(strings.NewReader(estate)); err != nil {
		t.Fatal(err)
	}
	body := map[string]any{"properties": map[string]any{"virtualMachines": []any{
		map[string]any{"id": vmID("vm-dual"), "ports": []any{
			map[string]any{"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "*", "maxRequestAccessDuration": "PT3H"},
			map[string]any{"number": 53, "protocol": "UDP", "allowedSourceAddressPrefix": "*", "maxRequestAccessDuration": "PT3H"}}},
		map[string]any{"id": vmID("vm-v4"), "ports": []any{
			map[string]any{"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "*", "maxRequestAccessDuration": "PT3H"}}},
	}}}
	s.must(200, nil, "PUT", "/api/v1/policies/dual", body, nil)
	waitFor(t, "the lockdown", func() bool { return s.vm("vm-dual").State == jit.VMConfigured })
	family := func(p string) string {
		if strings.Contains(p, ":") {
			return "v6"
		}
		return "v4"
	}
	rulesOf := func() map[string]armnetwork.SecurityRule {
		out := map[string]armnetwork.SecurityRule{}
		for _, name := range s.sim.RuleNames(nsgID("nsg-dual")) {
			r, _ := s.rule("nsg-dual", name)
			out[name] = r
			var fams []string
			for _, p := range append(append([]*string{r.Properties.SourceAddressPrefix}, r.Properties.SourceAddressPrefixes...),
				append([]*string{r.Properties.DestinationAddressPrefix}, r.Properties.DestinationAddressPrefixes...)...) {
				if p != nil && *p != "" && *p != "*" {
					fams = append(fams, family(*p))
				}
			}
			if slices.Sort(fams); len(slices.Compact(fams)) > 1 {
				t.Errorf("rule %s mixes IPv4 and IPv6: %+v", name, r.Properties)
			}
		}
		return out
	}
	if d := s.denyRules("nsg-dual"); len(d) != 4 {
		t.Errorf("TCP 22 and UDP 53 on a dual-stack VM: deny rules %v, want 4 (two protocols × two families)", d)
	}
	for name, r := range rulesOf() {
		if strings.HasPrefix(name, "jit-deny-") && *r.Properties.Protocol == armnetwork.SecurityRuleProtocolAsterisk {
			t.Errorf("deny rule %s merges protocols (it would close TCP 53 too)", name)
		}
	}

	var req request
	ask := func(vm, src string) (int, string) {
		return s.do(nil, "POST", "/api/v1/policies/dual/initiate", map[string]any{"virtualMachines": []any{map[string]any{"id": vmID(vm), "ports": []any{
			map[string]any{"number": 22, "duration": "PT1H", "allowedSourceAddressPrefix": src}}}}, "justification": "ipv6"}, &req)
	}
	// An IPv6 "My IP": one IPv6 rule, to the VM's IPv6 address only.
	if code, raw := ask("vm-dual", "2001:db8::7"); code != 202 {
		t.Fatalf("IPv6 source: %d %s", code, raw)
	}
	v6 := req.Grants[0].RuleName + "-v6"
	waitFor(t, "the IPv6 allow rule", func() bool { _, ok := s.rule("nsg-dual", v6); return ok })
	r, _ := s.rule("nsg-dual", v6)
	if deref(r.Properties.DestinationAddressPrefix) != "fd00:40::4" && !slices.ContainsFunc(r.Properties.DestinationAddressPrefixes, func(p *string) bool { return *p == "fd00:40::4" }) {
		t.Errorf("IPv6 allow rule: %+v", r.Properties)
	}
	if _, ok := s.rule("nsg-dual", req.Grants[0].RuleName); ok {
		t.Errorf("an IPv4 rule was written for an IPv6 source")
	}
	rulesOf()
	// An IPv6 source for an IPv4-only VM: 400, nothing stored.
	var before struct{ Value []any }
	s.must(200, nil, "GET", "/api/v1/requests", nil, &before)
	code, raw := ask("vm-v4", "2001:db8::7")
	if code != 400 || !strings.Contains(raw, "other IP version") {
		t.Errorf("IPv6 source for an IPv4-only VM: %d %s", code, raw)
	}
	var after struct{ Value []any }
	s.must(200, nil, "GET", "/api/v1/requests", nil, &after)
	if len(after.Value) != len(before.Value) {
		t.Errorf("a refused request was stored")
	}
}

// TestSweepDuringLockdown: sweeps running while a lockdown is queued never
// remove its deny rules: the policy is stored before any rule is written,
// and every write brings the NSG to what the stored policies want.
func TestSweepDuringLockdown(t *testing.T) {
	s := newStack(t, stackOptions{local: true})
	ctx := t.Context()
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			_, _ = s.rec.Reconcile(ctx)
		}
	})
	body := map[string]any{"properties": map[string]any{"virtualMachines": []any{
		map[string]any{"id": vmID("vm-nic-nsg")}, map[string]any{"id": vmID("vm-both-nsg")}, map[string]any{"id": vmID("vm-subnet-nsg")}}}}
	s.must(200, nil, "PUT", "/api/v1/policies/p", body, nil)
	for _, vm := range []string{"vm-nic-nsg", "vm-both-nsg", "vm-subnet-nsg"} {
		waitFor(t, "the lockdown of "+vm, func() bool { return s.vm(vm).State == jit.VMConfigured })
	}
	close(stop)
	wg.Wait()
	if _, err := s.rec.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ nsg, ip string }{{"nsg-vm-nic", "10.10.1.4"}, {"nsg-vm-both", "10.10.2.5"}, {"nsg-subnet-protected", "10.10.2.4"}, {"nsg-subnet-protected", "10.10.2.5"}} {
		if !s.lockedInARM(c.nsg, 3389, c.ip) {
			t.Errorf("%s is not locked in %s after sweeps ran beside its lockdown", c.ip, c.nsg)
		}
	}
	if u := s.auditDetails("unlock"); len(u) > 0 {
		t.Errorf("a sweep removed a lockdown in progress: %v", u)
	}
}

// TestSweepKeepsThePolicyETag: findings (a bypass) are kept beside the
// policy, so a sweep never changes its ETag and an admin's If-Match PUT
// (the portal's "Edit ports") still succeeds after sweeps.
func TestSweepKeepsThePolicyETag(t *testing.T) {
	s := newStack(t, stackOptions{local: true})
	s.must(200, nil, "PUT", "/api/v1/policies/p", policyBody("vm-nic-nsg", nil), nil)
	waitFor(t, "the lockdown", func() bool { return s.vm("vm-nic-nsg").State == jit.VMConfigured })
	var pol struct {
		Etag string `json:"etag"`
	}
	s.must(200, nil, "GET", "/api/v1/policies/p", nil, &pol)
	before := pol.Etag
	if err := s.sim.AddRule(nsgID("nsg-vm-nic"), armnetwork.SecurityRule{Name: to.Ptr("ssh-open"), Properties: &armnetwork.SecurityRulePropertiesFormat{
		Access: to.Ptr(armnetwork.SecurityRuleAccessAllow), Direction: to.Ptr(armnetwork.SecurityRuleDirectionInbound), Priority: to.Ptr[int32](250),
		Protocol: to.Ptr(armnetwork.SecurityRuleProtocolTCP), SourceAddressPrefix: to.Ptr("*"), SourcePortRange: to.Ptr("*"),
		DestinationAddressPrefix: to.Ptr("*"), DestinationPortRange: to.Ptr("22")}}); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := s.rec.Reconcile(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	if v := s.vm("vm-nic-nsg"); len(v.Warnings) == 0 {
		t.Fatalf("the bypass was not found")
	}
	s.must(200, nil, "GET", "/api/v1/policies/p", nil, &pol)
	if pol.Etag != before {
		t.Errorf("a sweep changed the policy's ETag")
	}
	code, raw := s.do(as{"If-Match", `"` + before + `"`}, "PUT", "/api/v1/policies/p", policyBody("vm-nic-nsg", nil), nil)
	if code != 200 {
		t.Errorf("If-Match PUT after sweeps: %d %s", code, raw)
	}
}
