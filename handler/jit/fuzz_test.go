package jit

import (
	"math"
	"math/big"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode"
)

// Fuzz targets for the parsers of outside input that live in the domain:
// ISO 8601 durations, source prefixes, VM ids, request ids and policy names.
// Plain `go test` runs their seeds (here and in testdata/fuzz); .ci/fuzz.sh
// fuzzes each for a bounded time.

func FuzzParseDuration(f *testing.F) {
	for _, s := range []string{
		"PT3H", "PT30M", "PT1H30M", "P1D", "P1DT2H", "PT90S", "PT0.5S", "pt5m", "P1W", " PT5M ",
		"PT0,5H", "PT0S", "P0D", "PT0.000000001S", "PT1.5M", "P1DT23H59M59.999999999S",
		"PT", "P", "3H", "PT3", "PT3M2H", "P3H", "PT3D", "PT-3H", "PT1H1H", "PTH", "PT99999999999H",
		"PT1.2.3S", "PT.S", "PT1e3S", "P1Y", "PT1HT", "P1000000W", "P106751DT23H47M16.854775807S",
		"PT1ſ", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseDuration(s)
		if err != nil {
			checkInvalid(t, "ParseDuration", s, err)
			return
		}
		want, inRange := referenceDuration(t, s)
		if !inRange || d < 0 {
			t.Fatalf("ParseDuration(%q) = %v, nil: a duration beyond time.Duration's range must be refused", s, d)
		}
		// Each term goes through a float64: allow its rounding, a few
		// nanoseconds per term plus a relative error of float64's precision.
		if diff := math.Abs(float64(d) - want); diff > 5+want*1e-14 {
			t.Fatalf("ParseDuration(%q) = %v (%d ns), want %.0f ns", s, d, int64(d), want)
		}
		checkFormatRoundTrip(t, d)
	})
}

// FuzzFormatDuration checks that whatever the service writes (a policy's
// maximum, the minimum in GET /me) its own parser reads back.
func FuzzFormatDuration(f *testing.F) {
	for _, d := range []time.Duration{0, 1, time.Second, 1500 * time.Millisecond, 3 * time.Hour, 26*time.Hour + time.Second, math.MaxInt64, -time.Hour} {
		f.Add(int64(d))
	}
	f.Fuzz(func(t *testing.T, n int64) {
		d := time.Duration(n)
		if d <= 0 {
			if got := FormatDuration(d); got != "PT0S" {
				t.Fatalf("FormatDuration(%d) = %q, want PT0S", n, got)
			}
			return
		}
		if d > maxParsedSeconds*time.Second {
			// Longer than anything here lasts: refused, in words.
			if _, err := ParseDuration(FormatDuration(d)); ErrorCode(err) != EINVALID {
				t.Fatalf("ParseDuration(FormatDuration(%v)) error %v, want invalid", d, err)
			}
			return
		}
		checkFormatRoundTrip(t, d)
	})
}

var formattedDuration = regexp.MustCompile(`^P([1-9][0-9]*D)?(T([1-9][0-9]*H)?([1-9][0-9]*M)?([0-9]+(\.[0-9]+)?S)?)?$`)

// checkFormatRoundTrip: FormatDuration(d) is well formed and parses back to
// d. The seconds are written as a float64 and read back times 1e9 with
// truncation, so the result may be one nanosecond short.
func checkFormatRoundTrip(t *testing.T, d time.Duration) {
	t.Helper()
	s := FormatDuration(d)
	if d > 0 && (!formattedDuration.MatchString(s) || s == "P" || strings.HasSuffix(s, "T")) {
		t.Fatalf("FormatDuration(%v) = %q, not a well-formed ISO 8601 duration", d, s)
	}
	back, err := ParseDuration(s)
	if err != nil {
		t.Fatalf("FormatDuration(%v) = %q, which ParseDuration refuses: %v", d, s, err)
	}
	if diff := back - d; diff < -time.Nanosecond || diff > time.Nanosecond {
		t.Fatalf("FormatDuration(%v) = %q parses back to %v (%d ns off)", d, s, back, diff)
	}
}

