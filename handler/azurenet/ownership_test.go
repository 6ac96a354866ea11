package azurenet_test

import (
	"bytes"
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v9"

	"jitaccess/handler/armsim"
	"jitaccess/handler/azurenet"
	"jitaccess/handler/jit"
)

// addForeign adds an inbound rule someone else wrote, with a name JIT
// might use.
func addForeign(t *testing.T, sim *armsim.Server, nsgID, name, description string, access armnetwork.SecurityRuleAccess, priority int32) {
	t.Helper()
	err := sim.AddRule(nsgID, armnetwork.SecurityRule{Name: to.Ptr(name), Properties: &armnetwork.SecurityRulePropertiesFormat{
		Access: to.Ptr(access), Direction: to.Ptr(armnetwork.SecurityRuleDirectionInbound), Description: to.Ptr(description),
		Priority: to.Ptr(priority), Protocol: to.Ptr(armnetwork.SecurityRuleProtocolTCP),
		SourceAddressPrefix: to.Ptr("*"), SourcePortRange: to.Ptr("*"), DestinationAddressPrefix: to.Ptr("10.10.1.4"), DestinationPortRange: to.Ptr("22"),
	}})
	if err != nil {
		t.Fatal(err)
	}
}

// driverFor is a second driver on the simulator co reaches, writing for
// owner.
func driverFor(t *testing.T, co *arm.ClientOptions, owner jit.Owner) *azurenet.Driver {
	t.Helper()
	return newDriver(t, co, func(c *azurenet.Config) { c.Owner = owner })
}

// ruleFor is an allow rule owned by owner.
func ruleFor(owner jit.Owner, name, source string) jit.SecurityRule {
	r := allowRule(name, source)
	r.Description = owner.Marker() + "grant"
	return r
}

func names(rules []jit.SecurityRule) []string {
	var out []string
	for _, r := range rules {
		out = append(out, r.Name)
	}
	return out
}

// Rules named like JIT's but not this deployment's (no marker, another
// deployment's marker) are never changed or deleted, and are the only ones
// Prune is never asked about.
func TestForeignRulesNeverChanged(t *testing.T) {
	sim, d := newEnv(t, armsim.Options{})
	ctx := context.Background()
	addForeign(t, sim, nsgVMNIC, "jit-deny-x", "ops: keep ssh closed", armnetwork.SecurityRuleAccessDeny, azurenet.DefaultDenyMin)
	addForeign(t, sim, nsgVMNIC, "jit-allow-y", "[jit:other] grant 9", armnetwork.SecurityRuleAccessAllow, azurenet.DefaultAllowMin)
	addForeign(t, sim, nsgVMNIC, "jit-allow-legacy", "Managed by jitaccess: grant 7", armnetwork.SecurityRuleAccessAllow, azurenet.DefaultAllowMin+1)
	apply(t, d, nsgVMNIC, put(allowRule("jit-allow-mine", "203.0.113.7"), allowRule("jit-allow-kept", "203.0.113.8")))
	before := map[string][]byte{}
	for _, name := range []string{"allow-https", "jit-deny-x", "jit-allow-y"} {
		before[name], _ = sim.RuleJSON(nsgVMNIC, name)
	}

	// Deleting, pruning and putting around them touches only what this
	// deployment may change.
	var asked []string
	a := apply(t, d, nsgVMNIC, jit.RuleChange{
		Put:    []jit.SecurityRule{denyRule("jit-deny-mine")},
		Delete: []string{"jit-deny-x", "jit-allow-y", "allow-https", "jit-allow-mine"},
		Prune: func(r jit.SecurityRule) bool {
			asked = append(asked, r.Name)
			return r.Name != "jit-allow-kept"
		},
	})
	slices.Sort(asked)
	if !slices.Equal(asked, []string{"jit-allow-kept", "jit-allow-legacy"}) {
		t.Errorf("Prune asked about %v, want the owned and legacy rules in neither Put nor Delete", asked)
	}
	if !slices.Equal(a.Created, []string{"jit-deny-mine"}) || a.Updated != nil || !slices.Equal(a.Removed, []string{"jit-allow-legacy", "jit-allow-mine"}) {
		t.Errorf("applied created %v, updated %v, removed %v", a.Created, a.Updated, a.Removed)
	}
	if got := names(a.Rules); !slices.Equal(got, []string{"allow-https", "jit-allow-y", "jit-allow-kept", "jit-deny-x", "jit-deny-mine"}) {
		t.Errorf("rules by priority %v", got)
	}
	if r, _ := findRule(t, d, nsgVMNIC, "jit-deny-mine"); r.Priority != azurenet.DefaultDenyMin+1 {
		t.Errorf("new deny rule at %d, want %d beside the foreign one", r.Priority, azurenet.DefaultDenyMin+1)
	}
	for name, b := range before {
		if after, ok := sim.RuleJSON(nsgVMNIC, name); !ok || !bytes.Equal(b, after) {
			t.Errorf("%s changed:\nbefore %s\nafter  %s", name, b, after)
		}
	}

	// A put of a foreign rule's name fails the whole change and writes
	// nothing.
	for _, clash := range []jit.SecurityRule{denyRule("jit-deny-x"), allowRule("jit-allow-y", "*")} {
		sim.ResetCalls()
		_, err := d.ApplyRules(ctx, nsgVMNIC, jit.RuleChange{Put: []jit.SecurityRule{allowRule("jit-allow-new", "*"), clash}, Delete: []string{"jit-allow-kept"}})
		if jit.ErrorCode(err) != jit.ECONFLICT {
			t.Fatalf("put %s: %v, want ECONFLICT", clash.Name, err)
		}
		msg := jit.ErrorMessage(err)
		if !strings.Contains(msg, clash.Name) || !strings.Contains(msg, nsgVMNIC) || !strings.Contains(msg, "another team or deployment") {
			t.Errorf("conflict message %q: want the rule, the NSG and who owns it", msg)
		}
		if c := sim.Calls(); c.Writes != 0 {
			t.Errorf("a conflicting change wrote %d times", c.Writes)
		}
	}
	if _, ok := findRule(t, d, nsgVMNIC, "jit-allow-kept"); !ok {
		t.Error("the failed change deleted jit-allow-kept")
	}
}

