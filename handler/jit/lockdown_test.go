package jit

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

const testNSG = "/subscriptions/11111111-1111-1111-1111-111111111111/resourceGroups/net/providers/Microsoft.Network/networkSecurityGroups/subnet-nsg"

func testVM(i int, ips ...string) VMPolicy {
	return VMPolicy{
		ID:         fmt.Sprintf("/subscriptions/11111111-1111-1111-1111-111111111111/resourceGroups/demo/providers/Microsoft.Compute/virtualMachines/vm-%d", i),
		Name:       fmt.Sprintf("vm-%d", i),
		Ports:      []PortRule{{Number: 22, Protocol: ProtocolTCP, AllowedSources: []string{"*"}}, {Number: 3389, Protocol: ProtocolTCP, AllowedSources: []string{"*"}}},
		PrivateIPs: ips,
		NSGs:       []NSGRef{{ID: testNSG, Scope: "subnet"}},
	}
}

func testService(deployment string) *Core {
	return NewCore(nil, nil, Config{Deployment: deployment})
}

func TestLockdownOneRulePerFamilyProtocolAndPortSet(t *testing.T) {
	s := testService("blue")
	pol := Policy{Name: "web"}
	for i := range 1000 {
		pol.VMs = append(pol.VMs, testVM(i, fmt.Sprintf("10.0.%d.%d", i/250, i%250+1)))
	}
	ld := s.lockdownOf([]Policy{pol}, testNSG)
	if len(ld.rules) != 1 {
		t.Fatalf("1,000 VMs with the same ports behind one NSG need %d deny rules, want 1", len(ld.rules))
	}
	r := ld.rules[0]
	if len(r.Destinations) != 1000 || r.Protocol != "Tcp" || !slices.Equal(r.Ports, []string{"22", "3389"}) || r.Access != AccessDeny {
		t.Errorf("rule = %s %s %v with %d destinations", r.Access, r.Protocol, r.Ports, len(r.Destinations))
	}
	if !(Owner{Deployment: "blue"}).Owns(r) || (Owner{Deployment: "green"}).Owns(r) || len(r.Name) > 80 || len(r.Description) > 140 {
		t.Errorf("rule %q / %q is not marked as blue's alone", r.Name, r.Description)
	}
	for _, vm := range pol.VMs {
		if !lockedBy(vm, ld.rules) {
			t.Fatalf("VM %s is not locked by the rule", vm.Name)
		}
	}
	// Another deployment names its rule differently: no clash in one NSG.
	if other := testService("green").lockdownOf([]Policy{pol}, testNSG); other.rules[0].Name == r.Name {
		t.Errorf("two deployments share the deny rule name %s", r.Name)
	}
}

func TestLockdownSplitsProtocolsAndFamilies(t *testing.T) {
	s := testService("blue")
	vm := testVM(1, "10.0.0.4", "fd00::4")
	vm.Ports = []PortRule{{Number: 22, Protocol: ProtocolTCP}, {Number: 53, Protocol: ProtocolUDP}}
	ld := s.lockdownOf([]Policy{{Name: "p", VMs: []VMPolicy{vm}}}, testNSG)
	if len(ld.rules) != 4 {
		t.Fatalf("TCP 22 and UDP 53 on a dual-stack VM need 4 rules, got %d: %+v", len(ld.rules), ld.rules)
	}
	for _, r := range ld.rules {
		fams := map[string]bool{}
		for _, d := range r.Destinations {
			fams[family(d)] = true
		}
		if len(fams) != 1 {
			t.Errorf("rule %s mixes address families: %v", r.Name, r.Destinations)
		}
		if r.Protocol == "*" {
			t.Errorf("rule %s merges protocols", r.Name)
		}
	}
	if !lockedBy(vm, ld.rules) {
		t.Errorf("the VM is not locked")
	}
	tcp53 := vm
	tcp53.Ports = []PortRule{{Number: 53, Protocol: ProtocolTCP}}
	if lockedBy(tcp53, ld.rules) {
		t.Errorf("TCP 53 is denied though the policy names only UDP 53")
	}
}