// referenceDuration computes, in exact arithmetic, the nanoseconds of a
// duration ParseDuration accepted, and whether they fit a time.Duration.
func referenceDuration(t *testing.T, s string) (float64, bool) {
	t.Helper()
	u := strings.ToUpper(strings.TrimSpace(s))
	total := new(big.Float).SetPrec(256)
	inTime := false
	num := ""
	for _, c := range u[1:] {
		switch {
		case c >= '0' && c <= '9' || c == '.' || c == ',':
			num += string(c)
			continue
		case c == 'T':
			inTime = true
			continue
		}
		var unit time.Duration
		switch {
		case !inTime && c == 'W':
			unit = 7 * 24 * time.Hour
		case !inTime && c == 'D':
			unit = 24 * time.Hour
		case c == 'H':
			unit = time.Hour
		case c == 'M':
			unit = time.Minute
		case c == 'S':
			unit = time.Second
		default:
			t.Fatalf("ParseDuration accepted %q with unit %q", s, c)
		}
		v, _, err := big.ParseFloat(strings.Replace(num, ",", ".", 1), 10, 256, big.ToNearestEven)
		if err != nil {
			t.Fatalf("ParseDuration accepted %q with number %q: %v", s, num, err)
		}
		total.Add(total, v.Mul(v, new(big.Float).SetInt64(int64(unit))))
		num = ""
	}
	ns, _ := total.Float64()
	// Near the top of the range float64 rounding decides; count only what is
	// clearly inside as in range.
	return ns, ns < math.MaxInt64*(1-1e-12)
}

func FuzzCanonicalPrefix(f *testing.F) {
	for _, s := range []string{
		"*", "Any", "internet", "0.0.0.0/0", "::/0", "203.0.113.7", " 203.0.113.7 ", "203.0.113.7/32",
		"10.1.2.3/8", "2001:DB8::1", "2001:db8::1/48", "::ffff:10.0.0.1", "::ffff:10.0.0.1/128",
		"::ffff:0:0/96", "10.0.0.300", "10.0.0.0/33", "fe80::1%eth0", "fe80::1%eth0/64", "", " ",
		"example.com", "10.0.0.0/0", "::1/0", "0.0.0.0/00", "010.0.0.1", "1.2.3.4/-1", "::/128",
		"255.255.255.255/31", "2001:db8::/129", "1.2.3.4 /24",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := CanonicalPrefix(s)
		if err != nil {
			checkInvalid(t, "CanonicalPrefix", s, err)
			return
		}
		again, err := CanonicalPrefix(c)
		if err != nil || again != c {
			t.Fatalf("CanonicalPrefix(%q) = %q, but CanonicalPrefix(%q) = %q, %v: not idempotent", s, c, c, again, err)
		}
		if strings.TrimSpace(c) != c || c == "" {
			t.Fatalf("CanonicalPrefix(%q) = %q", s, c)
		}
		// Only the names of any source become *; a /0 keeps its IP version.
		if c == AnySource && !slices.Contains([]string{"*", "any", "internet"}, strings.ToLower(strings.TrimSpace(s))) {
			t.Fatalf("CanonicalPrefix(%q) = *: an address family's prefix became any source", s)
		}
		if isZeroBits(c) && c != "0.0.0.0/0" && c != "::/0" {
			t.Fatalf("CanonicalPrefix(%q) = %q, want 0.0.0.0/0 or ::/0", s, c)
		}
		if p, err := netip.ParsePrefix(strings.TrimSpace(s)); err == nil && c != AnySource && family(c) != family(p.Masked().String()) {
			t.Fatalf("CanonicalPrefix(%q) = %q changed the IP version", s, c)
		}
		if !PrefixAllowed(c, []string{c}) {
			t.Fatalf("canonical prefix %q (from %q) is not allowed by itself", c, s)
		}
		if !PrefixAllowed(c, []string{AnySource}) {
			t.Fatalf("canonical prefix %q is not allowed by *", c)
		}
		list, err := CanonicalPrefixes([]string{s, c, s})
		if err != nil || len(list) != 1 || list[0] != c {
			t.Fatalf("CanonicalPrefixes(%q, %q, %q) = %q, %v; want [%q]", s, c, s, list, err, c)
		}
	})
}

func isZeroBits(c string) bool { return strings.HasSuffix(c, "/0") }

