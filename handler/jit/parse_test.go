package jit

import (
	"strings"
	"testing"
	"time"
)

func TestPrefixAllowedKeepsFamilies(t *testing.T) {
	cases := []struct {
		req     string
		allowed []string
		want    bool
	}{
		{"203.0.113.7", []string{"*"}, true},
		{"2001:db8::7", []string{"*"}, true},
		{"0.0.0.0/0", []string{"*"}, true},
		{"::/0", []string{"*"}, true},
		{"203.0.113.7", []string{"0.0.0.0/0"}, true},
		{"10.0.0.0/8", []string{"0.0.0.0/0"}, true},
		{"0.0.0.0/0", []string{"0.0.0.0/0"}, true},
		{"2001:db8::7", []string{"0.0.0.0/0"}, false},
		{"::/0", []string{"0.0.0.0/0"}, false},
		{"*", []string{"0.0.0.0/0"}, false},
		{"2001:db8::7", []string{"::/0"}, true},
		{"::/0", []string{"::/0"}, true},
		{"203.0.113.7", []string{"::/0"}, false},
		{"0.0.0.0/0", []string{"::/0"}, false},
		{"*", []string{"::/0"}, false},
		{"*", []string{"0.0.0.0/0", "::/0"}, false},
	}
	for _, c := range cases {
		if got := PrefixAllowed(c.req, c.allowed); got != c.want {
			t.Errorf("PrefixAllowed(%q, %q) = %v, want %v", c.req, c.allowed, got, c.want)
		}
	}
}

func TestCanonicalPrefix(t *testing.T) {
	cases := []struct{ in, want, err string }{
		{"*", "*", ""},
		{"Any", "*", ""},
		{"Internet", "*", ""},
		// Any source of one family stays in it: ::/0 is not *.
		{"0.0.0.0/0", "0.0.0.0/0", ""},
		{"10.0.0.0/0", "0.0.0.0/0", ""},
		{"::/0", "::/0", ""},
		{"2001:db8::1/0", "::/0", ""},
		{"203.0.113.7", "203.0.113.7", ""},
		{" 203.0.113.7 ", "203.0.113.7", ""},
		{"203.0.113.7/32", "203.0.113.7", ""},
		{"10.1.2.3/8", "10.0.0.0/8", ""},
		{"2001:DB8::1", "2001:db8::1", ""},
		{"2001:db8::1/48", "2001:db8::/48", ""},
		{"::ffff:10.0.0.1", "10.0.0.1", ""},
		{"10.0.0.300", "", "not an IP address"},
		{"10.0.0.0/33", "", "not an IP address"},
		{"fe80::1%eth0", "", "not an IP address"},
		{"", "", "empty"},
		{"example.com", "", "not an IP address"},
	}
	for _, c := range cases {
		got, err := CanonicalPrefix(c.in)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) || ErrorCode(err) != EINVALID {
				t.Errorf("CanonicalPrefix(%q) error = %v, want %q", c.in, err, c.err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("CanonicalPrefix(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
}

func TestPrefixAllowed(t *testing.T) {
	cases := []struct {
		req     string
		allowed []string
		want    bool
	}{
		{"203.0.113.7", []string{"*"}, true},
		{"*", []string{"*"}, true},
		{"*", []string{"10.0.0.0/8"}, false},
		{"10.1.2.3", []string{"10.0.0.0/8"}, true}, // a /32 inside an allowed CIDR
		{"10.1.0.0/16", []string{"10.0.0.0/8"}, true},
		{"10.0.0.0/7", []string{"10.0.0.0/8"}, false}, // wider than allowed
		{"11.0.0.1", []string{"10.0.0.0/8", "192.0.2.0/24"}, false},
		{"192.0.2.9", []string{"10.0.0.0/8", "192.0.2.0/24"}, true},
		{"2001:db8::5", []string{"2001:db8::/32"}, true},
		{"2001:db9::5", []string{"2001:db8::/32"}, false},
		{"10.0.0.1", []string{"2001:db8::/32"}, false},
		{"203.0.113.7", []string{"203.0.113.7"}, true},
	}
	for _, c := range cases {
		if got := PrefixAllowed(c.req, c.allowed); got != c.want {
			t.Errorf("PrefixAllowed(%q, %v) = %v, want %v", c.req, c.allowed, got, c.want)
		}
	}
}

func TestParseDuration(t *testing.T) {
	cases := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"PT3H", 3 * time.Hour, true},
		{"PT30M", 30 * time.Minute, true},
		{"PT1H30M", 90 * time.Minute, true},
		{"P1D", 24 * time.Hour, true},
		{"P1DT2H", 26 * time.Hour, true},
		{"PT90S", 90 * time.Second, true},
		{"PT0.5S", 500 * time.Millisecond, true},
		{"pt5m", 5 * time.Minute, true},
		{"P1W", 7 * 24 * time.Hour, true},
		{"PT", 0, false},
		{"P", 0, false},
		{"3H", 0, false},
		{"PT3", 0, false},
		{"PT3M2H", 0, false}, // out of order
		{"P3H", 0, false},    // hours need T
		{"PT3D", 0, false},
		{"PT-3H", 0, false},
		{"PT1H1H", 0, false},
		{"PTH", 0, false},
		{"PT99999999999H", 0, false},
	}
	for _, c := range cases {
		got, err := ParseDuration(c.in)
		if c.ok != (err == nil) || c.ok && got != c.want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v ok=%v", c.in, got, err, c.want, c.ok)
		}
	}
	for _, d := range []time.Duration{time.Hour, 3 * time.Hour, 90 * time.Minute, 24 * time.Hour, 26*time.Hour + time.Second, 1500 * time.Millisecond} {
		back, err := ParseDuration(FormatDuration(d))
		if err != nil || back != d {
			t.Errorf("round trip of %v via %q gave %v, %v", d, FormatDuration(d), back, err)
		}
	}
}

