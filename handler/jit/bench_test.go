package jit

import (
	"fmt"
	"testing"
	"time"
)

// Benchmarks of the hot functions on the request path: validation, rule
// planning and key encoding. `go test -run '^$' -bench . -benchmem ./handler/jit`.

const benchVM = "/subscriptions/11111111-1111-1111-1111-111111111111/resourceGroups/bench/providers/Microsoft.Compute/virtualMachines/vm-00042"

func benchPolicy() Policy {
	return Policy{Name: "bench", VMs: []VMPolicy{{ID: benchVM, Name: "vm-00042", PrivateIPs: []string{"10.20.0.46"},
		NSGs: []NSGRef{{ID: "/subscriptions/11111111-1111-1111-1111-111111111111/resourceGroups/bench/providers/Microsoft.Network/networkSecurityGroups/nsg-vm-00042", Scope: "nic"},
			{ID: "/subscriptions/11111111-1111-1111-1111-111111111111/resourceGroups/bench/providers/Microsoft.Network/networkSecurityGroups/nsg-subnet-000", Scope: "subnet"}},
		Ports: []PortRule{
			{Number: 22, Protocol: ProtocolTCP, AllowedSources: []string{"203.0.113.0/24", "198.51.100.7"}, MaxDuration: 3 * time.Hour},
			{Number: 3389, Protocol: ProtocolTCP, AllowedSources: []string{"*"}, MaxDuration: 3 * time.Hour},
			{Number: 5985, Protocol: ProtocolTCP, AllowedSources: []string{"10.0.0.0/8"}, MaxDuration: time.Hour},
		}}}}
}

func BenchmarkPolicyNormalise(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		p := benchPolicy()
		if err := p.Normalise(time.Minute); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBuildRequest validates one initiate against its policy: VM id,
// ports, end time, source prefixes, grant merging.
func BenchmarkBuildRequest(b *testing.B) {
	s := NewAPI(NewCore(nil, nil, Config{MinDuration: time.Minute}), nil)
	pol := benchPolicy()
	if err := pol.Normalise(time.Minute); err != nil {
		b.Fatal(err)
	}
	p := Principal{ID: "alice", Roles: []string{RoleRequester}, Address: "203.0.113.9"}
	in := InitiateInput{VMs: []InitiateVM{{ID: benchVM, Ports: []InitiatePort{
		{Number: 22, Duration: time.Hour}, {Number: 3389, Duration: time.Hour, Sources: []string{"198.51.100.0/28"}}}}}}
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.buildRequest(p, pol, in, now); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkCanonicalPrefixes(b *testing.B) {
	in := []string{"203.0.113.7", "10.1.2.3/8", "2001:db8::1/64", "Internet"}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := CanonicalPrefixes(in); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPrefixAllowed(b *testing.B) {
	allowed := []string{"198.51.100.0/24", "10.0.0.0/8", "203.0.113.0/24"}
	b.ReportAllocs()
	for b.Loop() {
		if !PrefixAllowed("203.0.113.7/32", allowed) {
			b.Fatal("not allowed")
		}
	}
}

func BenchmarkParseVMID(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseVMID(benchVM); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseDuration(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseDuration("PT1H30M"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRulePlanning builds the deny rules of an NSG behind which 1,000
// VMs are protected, and the allow rules of a grant, as every write to an
// NSG does before it goes to ARM.
func BenchmarkRulePlanning(b *testing.B) {
	s := NewCore(nil, nil, Config{})
	pol := benchPolicy()
	nsg := pol.VMs[0].NSGs[0].ID
	for i := 1; i < 1000; i++ {
		vm := pol.VMs[0]
		vm.ID = fmt.Sprintf("%s-%d", benchVM, i)
		vm.PrivateIPs = []string{fmt.Sprintf("10.20.%d.%d", i/250, i%250+1)}
		pol.VMs = append(pol.VMs, vm)
	}
	r := Request{ID: NewRequestID(), Grants: []Grant{{VM: benchVM, Protocol: ProtocolTCP, Ports: []int{22, 3389},
		Sources: []string{"203.0.113.7"}, Destinations: []string{"10.20.0.46"}, End: time.Now().Add(time.Hour)}}}
	b.ReportAllocs()
	for b.Loop() {
		_ = s.lockdownOf([]Policy{pol}, nsg)
		_ = s.allowRules(r, 0)
	}
}

// BenchmarkKeys encodes the deterministic names and ids every operation
// carries: operation id, allow and deny rule names.
func BenchmarkKeys(b *testing.B) {
	id := NewRequestID()
	nsg := benchPolicy().VMs[0].NSGs[0].ID
	due := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		_ = OperationID(OpClose, id, 0, nsg, due)
		_ = RuleName(id, 0)
		_ = LegacyDenyRuleName(benchVM)
	}
}

func BenchmarkNewRequestID(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		_ = NewRequestID()
	}
}