// FuzzPrefixAllowed: never panics on any strings, and on canonical input
// "allowed" is monotonic in the allowed list and consistent with CIDR
// containment.
func FuzzPrefixAllowed(f *testing.F) {
	for _, c := range [][3]string{
		{"203.0.113.7", "*", ""},
		{"*", "10.0.0.0/8", ""},
		{"10.1.2.3", "10.0.0.0/8", "192.0.2.0/24"},
		{"10.0.0.0/7", "10.0.0.0/8", ""},
		{"2001:db8::5", "2001:db8::/32", "10.0.0.0/8"},
		{"10.0.0.1", "2001:db8::/32", "::ffff:10.0.0.0/104"},
		{"::ffff:10.0.0.1", "10.0.0.0/8", ""},
		{"not an address", "bogus/8", "1.2.3.4/99"},
		{"0.0.0.0/0", "::/0", ""},
		{"::/0", "0.0.0.0/0", "10.0.0.0/8"},
		{"2001:db8::7", "0.0.0.0/0", ""},
		{"*", "0.0.0.0/0", "::/0"},
	} {
		f.Add(c[0], c[1], c[2])
	}
	f.Fuzz(func(t *testing.T, req, a, b string) {
		_ = PrefixAllowed(req, []string{a, b}) // raw strings: must not panic
		r, err := CanonicalPrefix(req)
		if err != nil {
			return
		}
		var allowed []string
		for _, s := range []string{a, b} {
			if c, err := CanonicalPrefix(s); err == nil {
				allowed = append(allowed, c)
			}
		}
		got := PrefixAllowed(r, allowed)
		if got && !PrefixAllowed(r, append(slices.Clone(allowed), "198.51.100.0/24")) {
			t.Fatalf("PrefixAllowed(%q, %q) but not once the list grows", r, allowed)
		}
		if got && r != AnySource && !slices.Contains(allowed, AnySource) {
			// Some allowed prefix must contain every address of r.
			rp, err := toPrefix(r)
			if err != nil {
				t.Fatalf("canonical %q does not parse: %v", r, err)
			}
			last := lastAddr(rp)
			inside := false
			for _, s := range allowed {
				if ap, err := toPrefix(s); err == nil && ap.Contains(rp.Masked().Addr()) && ap.Contains(last) {
					inside = true
				}
			}
			if !inside {
				t.Fatalf("PrefixAllowed(%q, %q) = true, but no allowed prefix holds all of %q", r, allowed, r)
			}
		}
		if r == AnySource && got != slices.Contains(allowed, AnySource) {
			t.Fatalf("PrefixAllowed(*, %q) = %v: * is allowed only where * is", allowed, got)
		}
	})
}

// lastAddr is the highest address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	p = p.Masked()
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

func FuzzParseVMID(f *testing.F) {
	good := "/subscriptions/11111111-1111-1111-1111-111111111111/resourceGroups/demo/providers/Microsoft.Compute/virtualMachines/vm-1"
	for _, s := range []string{
		good, strings.ToUpper(good), strings.ToLower(good), good + "/", good + "/extensions/x",
		strings.Replace(good, "virtualMachines", "virtualMachineScaleSets", 1),
		strings.Replace(good, "/demo/", "/demo./", 1), strings.Replace(good, "/demo/", "/rg_(x).y/", 1),
		strings.Replace(good, "vm-1", "vm 1", 1), strings.Replace(good, "vm-1", strings.Repeat("v", 65), 1),
		"vm-1", "", "/subscriptions//resourceGroups//providers/Microsoft.Compute/virtualMachines/",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseVMID(s)
		if err != nil {
			checkInvalid(t, "ParseVMID", s, err)
			return
		}
		c := id.String()
		if strings.ContainsFunc(c, func(r rune) bool { return r > unicode.MaxASCII }) {
			t.Fatalf("ParseVMID(%q) = %q: ARM ids are ASCII", s, c)
		}
		back, err := ParseVMID(c)
		if err != nil || back != id {
			t.Fatalf("ParseVMID(%q) = %+v, but its String() %q parses to %+v, %v", s, id, c, back, err)
		}
		if !SameID(s, c) {
			t.Fatalf("ParseVMID(%q).String() = %q names another resource", s, c)
		}
		if id.Key() != strings.ToLower(c) || id.Subscription != strings.ToLower(id.Subscription) {
			t.Fatalf("ParseVMID(%q): key %q, subscription %q", s, id.Key(), id.Subscription)
		}
		if ResourceName(c) != id.Name {
			t.Fatalf("ResourceName(%q) = %q, want %q", c, ResourceName(c), id.Name)
		}
	})
}

func FuzzValidRequestID(f *testing.F) {
	f.Add(NewRequestID())
	for _, s := range []string{"", "x", strings.Repeat("a", 26), strings.Repeat("A", 26), strings.Repeat("7", 26), strings.Repeat("a", 25) + "1", strings.Repeat("a", 27),
		strings.Repeat("2", 24) + "\r\n", strings.Repeat("2", 25) + "\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if !ValidRequestID(s) {
			return
		}
		// Only the shape is checked: the decoder ignores the last character's
		// two spare bits, so 26-character ids NewRequestID cannot produce
		// pass too. That is harmless, as ids are only ever compared whole.
		if len(s) != 26 || strings.Trim(s, "abcdefghijklmnopqrstuvwxyz234567") != "" {
			t.Fatalf("ValidRequestID(%q) = true", s)
		}
		if n := RuleName(s, 99); len(n) > 80 || !strings.HasPrefix(n, RulePrefix) {
			t.Fatalf("RuleName(%q, 99) = %q: not a valid NSG rule name", s, n)
		}
	})
}

func FuzzValidatePolicyName(f *testing.F) {
	for _, s := range []string{"prod", "a", "a-b_c.d", "-a", ".a", "a b", "", strings.Repeat("p", 64), strings.Repeat("p", 65), "pölicy", "p/../q", "p%2F"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		err := ValidatePolicyName(s)
		if err != nil {
			checkInvalid(t, "ValidatePolicyName", s, err)
			return
		}
		if len(s) < 1 || len(s) > 64 || strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.") != "" ||
			strings.ContainsRune("-_.", rune(s[0])) {
			t.Fatalf("ValidatePolicyName(%q) accepted it", s)
		}
	})
}