func TestParseVMID(t *testing.T) {
	good := "/subscriptions/11111111-1111-1111-1111-111111111111/resourceGroups/demo/providers/Microsoft.Compute/virtualMachines/vm-1"
	id, err := ParseVMID(strings.ToUpper(good[:60]) + good[60:])
	if err != nil {
		t.Fatal(err)
	}
	if id.Name != "vm-1" || id.Subscription != "11111111-1111-1111-1111-111111111111" {
		t.Errorf("parsed %+v", id)
	}
	if !strings.HasPrefix(id.String(), "/subscriptions/") || !strings.Contains(id.String(), "/providers/Microsoft.Compute/virtualMachines/") {
		t.Errorf("canonical form %s", id)
	}
	for _, bad := range []string{
		"vm-1",
		good + "/extensions/x",
		strings.Replace(good, "virtualMachines", "virtualMachineScaleSets", 1),
		strings.Replace(good, "11111111-1111", "not-a-guid", 1),
		strings.Replace(good, "/demo/", "/demo./", 1),
		strings.Replace(good, "vm-1", "vm 1", 1),
		"",
	} {
		if _, err := ParseVMID(bad); ErrorCode(err) != EINVALID {
			t.Errorf("ParseVMID(%q) error = %v, want invalid", bad, err)
		}
	}
}

func TestPolicyNormalise(t *testing.T) {
	vm := "/subscriptions/11111111-1111-1111-1111-111111111111/resourceGroups/demo/providers/Microsoft.Compute/virtualMachines/vm-1"
	p := Policy{Name: "prod", VMs: []VMPolicy{{ID: vm}}}
	if err := p.Normalise(DefaultMinDuration); err != nil {
		t.Fatal(err)
	}
	if got := p.VMs[0].PortNumbers(); len(got) != 4 || got[0] != 22 || got[3] != 5986 {
		t.Errorf("default ports = %v", got)
	}
	if r := p.VMs[0].Ports[0]; r.Protocol != ProtocolTCP || r.MaxDuration != 3*time.Hour || r.AllowedSources[0] != "*" {
		t.Errorf("default rule = %+v", r)
	}
	cases := []struct {
		name string
		pol  Policy
		want string
	}{
		{"no VMs", Policy{Name: "p"}, "at least one VM"},
		{"bad name", Policy{Name: "a b", VMs: []VMPolicy{{ID: vm}}}, "policy name"},
		{"twice", Policy{Name: "p", VMs: []VMPolicy{{ID: vm}, {ID: strings.ToUpper(vm[:20]) + vm[20:]}}}, "listed twice"},
		{"port twice", Policy{Name: "p", VMs: []VMPolicy{{ID: vm, Ports: []PortRule{{Number: 22}, {Number: 22, Protocol: "*"}}}}}, "port 22 is listed twice"},
		{"port 0", Policy{Name: "p", VMs: []VMPolicy{{ID: vm, Ports: []PortRule{{Number: 0}}}}}, "out of range"},
		{"short max", Policy{Name: "p", VMs: []VMPolicy{{ID: vm, Ports: []PortRule{{Number: 22, MaxDuration: time.Minute}}}}}, "out of range"},
		{"long max", Policy{Name: "p", VMs: []VMPolicy{{ID: vm, Ports: []PortRule{{Number: 22, MaxDuration: 25 * time.Hour}}}}}, "out of range"},
	}
	for _, c := range cases {
		err := c.pol.Normalise(DefaultMinDuration)
		if ErrorCode(err) != EINVALID || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", c.name, err, c.want)
		}
	}
	// TCP and UDP on the same number are different ports.
	ok := Policy{Name: "p", VMs: []VMPolicy{{ID: vm, Ports: []PortRule{{Number: 53, Protocol: "tcp"}, {Number: 53, Protocol: "udp", AllowedSources: []string{"10.1.2.3/8"}}}}}}
	if err := ok.Normalise(DefaultMinDuration); err != nil {
		t.Fatal(err)
	}
	if ok.VMs[0].Ports[1].Protocol != ProtocolUDP || ok.VMs[0].Ports[1].AllowedSources[0] != "10.0.0.0/8" {
		t.Errorf("normalised = %+v", ok.VMs[0].Ports[1])
	}
}

func TestRuleNamesFitARM(t *testing.T) {
	long := "/subscriptions/11111111-1111-1111-1111-111111111111/resourceGroups/demo/providers/Microsoft.Compute/virtualMachines/" + strings.Repeat("v", 64)
	if n := LegacyDenyRuleName(long); len(n) > 80 || !strings.HasPrefix(n, RulePrefix) {
		t.Errorf("deny rule name %q", n)
	}
	if LegacyDenyRuleName(long) == LegacyDenyRuleName(long[:len(long)-1]+"w") {
		t.Errorf("deny rule names of different VMs collide")
	}
	if n := RuleName(NewRequestID(), 99); len(n) > 80 {
		t.Errorf("allow rule name %q too long", n)
	}
	a, b := NewRequestID(), NewRequestID()
	if a == b || !ValidRequestID(a) || ValidRequestID("x") || ValidRequestID(strings.ToUpper(a)) {
		t.Errorf("request ids %q %q", a, b)
	}
}
