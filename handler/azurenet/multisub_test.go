package azurenet_test

import (
	"context"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	azfake "github.com/Azure/azure-sdk-for-go/sdk/azcore/fake"

	"jitaccess/handler/armsim"
	"jitaccess/handler/azurenet"
)

const twoSubscriptions = `{"subscriptions": [
 {"id": "11111111-1111-1111-1111-111111111111", "resourceGroups": [{"name": "a", "location": "westeurope",
   "networkSecurityGroups": [{"name": "nsg-a"}],
   "virtualNetworks": [{"name": "vnet-a", "addressPrefixes": ["10.1.0.0/16"], "subnets": [{"name": "s", "addressPrefix": "10.1.1.0/24"}]}],
   "virtualMachines": [{"name": "vm-a", "nics": [{"subnet": "vnet-a/s", "privateIPAddress": "10.1.1.4", "networkSecurityGroup": "nsg-a"}]}]}]},
 {"id": "22222222-2222-2222-2222-222222222222", "resourceGroups": [{"name": "b", "location": "northeurope",
   "networkSecurityGroups": [{"name": "nsg-b"}],
   "virtualNetworks": [{"name": "vnet-b", "addressPrefixes": ["10.2.0.0/16"], "subnets": [{"name": "s", "addressPrefix": "10.2.1.0/24", "networkSecurityGroup": "nsg-b"}]}],
   "virtualMachines": [{"name": "vm-b", "nics": [{"subnet": "vnet-b/s", "privateIPAddress": "10.2.1.4"}]}]}]}
]}`

// ListVMs covers exactly the subscriptions in scope.
func TestListVMsAcrossSubscriptions(t *testing.T) {
	sim := armsim.New(armsim.Options{Empty: true})
	if err := sim.Load(strings.NewReader(twoSubscriptions)); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	co := &arm.ClientOptions{ClientOptions: azcore.ClientOptions{
		Cloud: cloud.Configuration{Services: map[cloud.ServiceName]cloud.ServiceConfiguration{
			cloud.ResourceManager: {Endpoint: srv.URL, Audience: "https://management.azure.com"},
		}},
		InsecureAllowCredentialWithHTTP: true,
	}}
	cases := []struct {
		subs []string
		want []string
	}{
		{[]string{"11111111-1111-1111-1111-111111111111", "22222222-2222-2222-2222-222222222222"}, []string{"vm-a", "vm-b"}},
		{[]string{"22222222-2222-2222-2222-222222222222"}, []string{"vm-b"}},
		{[]string{"11111111-1111-1111-1111-111111111111"}, []string{"vm-a"}},
	}
	for _, c := range cases {
		d, err := azurenet.New(azurenet.Config{Owner: testOwner, Subscriptions: c.subs}, &azfake.TokenCredential{}, co)
		if err != nil {
			t.Fatal(err)
		}
		vms, err := d.ListVMs(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, vm := range vms {
			names = append(names, vm.Name)
			if len(vm.NSGs) != 1 || vm.Unsupported != "" {
				t.Errorf("%s: NSGs %v, unsupported %q", vm.Name, vm.NSGs, vm.Unsupported)
			}
		}
		slices.Sort(names)
		if !slices.Equal(names, c.want) {
			t.Errorf("scope %v: VMs %v, want %v", c.subs, names, c.want)
		}
	}
}