// FuzzPolicyNormalise builds a one-VM policy from fuzz values. Normalise
// must not panic, must refuse with a user message, and a normalised policy
// must be a fixed point: normalising it again changes nothing.
func FuzzPolicyNormalise(f *testing.F) {
	vm := "/subscriptions/11111111-1111-1111-1111-111111111111/resourceGroups/demo/providers/Microsoft.Compute/virtualMachines/vm-1"
	f.Add("prod", vm, 22, "TCP", "*", int64(3*time.Hour), 0, "", "")
	f.Add("prod", vm, 53, "tcp", "10.1.2.3/8", int64(time.Hour), 53, "udp", "203.0.113.7,2001:db8::1/48")
	f.Add("prod", vm, 22, "", "", int64(0), 22, "*", "")
	f.Add("p", strings.ToUpper(vm), 65536, "ICMP", "10.0.0.300", int64(time.Minute), -1, "x", ",")
	f.Add("p", vm, 3389, "UDP", "10.0.0.0/0", int64(25*time.Hour), 3389, "TCP", "::/0,10.0.0.0/8")
	// Long values must not make long error messages.
	f.Add(strings.Repeat("p", 5000), vm, 22, "TCP", "*", int64(time.Hour), 0, "", "")
	f.Add("p", vm, 22, strings.Repeat("\xf6", 5000), "*", int64(time.Hour), 0, "", "")
	f.Fuzz(func(t *testing.T, name, id string, n1 int, proto1, src1 string, max1 int64, n2 int, proto2, src2 string) {
		p := Policy{Name: name, VMs: []VMPolicy{{ID: id}}}
		if n1 != 0 || proto1 != "" || src1 != "" || max1 != 0 {
			p.VMs[0].Ports = append(p.VMs[0].Ports, PortRule{Number: n1, Protocol: proto1, AllowedSources: splitList(src1), MaxDuration: time.Duration(max1)})
		}
		if n2 != 0 || proto2 != "" || src2 != "" {
			p.VMs[0].Ports = append(p.VMs[0].Ports, PortRule{Number: n2, Protocol: proto2, AllowedSources: splitList(src2), MaxDuration: time.Duration(max1)})
		}
		if err := p.Normalise(DefaultMinDuration); err != nil {
			checkInvalid(t, "Normalise", name, err)
			return
		}
		once := clonePolicy(p)
		if err := p.Normalise(DefaultMinDuration); err != nil {
			t.Fatalf("a normalised policy %+v is refused when normalised again: %v", once, err)
		}
		if !equalPolicies(once, p) {
			t.Fatalf("normalising twice changed the policy:\n%+v\n%+v", once, p)
		}
		for _, r := range p.VMs[0].Ports {
			if r.Number < 1 || r.Number > 65535 || r.MaxDuration < DefaultMinDuration || r.MaxDuration > MaxDuration || len(r.AllowedSources) == 0 {
				t.Fatalf("normalised port rule %+v is out of bounds", r)
			}
		}
	})
}

func splitList(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

func clonePolicy(p Policy) Policy {
	p.VMs = slices.Clone(p.VMs)
	for i := range p.VMs {
		p.VMs[i].Ports = slices.Clone(p.VMs[i].Ports)
		for j := range p.VMs[i].Ports {
			p.VMs[i].Ports[j].AllowedSources = slices.Clone(p.VMs[i].Ports[j].AllowedSources)
		}
	}
	return p
}

func equalPolicies(a, b Policy) bool {
	if a.Name != b.Name || len(a.VMs) != len(b.VMs) {
		return false
	}
	for i := range a.VMs {
		if a.VMs[i].ID != b.VMs[i].ID || !slices.EqualFunc(a.VMs[i].Ports, b.VMs[i].Ports, func(x, y PortRule) bool {
			return x.Number == y.Number && x.Protocol == y.Protocol && x.MaxDuration == y.MaxDuration && slices.Equal(x.AllowedSources, y.AllowedSources)
		}) {
			return false
		}
	}
	return true
}

// checkInvalid: a refusal of outside input is an *Error with code EINVALID
// and a message a user can read.
func checkInvalid(t *testing.T, fn, in string, err error) {
	t.Helper()
	if ErrorCode(err) != EINVALID {
		t.Fatalf("%s(%q): error %v has code %q, want %q", fn, in, err, ErrorCode(err), EINVALID)
	}
	if msg := ErrorMessage(err); msg == "" || len(msg) > 1024 {
		t.Fatalf("%s(%q): error message %q is empty or unbounded", fn, in, msg)
	}
}
