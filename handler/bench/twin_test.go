package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"jitaccess/handler/armsim"
)

// simOnly is a deployment that is only an ARM simulator, for the bench's
// own measuring code.
type simOnly struct {
	sim *armsim.Server
	url string
}

func (s simOnly) Mode() string { return "sim" }
func (s simOnly) API(context.Context, string, string, any, any) (int, error) {
	return 0, fmt.Errorf("no API")
}
func (s simOnly) ARM(ctx context.Context, path string, out any) error {
	return observe(ctx, http.DefaultClient, s.url+path, out)
}
func (s simOnly) ARMStats(context.Context) (armsim.CallStats, error) { return s.sim.Calls(), nil }
func (s simOnly) Limits(context.Context, bool) error                 { return nil }
func (s simOnly) Costs(context.Context) (costs, error)               { return costs{}, nil }
func (s simOnly) Close() error                                       { return nil }

func startSim(t *testing.T, spec estateSpec, pageSize int) simOnly {
	t.Helper()
	path := filepath.Join(t.TempDir(), "estate.json")
	if err := spec.write(path); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// Every read counts against a bucket of one: the observer's reads must
	// not.
	sim := armsim.New(armsim.Options{Empty: true, PageSize: pageSize, Azure: &armsim.Azure{Reads: armsim.Bucket{Size: 1, PerSecond: 0.001}}})
	if err := sim.Load(bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	return simOnly{sim: sim, url: srv.URL}
}

func putRule(t *testing.T, s simOnly, nsg, name, access, ports string, dests ...string) {
	t.Helper()
	props := fmt.Sprintf(`{"properties":{"access":%q,"direction":"Inbound","priority":%d,"protocol":"Tcp","sourcePortRange":"*","sourceAddressPrefix":"*","destinationPortRange":%q,"destinationAddressPrefixes":%s}}`,
		access, 4000+len(s.sim.RuleNames(nsg)), ports, mustJSON(dests))
	req, _ := http.NewRequest("PUT", s.url+nsg+"/securityRules/"+name+"?"+armAPIVersion, bytes.NewReader([]byte(props)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		t.Fatalf("PUT %s: %d", name, resp.StatusCode)
	}
}

func mustJSON(v []string) string {
	b := []byte("[")
	for i, s := range v {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, fmt.Sprintf("%q", s)...)
	}
	return string(append(b, ']'))
}

// A VM counts as protected only when every NSG in front of it has a JIT
// deny rule for port 22 and its address, read across list pages.
func TestProtectedVMsReadsWhatARMHolds(t *testing.T) {
	spec := estateSpec{VMs: 6, VMsPerNet: 3, SubnetNSG: true, NICNSGFirst: 1}
	s := startSim(t, spec, 2) // 2 subnet NSGs + 1 NIC NSG: two pages
	ctx := context.Background()
	n, err := protectedVMs(ctx, s, spec)
	if err != nil || n != 0 {
		t.Fatalf("before any rule: %d, %v", n, err)
	}
	sub0, sub1, nic0 := nsgID(subnetNSGName(0)), nsgID(subnetNSGName(1)), nsgID(nicNSGName(0))
	// VM 0 has two NSGs: the subnet's rule alone does not protect it.
	putRule(t, s, sub0, "jit-deny-a", "Deny", "22", spec.vmIP(0).String(), spec.vmIP(1).String())
	putRule(t, s, sub1, "jit-deny-b", "Deny", "20-25", "10.20.1.0/24")
	putRule(t, s, sub1, "someone-elses-deny", "Deny", "*", spec.vmIP(2).String()) // not ours
	putRule(t, s, sub0, "jit-allow-x", "Allow", "22", spec.vmIP(2).String())      // not a deny
	putRule(t, s, sub0, "jit-deny-rdp", "Deny", "3389", spec.vmIP(2).String())    // not port 22
	if n, err = protectedVMs(ctx, s, spec); err != nil || n != 4 {
		t.Errorf("protected %d, %v; want 4 (VM 1 and VMs 3-5)", n, err)
	}
	putRule(t, s, nic0, "jit-deny-c", "Deny", "*", "*")
	if n, _ = protectedVMs(ctx, s, spec); n != 5 {
		t.Errorf("with VM 0's NIC NSG denying too: %d, want 5", n)
	}
	rules, err := allowRules(ctx, s)
	if err != nil || len(rules.present) != 1 || !rules.open(strings.ToLower(sub0)+"|jit-allow-x") {
		t.Errorf("allow rules %v, %v", rules, err)
	}
	if c := s.sim.Calls(); c.Reads != 0 {
		t.Errorf("the bench's watching was counted as %d ARM reads", c.Reads)
	}
}

func TestCoversAddrAndPort(t *testing.T) {
	ip := netip.MustParseAddr("10.20.1.7")
	for _, tc := range []struct {
		prefixes []string
		want     bool
	}{
		{[]string{"10.20.1.7"}, true}, {[]string{"10.20.1.7/32"}, true}, {[]string{"10.20.0.0/16"}, true}, {[]string{"*"}, true},
		{[]string{"10.20.1.8"}, false}, {[]string{"VirtualNetwork"}, false}, {[]string{""}, false},
	} {
		if got := coversAddr(tc.prefixes, ip); got != tc.want {
			t.Errorf("coversAddr(%v) = %v", tc.prefixes, got)
		}
	}
	for _, tc := range []struct {
		ranges []string
		want   bool
	}{{[]string{"22"}, true}, {[]string{"20-25"}, true}, {[]string{"*"}, true}, {[]string{"", "3389", "22"}, true}, {[]string{"23-80"}, false}, {[]string{"2222"}, false}} {
		if got := coversPort(tc.ranges, 22); got != tc.want {
			t.Errorf("coversPort(%v) = %v", tc.ranges, got)
		}
	}
}

// The bound the write budget sets: writes beyond the burst at the refill
// rate, plus one write's latency.
func TestBudgetBound(t *testing.T) {
	for _, tc := range []struct {
		writes int
		lat    time.Duration
		want   time.Duration
	}{
		{500, 2 * time.Second, 32 * time.Second},  // writes: 300 / 10 + 2; reads: 750 / 25 + 2
		{100, 2 * time.Second, 2 * time.Second},   // within both bursts
		{200, 2 * time.Second, 8 * time.Second},   // reads: 150 / 25 + 2
		{1000, 2 * time.Second, 82 * time.Second}, // writes: 800 / 10 + 2; reads: 1,750 / 25 + 2 = 72
		{30, 0, 0},
	} {
		if got := budgetBound(tc.writes, tc.lat); got != tc.want {
			t.Errorf("budgetBound(%d, %s) = %s, want %s", tc.writes, tc.lat, got, tc.want)
		}
	}
}

// While an operation runs on an NSG, its rules are not counted as in force,
// nor as gone.
func TestUpdatingNSGCountsForNothing(t *testing.T) {
	spec := estateSpec{VMs: 2, VMsPerNet: 2, SubnetNSG: true}
	s := startSim(t, spec, 100)
	s.sim.SetAzure(&armsim.Azure{WriteTime: time.Minute, Reads: armsim.Bucket{Size: -1}})
	ctx := context.Background()
	sub0 := nsgID(subnetNSGName(0))
	putRule(t, s, sub0, "jit-deny-a", "Deny", "22", "10.20.0.0/24")
	if n, err := protectedVMs(ctx, s, spec); err != nil || n != 0 {
		t.Errorf("protected while the deny rule's write runs: %d, %v", n, err)
	}
	v, err := allowRules(ctx, s)
	k := strings.ToLower(sub0) + "|jit-allow-gone"
	if err != nil || v.gone(k) || v.open(k) {
		t.Errorf("a rule of an NSG with a running operation counted as gone or open: %+v %v", v, err)
	}
	s.sim.SetAzure(nil)
	if n, _ := protectedVMs(ctx, s, spec); n != 2 {
		t.Errorf("protected after the operation: %d, want 2", n)
	}
	if v, _ := allowRules(ctx, s); !v.gone(k) {
		t.Errorf("a missing rule of a settled NSG is not gone")
	}
}