func TestLockdownPrune(t *testing.T) {
	s := testService("blue")
	vm := testVM(1, "10.0.0.4")
	deleting := Policy{Name: "old", State: PolicyDeleting, VMs: []VMPolicy{testVM(2, "10.0.0.5")}}
	ld := s.lockdownOf([]Policy{{Name: "p", VMs: []VMPolicy{vm}}, deleting}, testNSG)
	if len(ld.rules) != 1 || slices.Contains(ld.rules[0].Destinations, "10.0.0.5") {
		t.Fatalf("a policy being deleted still gets deny rules: %+v", ld.rules)
	}
	prune := ld.prune(s.owner())
	blue, green := Owner{"blue"}, Owner{"green"}
	cases := []struct {
		rule SecurityRule
		want bool
	}{
		{ld.rules[0], false},
		{SecurityRule{Name: "jit-deny-tcp-v4-0000000000", Description: blue.describe("old port set")}, true},
		{SecurityRule{Name: "jit-deny-tcp-v4-0000000000", Description: green.describe("theirs")}, false},
		{SecurityRule{Name: "jit-deny-telnet-everywhere", Description: "network team: no telnet"}, false},
		{SecurityRule{Name: LegacyDenyRuleName(vm.ID), Description: "Managed by jitaccess: lockdown of VM vm-1 (policy p). Do not edit."}, true},
		{SecurityRule{Name: LegacyDenyRuleName(deleting.VMs[0].ID), Description: "Managed by jitaccess: lockdown"}, true},
		{SecurityRule{Name: LegacyDenyRuleName(testVM(3).ID), Description: "Managed by jitaccess: lockdown"}, false},
		{SecurityRule{Name: "jit-allow-x-0", Description: blue.describe("grant")}, false},
	}
	for _, c := range cases {
		if got := prune(c.rule); got != c.want {
			t.Errorf("prune(%s, %q) = %v, want %v", c.rule.Name, c.rule.Description, got, c.want)
		}
	}
}

func TestAllowRulesSplitByFamily(t *testing.T) {
	s := testService("blue")
	r := Request{ID: NewRequestID(), Grants: []Grant{{VM: testVM(1).ID, Protocol: ProtocolTCP, Ports: []int{22},
		Sources: []string{"2001:db8::7"}, Destinations: []string{"10.0.0.4", "fd00::4"}}}}
	rules := s.allowRules(r, 0)
	if len(rules) != 1 || !strings.HasSuffix(rules[0].Name, "-v6") || !slices.Equal(rules[0].Destinations, []string{"fd00::4"}) {
		t.Fatalf("an IPv6 source on a dual-stack VM: %+v", rules)
	}
	if id, i, ok := parseRuleName(rules[0].Name); !ok || id != r.ID || i != 0 {
		t.Errorf("parseRuleName(%s) = %s %d %v", rules[0].Name, id, i, ok)
	}
	r.Grants[0].Sources = []string{"*"}
	if rules = s.allowRules(r, 0); len(rules) != 2 || rules[0].Name != RuleName(r.ID, 0) {
		t.Fatalf("any source on a dual-stack VM: %+v", rules)
	}
	if sharesFamily([]string{"2001:db8::7"}, []string{"10.0.0.4"}) || !sharesFamily([]string{"*"}, []string{"10.0.0.4"}) {
		t.Errorf("sharesFamily")
	}
	for _, bad := range []string{"jit-allow-" + r.ID + "-01", "jit-allow-" + r.ID + "-0-v4", "jit-allow-" + r.ID} {
		if _, _, ok := parseRuleName(bad); ok {
			t.Errorf("parseRuleName(%s) accepted", bad)
		}
	}
}

func TestLimitsRefusedBeforeAnythingIsStored(t *testing.T) {
	s := testService("blue")
	var many Policy
	for i := range 97 {
		vm := testVM(i, fmt.Sprintf("10.0.1.%d", i+1))
		vm.Ports = []PortRule{{Number: 1000 + i, Protocol: ProtocolTCP}}
		many.VMs = append(many.VMs, vm)
	}
	err := s.checkLimits([]Policy{many}, []string{testNSG})
	if ErrorCode(err) != EINVALID || !strings.Contains(ErrorMessage(err), "subnet-nsg") || !strings.Contains(ErrorMessage(err), "deny band") {
		t.Errorf("97 port sets: %v", err)
	}
	var wide Policy
	for i := range 4001 {
		wide.VMs = append(wide.VMs, testVM(i, fmt.Sprintf("10.1.%d.%d", i/250, i%250+1)))
	}
	err = s.checkLimits([]Policy{wide}, []string{testNSG})
	if ErrorCode(err) != EINVALID || !strings.Contains(ErrorMessage(err), "4000") {
		t.Errorf("4,001 VMs: %v", err)
	}
	wide.VMs = wide.VMs[:4000]
	if err := s.checkLimits([]Policy{wide}, []string{testNSG}); err != nil {
		t.Errorf("4,000 VMs: %v", err)
	}
}

