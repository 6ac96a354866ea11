package main

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
)

// The bench estates use the ARM simulator's compact estate format (see
// handler/armsim/testdata/demo-estate.json): one subscription, one resource
// group, one VNet whose subnets may carry an NSG, and VMs with one NIC each,
// which may carry its own NSG.
const (
	benchSub = "11111111-1111-1111-1111-111111111111"
	benchRG  = "bench"
)

// estateSpec shapes a generated estate.
type estateSpec struct {
	VMs         int
	VMsPerNet   int  // VMs per subnet
	NICNSG      bool // every VM has its own NIC-level NSG
	SubnetNSG   bool // every subnet has an NSG shared by its VMs
	NICNSGEvery int  // when > 1, only every n-th VM has a NIC NSG (the rest rely on the subnet)
	NICNSGFirst int  // when > 0, VMs 0..NICNSGFirst-1 have a NIC NSG (besides NICNSG)
	// OneSubnetNSG: every subnet carries the same NSG (with SubnetNSG), so
	// that all the VMs are behind one NSG.
	OneSubnetNSG bool
}

// vmIP is VM i's private address.
func (e estateSpec) vmIP(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, 20, byte(i / e.perNet()), byte(4 + i%e.perNet())})
}

func vmName(i int) string { return fmt.Sprintf("vm-%05d", i) }

func vmID(i int) string {
	return "/subscriptions/" + benchSub + "/resourceGroups/" + benchRG + "/providers/Microsoft.Compute/virtualMachines/" + vmName(i)
}

func nsgID(name string) string {
	return "/subscriptions/" + benchSub + "/resourceGroups/" + benchRG + "/providers/Microsoft.Network/networkSecurityGroups/" + name
}

func subnetNSGName(s int) string { return fmt.Sprintf("nsg-subnet-%03d", s) }

func nicNSGName(i int) string { return "nsg-" + vmName(i) }

// vmNSGs lists the NSGs that guard VM i in an estate of this spec.
func (e estateSpec) vmNSGs(i int) []string {
	var out []string
	if e.hasNICNSG(i) {
		out = append(out, nsgID(nicNSGName(i)))
	}
	if e.SubnetNSG {
		out = append(out, nsgID(e.subnetNSG(i/e.perNet())))
	}
	return out
}

// subnetNSG is the name of the NSG on subnet s.
func (e estateSpec) subnetNSG(s int) string {
	if e.OneSubnetNSG {
		return subnetNSGName(0)
	}
	return subnetNSGName(s)
}

func (e estateSpec) perNet() int {
	if e.VMsPerNet <= 0 {
		return 250
	}
	return e.VMsPerNet
}

func (e estateSpec) hasNICNSG(i int) bool {
	if i < e.NICNSGFirst {
		return true
	}
	if !e.NICNSG {
		return false
	}
	return e.NICNSGEvery <= 1 || i%e.NICNSGEvery == 0
}

// write writes the estate to path in the compact format.
func (e estateSpec) write(path string) error {
	type nsg struct {
		Name string `json:"name"`
	}
	type subnet struct {
		Name          string `json:"name"`
		AddressPrefix string `json:"addressPrefix"`
		NSG           string `json:"networkSecurityGroup,omitempty"`
	}
	type nic struct {
		Subnet string `json:"subnet"`
		IP     string `json:"privateIPAddress"`
		NSG    string `json:"networkSecurityGroup,omitempty"`
	}
	type vm struct {
		Name string `json:"name"`
		NICs []nic  `json:"nics"`
	}
	nets := (e.VMs + e.perNet() - 1) / e.perNet()
	if nets > 250 {
		return fmt.Errorf("estate: %d subnets do not fit in one /16", nets)
	}
	var nsgs []nsg
	var subnets []subnet
	for s := 0; s < nets; s++ {
		sn := subnet{Name: fmt.Sprintf("s%03d", s), AddressPrefix: fmt.Sprintf("10.20.%d.0/24", s)}
		if e.SubnetNSG {
			sn.NSG = e.subnetNSG(s)
			if s == 0 || !e.OneSubnetNSG {
				nsgs = append(nsgs, nsg{Name: sn.NSG})
			}
		}
		subnets = append(subnets, sn)
	}
	vms := make([]vm, e.VMs)
	for i := range vms {
		n := nic{Subnet: "vnet/" + subnets[i/e.perNet()].Name, IP: e.vmIP(i).String()}
		if e.hasNICNSG(i) {
			n.NSG = nicNSGName(i)
			nsgs = append(nsgs, nsg{Name: n.NSG})
		}
		vms[i] = vm{Name: vmName(i), NICs: []nic{n}}
	}
	doc := map[string]any{"subscriptions": []any{map[string]any{
		"id": benchSub,
		"resourceGroups": []any{map[string]any{
			"name":                  benchRG,
			"location":              "westeurope",
			"networkSecurityGroups": nsgs,
			"virtualNetworks": []any{map[string]any{
				"name": "vnet", "addressPrefixes": []string{"10.20.0.0/16"}, "subnets": subnets,
			}},
			"virtualMachines": vms,
		}},
	}}}
	b, err := json.Marshal(doc)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o600)
}