// Two deployments on one NSG leave each other's rules alone.
func TestTwoDeploymentsShareAnNSG(t *testing.T) {
	sim, _, co := newEnvOptions(t, armsim.Options{})
	blue, green := jit.Owner{Deployment: "blue"}, jit.Owner{Deployment: "green"}
	db, dg := driverFor(t, co, blue), driverFor(t, co, green)
	all := func(jit.SecurityRule) bool { return true }

	apply(t, db, nsgVMNIC, put(ruleFor(blue, "jit-allow-b1", "203.0.113.1"), ruleFor(blue, "jit-allow-b2", "203.0.113.2")))
	apply(t, dg, nsgVMNIC, put(ruleFor(green, "jit-allow-g1", "203.0.113.3")))
	blueRule, _ := sim.RuleJSON(nsgVMNIC, "jit-allow-b1")

	// Green prunes everything it owns and deletes blue's rules by name:
	// only its own go.
	a := apply(t, dg, nsgVMNIC, jit.RuleChange{Delete: []string{"jit-allow-b2"}, Prune: all})
	if !slices.Equal(a.Removed, []string{"jit-allow-g1"}) {
		t.Errorf("green removed %v, want only its own rule", a.Removed)
	}
	if got := sim.RuleNames(nsgVMNIC); !slices.Equal(got, []string{"allow-https", "jit-allow-b1", "jit-allow-b2"}) {
		t.Errorf("rules after green's prune: %v", got)
	}
	// Green cannot take over a name blue uses.
	if _, err := dg.ApplyRules(context.Background(), nsgVMNIC, put(ruleFor(green, "jit-allow-b1", "*"))); jit.ErrorCode(err) != jit.ECONFLICT {
		t.Errorf("green putting blue's rule name: %v, want ECONFLICT", err)
	}
	if after, _ := sim.RuleJSON(nsgVMNIC, "jit-allow-b1"); !bytes.Equal(blueRule, after) {
		t.Errorf("blue's rule changed:\nbefore %s\nafter  %s", blueRule, after)
	}
	// Blue still manages its own.
	if a := apply(t, db, nsgVMNIC, jit.RuleChange{Prune: all}); len(a.Removed) != 2 {
		t.Errorf("blue pruned %v, want its two rules", a.Removed)
	}
}

// Rules from before deployment markers may be changed (adopted under the
// marker) and deleted.
func TestLegacyRulesMayChange(t *testing.T) {
	sim, d := newEnv(t, armsim.Options{})
	addForeign(t, sim, nsgVMNIC, "jit-allow-old", "Managed by jitaccess: grant 7", armnetwork.SecurityRuleAccessAllow, 1500)
	addForeign(t, sim, nsgVMNIC, "jit-deny-old", "Managed by jitaccess: lockdown", armnetwork.SecurityRuleAccessDeny, 4090)
	a := apply(t, d, nsgVMNIC, jit.RuleChange{Put: []jit.SecurityRule{allowRule("jit-allow-old", "203.0.113.7")}, Delete: []string{"jit-deny-old"}})
	if !slices.Equal(a.Updated, []string{"jit-allow-old"}) || !slices.Equal(a.Removed, []string{"jit-deny-old"}) {
		t.Errorf("applied %+v", a)
	}
	r, _ := findRule(t, d, nsgVMNIC, "jit-allow-old")
	if r.Priority != 1500 || !strings.HasPrefix(r.Description, testOwner.Marker()) {
		t.Errorf("adopted rule %+v: want its priority kept and the marker", r)
	}
	if !testOwner.Owns(r) {
		t.Error("the adopted rule is not owned")
	}
}