func TestSameRuleComparesEverything(t *testing.T) {
	s := testService("blue")
	want := s.lockdownOf([]Policy{{Name: "p", VMs: []VMPolicy{testVM(1, "10.0.0.4")}}}, testNSG).rules[0]
	have := want
	have.Priority = 4000
	if !s.sameRule(have, want) {
		t.Fatalf("the rule as written differs from itself")
	}
	for name, change := range map[string]func(*SecurityRule){
		"source port":      func(r *SecurityRule) { r.SourcePorts = []string{"1"} },
		"priority":         func(r *SecurityRule) { r.Priority = 4500 },
		"protocol":         func(r *SecurityRule) { r.Protocol = "Udp" },
		"destination ASG":  func(r *SecurityRule) { r.DestinationASGs = []string{"/asg"} },
		"destination":      func(r *SecurityRule) { r.Destinations = []string{"10.0.0.5"} },
		"access":           func(r *SecurityRule) { r.Access = AccessAllow },
		"description":      func(r *SecurityRule) { r.Description += "!" },
		"destination port": func(r *SecurityRule) { r.Ports = []string{"22"} },
	} {
		c := have
		c.SourcePorts, c.Ports, c.Destinations = slices.Clone(c.SourcePorts), slices.Clone(c.Ports), slices.Clone(c.Destinations)
		change(&c)
		if s.sameRule(c, want) {
			t.Errorf("a rule with another %s counts as the same", name)
		}
	}
}

// TestVMStatusMatrix: each state a policy VM can be in, judged only from
// what was last seen in ARM.
func TestVMStatusMatrix(t *testing.T) {
	s := testService("blue")
	t0 := time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)
	vm := testVM(1, "10.0.0.4")
	pol := Policy{Name: "p", VMs: []VMPolicy{vm}, UpdatedAt: t0}
	deny := s.lockdownOf([]Policy{pol}, testNSG).rules
	for i := range deny {
		deny[i].Priority = 4000
	}
	key := strings.ToLower(testNSG)
	foreign := func(name string, dests []string, asgs []string) SecurityRule {
		return SecurityRule{Name: name, Access: AccessAllow, Protocol: "*", Priority: 300, Ports: []string{"*"}, Sources: []string{"*"},
			Destinations: dests, DestinationASGs: asgs}
	}
	cases := []struct {
		name   string
		pol    Policy
		states map[string]NSGState
		want   string
		reason string
	}{
		{"never seen", pol, nil, VMLockdownPending, "lockdown pending in NSG subnet-nsg"},
		{"seen before the change", pol, map[string]NSGState{key: {ID: testNSG, SeenAt: t0.Add(-time.Minute)}}, VMLockdownPending, "pending"},
		{"locked", pol, map[string]NSGState{key: {ID: testNSG, SeenAt: t0.Add(time.Second), Deny: deny}}, VMConfigured, ""},
		{"locked before the change", pol, map[string]NSGState{key: {ID: testNSG, SeenAt: t0.Add(-time.Minute), Deny: deny}}, VMConfigured, ""},
		{"deny rule deleted by hand", pol, map[string]NSGState{key: {ID: testNSG, SeenAt: t0.Add(time.Minute)}}, VMDenyRuleMissing, "deny rule missing in NSG subnet-nsg (TCP 22 to 10.0.0.4 is open); repair pending"},
		{"write failed", pol, map[string]NSGState{key: {ID: testNSG, SeenAt: t0.Add(-time.Minute), Error: "SecurityRuleCountLimitReached", ErrorAt: t0.Add(time.Second)}}, VMLockdownFailed, "lockdown failed in NSG subnet-nsg: SecurityRuleCountLimitReached"},
		{"repair failed", pol, map[string]NSGState{key: {ID: testNSG, SeenAt: t0.Add(time.Second), Error: "ARM is down", ErrorAt: t0.Add(time.Minute)}}, VMLockdownFailed, "repairing it failed: ARM is down"},
		{"failed then locked", pol, map[string]NSGState{key: {ID: testNSG, SeenAt: t0.Add(time.Minute), Deny: deny, Error: "x", ErrorAt: t0.Add(time.Second)}}, VMConfigured, ""},
		{"being deleted", Policy{Name: "p", VMs: []VMPolicy{vm}, State: PolicyDeleting}, nil, VMReleasing, "being deleted"},
		{"bypassed by a rule named like ours", pol, map[string]NSGState{key: {ID: testNSG, SeenAt: t0.Add(time.Second), Deny: deny,
			Ahead: []SecurityRule{foreign("jit-backdoor", []string{"*"}, nil)}}}, VMConfigured, "rule jit-backdoor (priority 300) in NSG subnet-nsg lets TCP port 22"},
		{"bypassed through an ASG", pol, map[string]NSGState{key: {ID: testNSG, SeenAt: t0.Add(time.Second), Deny: deny,
			Ahead: []SecurityRule{foreign("web-asg", nil, []string{"/asg/web"})}}}, VMConfigured, "application security group"},
		{"bypassed through a wider prefix", pol, map[string]NSGState{key: {ID: testNSG, SeenAt: t0.Add(time.Second), Deny: deny,
			Ahead: []SecurityRule{foreign("vnet", []string{"10.0.0.0/16"}, nil)}}}, VMConfigured, "rule vnet"},
		{"a rule for another VM", pol, map[string]NSGState{key: {ID: testNSG, SeenAt: t0.Add(time.Second), Deny: deny,
			Ahead: []SecurityRule{foreign("other", []string{"10.9.0.0/16"}, nil)}}}, VMConfigured, ""},
	}
	for _, c := range cases {
		got := lockdownOfVM(c.pol, c.pol.VMs[0], c.states)
		if got.State != c.want || !strings.Contains(got.Reason, c.reason) || c.reason == "" && got.Reason != "" {
			t.Errorf("%s: %s %q, want %s %q", c.name, got.State, got.Reason, c.want, c.reason)
		}
		st := statusOf(c.pol, c.states)
		wantPol := map[string]string{VMConfigured: PolicySucceeded, VMLockdownPending: PolicyUpdating, VMDenyRuleMissing: PolicyUpdating,
			VMLockdownFailed: PolicyFailed, VMReleasing: PolicyDeleting}[c.want]
		if st.ProvisioningState != wantPol {
			t.Errorf("%s: policy %s, want %s", c.name, st.ProvisioningState, wantPol)
		}
	}
}

