package armsim

import (
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
)

// largeEstate is an estate of vms VMs with one NIC and one NIC-level NSG
// each, in subnets of 250, like the estates handler/bench generates.
func largeEstate(vms int) estateFile {
	g := estateGroup{Name: "bench", Location: DemoLocation}
	vnet := estateVNet{Name: "vnet", AddressPrefixes: []string{"10.20.0.0/16"}}
	for s := 0; s*250 < vms; s++ {
		vnet.Subnets = append(vnet.Subnets, estateSubnet{Name: fmt.Sprintf("s%03d", s), AddressPrefix: fmt.Sprintf("10.20.%d.0/24", s)})
	}
	g.VirtualNetworks = []estateVNet{vnet}
	for i := range vms {
		name := fmt.Sprintf("vm-%05d", i)
		g.NetworkSecurityGroups = append(g.NetworkSecurityGroups, estateNSG{Name: "nsg-" + name})
		g.VirtualMachines = append(g.VirtualMachines, estateVM{Name: name, NICs: []estateNIC{{
			Subnet: fmt.Sprintf("vnet/s%03d", i/250), PrivateIPAddress: fmt.Sprintf("10.20.%d.%d", i/250, 4+i%250), NetworkSecurityGroup: "nsg-" + name,
		}}})
	}
	return estateFile{Subscriptions: []estateSubscription{{ID: DemoSubscription, ResourceGroups: []estateGroup{g}}}}
}

// BenchmarkSaveAfterWrite is what local mode pays for every ARM write: one
// rule written, then the estate saved to disk. It runs on the demo estate
// and on a generated one of 5,000 VMs (15,001 resources); JIT_BENCH_ESTATE
// names another estate file to run on as well.
func BenchmarkSaveAfterWrite(b *testing.B) {
	b.Run("demo", func(b *testing.B) {
		benchmarkSaveAfterWrite(b, New(Options{}), DemoID("Microsoft.Network/networkSecurityGroups", "nsg-vm-nic"))
	})
	b.Run("vms=5000", func(b *testing.B) {
		s := New(Options{Empty: true})
		if err := s.replaceEstate(largeEstate(5000)); err != nil {
			b.Fatal(err)
		}
		benchmarkSaveAfterWrite(b, s, *sortedValues(s.st.nsgs)[0].ID)
	})
	if path := os.Getenv("JIT_BENCH_ESTATE"); path != "" {
		b.Run("file", func(b *testing.B) {
			s := New(Options{Empty: true})
			if err := s.LoadFile(path); err != nil {
				b.Fatal(err)
			}
			nsg := *sortedValues(s.st.nsgs)[0].ID
			b.Logf("estate %s, rule written in %s", path, nsg)
			benchmarkSaveAfterWrite(b, s, nsg)
		})
	}
}

func benchmarkSaveAfterWrite(b *testing.B, s *Server, nsg string) {
	out := filepath.Join(b.TempDir(), "estate.json")
	if err := s.Save(out); err != nil { // the first snapshot, outside the loop
		b.Fatal(err)
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if err := s.AddRule(nsg, benchRule(int32(1000+i%2))); err != nil {
			b.Fatal(err)
		}
		if err := s.Save(out); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkListNSGs is the sweep's read in local mode: a page of 1,000 NSGs
// of a 5,000-VM estate that Save has written, one of them changed since.
func BenchmarkListNSGs(b *testing.B) {
	s := New(Options{Empty: true})
	if err := s.replaceEstate(largeEstate(5000)); err != nil {
		b.Fatal(err)
	}
	if err := s.Save(filepath.Join(b.TempDir(), "estate.json")); err != nil {
		b.Fatal(err)
	}
	if err := s.AddRule(*sortedValues(s.st.nsgs)[0].ID, benchRule(1000)); err != nil {
		b.Fatal(err)
	}
	req := httptest.NewRequest("GET", "/subscriptions/"+DemoSubscription+"/providers/Microsoft.Network/networkSecurityGroups?api-version=2025-05-01", nil)
	b.ReportAllocs()
	for b.Loop() {
		w := httptest.NewRecorder()
		s.ServeHTTP(w, req)
		if w.Code != 200 {
			b.Fatal(w.Code, w.Body)
		}
	}
}