// editRule changes a rule by hand, as someone in the portal would.
func editRule(t *testing.T, sim *armsim.Server, nsgID, name string, edit func(*armnetwork.SecurityRulePropertiesFormat)) {
	t.Helper()
	b, ok := sim.RuleJSON(nsgID, name)
	if !ok {
		t.Fatalf("no rule %s", name)
	}
	var r armnetwork.SecurityRule
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	edit(r.Properties)
	if err := sim.AddRule(nsgID, r); err != nil {
		t.Fatal(err)
	}
}

// An owned rule that differs from what is put in any property, or sits
// outside its band, is rewritten; ARM's equivalent spellings are not
// differences.
func TestDriftInEveryPropertyIsRewritten(t *testing.T) {
	asg := armsim.DemoID("Microsoft.Network/applicationSecurityGroups", "asg-web")
	tests := []struct {
		name     string
		edit     func(*armnetwork.SecurityRulePropertiesFormat)
		rewrite  bool
		priority int // after the repair; 0: as before
	}{
		{"source port range 1", func(p *armnetwork.SecurityRulePropertiesFormat) { p.SourcePortRange = to.Ptr("1") }, true, 0},
		{"source port ranges", func(p *armnetwork.SecurityRulePropertiesFormat) {
			p.SourcePortRange, p.SourcePortRanges = nil, []*string{to.Ptr("1024-65535"), to.Ptr("80")}
		}, true, 0},
		{"protocol", func(p *armnetwork.SecurityRulePropertiesFormat) {
			p.Protocol = to.Ptr(armnetwork.SecurityRuleProtocolUDP)
		}, true, 0},
		{"source ASG instead of prefix", func(p *armnetwork.SecurityRulePropertiesFormat) {
			p.SourceAddressPrefix, p.SourceApplicationSecurityGroups = nil, []*armnetwork.ApplicationSecurityGroup{{ID: to.Ptr(asg)}}
		}, true, 0},
		{"destination ASG added", func(p *armnetwork.SecurityRulePropertiesFormat) {
			p.DestinationApplicationSecurityGroups = []*armnetwork.ApplicationSecurityGroup{{ID: to.Ptr(asg)}}
		}, true, 0},
		{"priority out of band", func(p *armnetwork.SecurityRulePropertiesFormat) { p.Priority = to.Ptr[int32](500) }, true, azurenet.DefaultAllowMin},
		{"priority in the deny band", func(p *armnetwork.SecurityRulePropertiesFormat) { p.Priority = to.Ptr[int32](4001) }, true, azurenet.DefaultAllowMin},
		{"priority elsewhere in band", func(p *armnetwork.SecurityRulePropertiesFormat) { p.Priority = to.Ptr[int32](1500) }, false, 1500},
		{"direction", func(p *armnetwork.SecurityRulePropertiesFormat) {
			p.Direction = to.Ptr(armnetwork.SecurityRuleDirectionOutbound)
		}, true, 0},
		{"access", func(p *armnetwork.SecurityRulePropertiesFormat) { p.Access = to.Ptr(armnetwork.SecurityRuleAccessDeny) }, true, 0},
		{"description", func(p *armnetwork.SecurityRulePropertiesFormat) { p.Description = to.Ptr(*p.Description + " (edited)") }, true, 0},
		{"destination prefix added", func(p *armnetwork.SecurityRulePropertiesFormat) {
			p.DestinationAddressPrefix, p.DestinationAddressPrefixes = nil, []*string{to.Ptr("10.10.1.4"), to.Ptr("10.10.1.0/24")}
		}, true, 0},
		{"source prefix widened", func(p *armnetwork.SecurityRulePropertiesFormat) { p.SourceAddressPrefix = to.Ptr("203.0.113.0/24") }, true, 0},
		{"destination port added", func(p *armnetwork.SecurityRulePropertiesFormat) {
			p.DestinationPortRanges = append(p.DestinationPortRanges, to.Ptr("445"))
		}, true, 0},
		{"plural forms and letter case", func(p *armnetwork.SecurityRulePropertiesFormat) {
			p.SourcePortRange, p.SourcePortRanges = nil, []*string{to.Ptr("*")}
			p.SourceAddressPrefix, p.SourceAddressPrefixes = nil, []*string{to.Ptr("203.0.113.7")}
			p.DestinationPortRanges = []*string{to.Ptr("3389"), to.Ptr("22")}
		}, false, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sim, d := newEnv(t, armsim.Options{})
			rule := allowRule("jit-allow-1", "203.0.113.7")
			apply(t, d, nsgVMNIC, put(rule))
			editRule(t, sim, nsgVMNIC, rule.Name, tt.edit)
			sim.ResetCalls()
			a := apply(t, d, nsgVMNIC, put(rule))
			if got := a.Wrote(); got != tt.rewrite {
				t.Fatalf("rewritten %v, want %v (applied %+v)", got, tt.rewrite, a)
			}
			if tt.rewrite && !slices.Equal(a.Updated, []string{rule.Name}) {
				t.Errorf("updated %v, want %s", a.Updated, rule.Name)
			}
			got, ok := findRule(t, d, nsgVMNIC, rule.Name)
			if !ok {
				t.Fatal("rule gone")
			}
			want := rule
			want.Priority = azurenet.DefaultAllowMin
			if tt.priority != 0 {
				want.Priority = tt.priority
			}
			want.SourcePorts = []string{"*"}
			if tt.rewrite && !equalRule(got, want) {
				t.Errorf("after the repair %+v, want %+v", got, want)
			}
			if got.Priority != want.Priority {
				t.Errorf("priority %d, want %d", got.Priority, want.Priority)
			}
			// Applied.Rules hold the rule as read back.
			i := slices.IndexFunc(a.Rules, func(r jit.SecurityRule) bool { return r.Name == rule.Name })
			if i < 0 || !equalRule(a.Rules[i], got) {
				t.Errorf("Applied.Rules has %+v, read back %+v", a.Rules, got)
			}
		})
	}
}