func TestNSGStateMerge(t *testing.T) {
	t0 := time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)
	seen := NSGState{ID: testNSG, SeenAt: t0, Deny: []SecurityRule{{Name: "a"}}}
	failed := NSGState{ID: testNSG, Error: "boom", ErrorAt: t0.Add(time.Second)}
	got := seen.Merge(failed)
	if len(got.Deny) != 1 || !got.Failing() {
		t.Fatalf("a failure drops what was seen: %+v", got)
	}
	older := NSGState{ID: testNSG, SeenAt: t0.Add(-time.Hour)}
	if got := got.Merge(older); len(got.Deny) != 1 {
		t.Errorf("an older sighting replaced a newer one")
	}
	if got := got.Merge(NSGState{ID: testNSG, SeenAt: t0.Add(time.Minute)}); got.Failing() || len(got.Deny) != 0 {
		t.Errorf("a later success leaves the failure current: %+v", got)
	}
}

// TestOwnWritesEchoedAreSkipped: Event Grid echoes every write, ours too;
// an NSG event made as our own identity costs no read and no reconcile
// (the service here has no store or network: touching either panics).
func TestOwnWritesEchoedAreSkipped(t *testing.T) {
	s := NewReconciler(NewAPI(NewCore(nil, nil, Config{Self: []string{"00000000-0000-0000-0000-0000000000C1"}}), nil), nil)
	ev := ResourceEvent{ID: "e", Type: EventWriteSuccess, Subject: testNSG + "/securityRules/jit-deny-tcp-v4-0123456789", Caller: "00000000-0000-0000-0000-0000000000c1"}
	if err := s.HandleResourceEvent(t.Context(), ev); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if recover() == nil {
			t.Errorf("an event by someone else was not reconciled")
		}
	}()
	ev.Caller = "someone-else"
	_ = s.HandleResourceEvent(t.Context(), ev)
}
