package httpapi_test

import (
	"slices"
	"strings"
	"testing"

	"jitaccess/handler/jit"
)

// TestAnyOfOneFamilyStaysInIt: a port that allows ::/0 (any IPv6 source)
// does not allow 0.0.0.0/0, and a request for 0.0.0.0/0 opens the IPv4 rule
// only, with that source, not "*". Before the fix both /0 prefixes became
// "*": a request for 0.0.0.0/0 was accepted by the ::/0 port and written
// with source * to both families.
func TestAnyOfOneFamilyStaysInIt(t *testing.T) {
	s := newStack(t, stackOptions{local: true})
	estate := `{"subscriptions":[{"id":"` + sub + `","resourceGroups":[{"name":"demo","location":"westeurope",
	  "networkSecurityGroups":[{"name":"nsg-dual"}],
	  "virtualNetworks":[{"name":"vnet","addressPrefixes":["10.40.0.0/16","fd00:40::/48"],"subnets":[{"name":"s","addressPrefix":"10.40.0.0/24"}]}],
	  "virtualMachines":[
	    {"name":"vm-dual","nics":[{"subnet":"vnet/s","privateIPAddress":"10.40.0.4","networkSecurityGroup":"nsg-dual"},{"subnet":"vnet/s","privateIPAddress":"fd00:40::4","networkSecurityGroup":"nsg-dual"}]}]}]}]}`
	if err := s.sim.Load(strings.NewReader(estate)); err != nil {
		t.Fatal(err)
	}
	s.must(200, nil, "PUT", "/api/v1/policies/fam", map[string]any{"properties": map[string]any{"virtualMachines": []any{
		map[string]any{"id": vmID("vm-dual"), "ports": []any{
			map[string]any{"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "::/0", "maxRequestAccessDuration": "PT3H"},
			map[string]any{"number": 3389, "protocol": "TCP", "allowedSourceAddressPrefix": "0.0.0.0/0", "maxRequestAccessDuration": "PT3H"}}},
	}}}, nil)
	waitFor(t, "the lockdown", func() bool { return s.vm("vm-dual").State == jit.VMConfigured })

	var req request
	ask := func(port int, src string) (int, string) {
		return s.do(nil, "POST", "/api/v1/policies/fam/initiate", map[string]any{"virtualMachines": []any{map[string]any{"id": vmID("vm-dual"), "ports": []any{
			map[string]any{"number": port, "duration": "PT1H", "allowedSourceAddressPrefix": src}}}}, "justification": "families"}, &req)
	}
	sources := func(name string) []string {
		r, ok := s.rule("nsg-dual", name)
		if !ok {
			return nil
		}
		out := []string{deref(r.Properties.SourceAddressPrefix)}
		for _, p := range r.Properties.SourceAddressPrefixes {
			out = append(out, *p)
		}
		return slices.DeleteFunc(out, func(p string) bool { return p == "" })
	}

	for _, c := range []struct {
		port int
		src  string
	}{{22, "0.0.0.0/0"}, {22, "*"}, {22, "10.0.0.0/8"}, {3389, "::/0"}, {3389, "2001:db8::7"}, {3389, "*"}} {
		if code, raw := ask(c.port, c.src); code != 400 {
			t.Errorf("port %d from %s: %d %s, want 400", c.port, c.src, code, raw)
		}
	}

	if code, raw := ask(3389, "10.0.0.0/0"); code != 202 {
		t.Fatalf("port 3389 from 10.0.0.0/0: %d %s", code, raw)
	}
	v4 := req.Grants[0].RuleName
	waitFor(t, "the IPv4 allow rule", func() bool { _, ok := s.rule("nsg-dual", v4); return ok })
	if got := sources(v4); !slices.Equal(got, []string{"0.0.0.0/0"}) {
		t.Errorf("IPv4 allow rule sources %q, want [0.0.0.0/0]", got)
	}
	if _, ok := s.rule("nsg-dual", v4+"-v6"); ok {
		t.Errorf("0.0.0.0/0 opened an IPv6 rule too")
	}

	if code, raw := ask(22, "::/0"); code != 202 {
		t.Fatalf("port 22 from ::/0: %d %s", code, raw)
	}
	v6 := req.Grants[0].RuleName + "-v6"
	waitFor(t, "the IPv6 allow rule", func() bool { _, ok := s.rule("nsg-dual", v6); return ok })
	if got := sources(v6); !slices.Equal(got, []string{"::/0"}) {
		t.Errorf("IPv6 allow rule sources %q, want [::/0]", got)
	}
	if _, ok := s.rule("nsg-dual", req.Grants[0].RuleName); ok {
		t.Errorf("::/0 opened an IPv4 rule too")
	}
}