// equalRule compares rules as sets, as the driver does.
func equalRule(a, b jit.SecurityRule) bool {
	set := func(v []string) string {
		s := slices.Clone(v)
		for i := range s {
			s[i] = strings.ToLower(s[i])
		}
		slices.Sort(s)
		return strings.Join(s, ",")
	}
	return a.Name == b.Name && a.Description == b.Description && a.Access == b.Access && strings.EqualFold(a.Protocol, b.Protocol) &&
		a.Priority == b.Priority && set(a.SourcePorts) == set(b.SourcePorts) && set(a.Ports) == set(b.Ports) &&
		set(a.Sources) == set(b.Sources) && set(a.Destinations) == set(b.Destinations) &&
		set(a.SourceASGs) == set(b.SourceASGs) && set(a.DestinationASGs) == set(b.DestinationASGs)
}

// Source ports and application security groups are read from ARM.
func TestReadsSourcePortsAndASGs(t *testing.T) {
	sim, d := newEnv(t, armsim.Options{})
	src, dst := armsim.DemoID("Microsoft.Network/applicationSecurityGroups", "asg-a"), armsim.DemoID("Microsoft.Network/applicationSecurityGroups", "asg-b")
	err := sim.AddRule(nsgVMNIC, armnetwork.SecurityRule{Name: to.Ptr("web"), Properties: &armnetwork.SecurityRulePropertiesFormat{
		Access: to.Ptr(armnetwork.SecurityRuleAccessAllow), Direction: to.Ptr(armnetwork.SecurityRuleDirectionInbound),
		Priority: to.Ptr[int32](310), Protocol: to.Ptr(armnetwork.SecurityRuleProtocolTCP),
		SourcePortRanges:                     []*string{to.Ptr("1024-65535"), to.Ptr("80")},
		SourceApplicationSecurityGroups:      []*armnetwork.ApplicationSecurityGroup{{ID: to.Ptr(src)}},
		DestinationApplicationSecurityGroups: []*armnetwork.ApplicationSecurityGroup{{ID: to.Ptr(dst)}},
		DestinationPortRange:                 to.Ptr("443"),
	}})
	if err != nil {
		t.Fatal(err)
	}
	r, ok := findRule(t, d, nsgVMNIC, "web")
	if !ok || !slices.Equal(r.SourcePorts, []string{"1024-65535", "80"}) || !slices.Equal(r.SourceASGs, []string{src}) ||
		!slices.Equal(r.DestinationASGs, []string{dst}) || r.Sources != nil || r.Destinations != nil {
		t.Errorf("read %+v", r)
	}
	// A rule put with its own source ports gets them.
	rule := allowRule("jit-allow-1", "203.0.113.7")
	rule.SourcePorts = []string{"1024-65535"}
	apply(t, d, nsgVMNIC, put(rule))
	if got, _ := findRule(t, d, nsgVMNIC, rule.Name); !slices.Equal(got.SourcePorts, rule.SourcePorts) {
		t.Errorf("source ports %v, want %v", got.SourcePorts, rule.SourcePorts)
	}
}
