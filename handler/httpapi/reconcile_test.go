package httpapi_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v9"

	"jitaccess/handler/armsim"
	"jitaccess/handler/jit"
)

// handEdit changes the simulated estate over HTTP, as a person in the
// portal would, behind the service's back.
func (s *stack) handEdit(method, id string, body any) {
	s.t.Helper()
	var rd *strings.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = strings.NewReader(string(b))
	} else {
		rd = strings.NewReader("")
	}
	req, _ := http.NewRequest(method, s.armURL+id+"?api-version=2024-05-01", rd)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		s.t.Fatalf("hand edit %s %s: %d", method, id, resp.StatusCode)
	}
}

func (s *stack) rule(nsg, name string) (armnetwork.SecurityRule, bool) {
	b, ok := s.sim.RuleJSON(nsgID(nsg), name)
	if !ok {
		return armnetwork.SecurityRule{}, false
	}
	var r armnetwork.SecurityRule
	_ = json.Unmarshal(b, &r)
	return r, true
}

func (s *stack) auditDetails(action string) []string {
	var out struct {
		Value []struct {
			Action string `json:"action"`
			Detail string `json:"detail"`
		} `json:"value"`
	}
	s.must(200, nil, "GET", "/api/v1/audit", nil, &out)
	var ds []string
	for _, ev := range out.Value {
		if ev.Action == action {
			ds = append(ds, ev.Detail)
		}
	}
	return ds
}

func TestReconcileRepairsDrift(t *testing.T) {
	s := newStack(t, stackOptions{local: true})
	s.must(200, nil, "PUT", "/api/v1/policies/p", policyBody("vm-nic-nsg", nil), nil)
	var r request
	s.must(202, nil, "POST", "/api/v1/policies/p/initiate", initiate("vm-nic-nsg", "PT1H"), &r)
	allow := r.Grants[0].RuleName
	waitFor(t, "grant open", func() bool {
		s.must(200, nil, "GET", "/api/v1/requests/"+r.ID, nil, &r)
		return r.Grants[0].Status == "Initiated"
	})
	waitFor(t, "the lockdown", func() bool { return s.vm("vm-nic-nsg").State == jit.VMConfigured })
	deny := s.denyRules("nsg-vm-nic")[0]
	ctx := t.Context()

	// A clean estate: a sweep changes nothing.
	rep, err := s.rec.Reconcile(ctx)
	if err != nil || rep.Orphans+rep.Repaired+rep.DenyRestored+rep.Closed != 0 || rep.NSGs != 3 {
		t.Fatalf("sweep of a clean estate: %+v, %v", rep, err)
	}
	writes := s.sim.Calls().Writes
	if _, err := s.rec.Reconcile(ctx); err != nil || s.sim.Calls().Writes != writes {
		t.Fatalf("a second clean sweep wrote to ARM")
	}

	// Someone deletes the deny rule and widens the allow rule by hand, and
	// leaves an allow rule with our prefix that no grant owns.
	rules := "/subscriptions/" + sub + "/resourceGroups/demo/providers/Microsoft.Network/networkSecurityGroups/nsg-vm-nic/securityRules/"
	s.handEdit("DELETE", rules+deny, nil)
	widened := map[string]any{"properties": map[string]any{"access": "Allow", "direction": "Inbound", "priority": 1000, "protocol": "*",
		"sourceAddressPrefix": "*", "sourcePortRange": "*", "destinationAddressPrefix": "*", "destinationPortRange": "*"}}
	s.handEdit("PUT", rules+allow, widened)
	// An allow rule of ours (our marker) that no grant owns goes; one named
	// like ours without the marker is someone else's: left alone, reported.
	orphan := "jit-allow-" + jit.NewRequestID() + "-0"
	widened["properties"].(map[string]any)["priority"] = 1500
	widened["properties"].(map[string]any)["description"] = "[jit:" + jit.DefaultDeployment + "] grant of a request gone from the store"
	s.handEdit("PUT", rules+orphan, widened)
	lookalike := "jit-allow-" + jit.NewRequestID() + "-0"
	widened["properties"].(map[string]any)["priority"] = 1600
	widened["properties"].(map[string]any)["description"] = "not jitaccess"
	s.handEdit("PUT", rules+lookalike, widened)
	delete(widened["properties"].(map[string]any), "description")
	// And a foreign rule that lets SSH in ahead of the deny rule.
	if err := s.sim.AddRule(nsgID("nsg-vm-nic"), armnetwork.SecurityRule{Name: to.Ptr("ssh-from-office"), Properties: &armnetwork.SecurityRulePropertiesFormat{
		Access: to.Ptr(armnetwork.SecurityRuleAccessAllow), Direction: to.Ptr(armnetwork.SecurityRuleDirectionInbound), Priority: to.Ptr[int32](500),
		Protocol: to.Ptr(armnetwork.SecurityRuleProtocolTCP), SourceAddressPrefix: to.Ptr("198.51.100.0/24"), SourcePortRange: to.Ptr("*"),
		DestinationAddressPrefix: to.Ptr("*"), DestinationPortRange: to.Ptr("20-25")}}); err != nil {
		t.Fatal(err)
	}

	rep, err = s.rec.Reconcile(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rep.DenyRestored != 1 || rep.Repaired != 1 || rep.Orphans != 1 {
		t.Errorf("sweep after hand edits: %+v", rep)
	}
	if got, ok := s.rule("nsg-vm-nic", deny); !ok || *got.Properties.Access != armnetwork.SecurityRuleAccessDeny {
		t.Errorf("deny rule not restored")
	}
	if got, _ := s.rule("nsg-vm-nic", allow); *got.Properties.SourceAddressPrefix != "203.0.113.7" || *got.Properties.DestinationPortRange != "22" {
		t.Errorf("widened allow rule not put back: %+v", got.Properties)
	}
	if _, ok := s.rule("nsg-vm-nic", orphan); ok {
		t.Errorf("orphaned allow rule left open")
	}
	if _, ok := s.rule("nsg-vm-nic", "ssh-from-office"); !ok {
		t.Fatalf("a foreign rule was touched")
	}
	if got, ok := s.rule("nsg-vm-nic", lookalike); !ok || deref(got.Properties.Description) != "not jitaccess" {
		t.Fatalf("a foreign rule named like ours was touched")
	}
	var vms struct {
		Value []struct {
			Name     string   `json:"name"`
			Warnings []string `json:"warnings"`
		} `json:"value"`
	}
	s.must(200, nil, "GET", "/api/v1/vms", nil, &vms)
	for _, v := range vms.Value {
		if v.Name == "vm-nic-nsg" && (len(v.Warnings) != 2 || !slices.ContainsFunc(v.Warnings, func(w string) bool { return strings.Contains(w, "ssh-from-office") }) ||
			!slices.ContainsFunc(v.Warnings, func(w string) bool { return strings.Contains(w, lookalike) })) {
			t.Errorf("vm-nic-nsg warnings: %v", v.Warnings)
		}
	}
	drift := s.auditDetails("drift")
	for _, want := range []string{"deny rule " + deny, "allow rule " + allow, "removed allow rule " + orphan, "ssh-from-office"} {
		if !slices.ContainsFunc(drift, func(d string) bool { return strings.Contains(d, want) }) {
			t.Errorf("no drift audit mentioning %q in %v", want, drift)
		}
	}
	// The same finding is audited once, however often it is seen.
	if _, err := s.rec.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if n := len(s.auditDetails("drift")); n != len(drift) {
		t.Errorf("drift audited %d times after a repeat sweep, want %d", n, len(drift))
	}

	// An event about the NSG repairs at once; duplicates are harmless.
	s.handEdit("DELETE", rules+deny, nil)
	ev := jit.ResourceEvent{ID: "e1", Type: jit.EventDeleteSuccess, Subject: nsgID("nsg-vm-nic") + "/securityRules/" + deny}
	for range 3 {
		if err := s.rec.HandleResourceEvent(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok := s.rule("nsg-vm-nic", deny); !ok {
		t.Errorf("deny rule not restored by the event")
	}
}

func TestEventsEnrolAndRetireVMs(t *testing.T) {
	s := newStack(t, stackOptions{local: true})
	ctx := t.Context()
	vm := vmID("vm-both-nsg")
	// A VM tagged jit-policy=<name> joins that policy with Defender's defaults.
	if _, err := s.sim.SetVMTags(vm, map[string]*string{"jit-policy": to.Ptr("auto")}); err != nil {
		t.Fatal(err)
	}
	for range 2 { // duplicates are harmless
		if err := s.rec.HandleResourceEvent(ctx, jit.ResourceEvent{ID: "e2", Type: jit.EventWriteSuccess, Subject: vm}); err != nil {
			t.Fatal(err)
		}
	}
	var pol struct {
		Properties struct {
			VirtualMachines []struct {
				ID    string `json:"id"`
				Ports []struct {
					Number int `json:"number"`
				} `json:"ports"`
			} `json:"virtualMachines"`
		} `json:"properties"`
	}
	s.must(200, nil, "GET", "/api/v1/policies/auto", nil, &pol)
	if len(pol.Properties.VirtualMachines) != 1 || len(pol.Properties.VirtualMachines[0].Ports) != 4 {
		t.Fatalf("tagged VM's policy: %+v", pol)
	}
	waitFor(t, "the tagged VM's lockdown", func() bool { return s.lockedInARM("nsg-vm-both", 22, "10.10.2.5") })
	// A deleted VM leaves its policy and its grants are closed.
	var r request
	s.must(202, nil, "POST", "/api/v1/policies/auto/initiate", initiate("vm-both-nsg", "PT1H"), &r)
	waitFor(t, "rule open", func() bool { _, ok := s.rule("nsg-vm-both", r.Grants[0].RuleName); return ok })
	// A delete event for a VM that still exists (late, after the VM was
	// created again, or forged) lifts nothing.
	if err := s.rec.HandleResourceEvent(ctx, jit.ResourceEvent{ID: "e-stale", Type: jit.EventDeleteSuccess, Subject: vm}); err != nil {
		t.Fatal(err)
	}
	s.must(200, nil, "GET", "/api/v1/policies/auto", nil, nil)
	if !s.lockedInARM("nsg-vm-both", 22, "10.10.2.5") {
		t.Fatal("a delete event for an existing VM removed its lockdown")
	}
	if _, ok := s.rule("nsg-vm-both", r.Grants[0].RuleName); !ok {
		t.Fatal("a delete event for an existing VM closed its grant")
	}
	if err := s.sim.DeleteVM(vm); err != nil {
		t.Fatal(err)
	}
	if err := s.rec.HandleResourceEvent(ctx, jit.ResourceEvent{ID: "e3", Type: jit.EventDeleteSuccess, Subject: vm}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "grant of the deleted VM closed", func() bool { _, ok := s.rule("nsg-vm-both", r.Grants[0].RuleName); return !ok })
	s.must(404, nil, "GET", "/api/v1/policies/auto", nil, nil)
	// An out-of-order write event after the delete changes nothing.
	if err := s.rec.HandleResourceEvent(ctx, jit.ResourceEvent{ID: "e2", Type: jit.EventWriteSuccess, Subject: vm}); err != nil {
		t.Fatal(err)
	}
	s.must(404, nil, "GET", "/api/v1/policies/auto", nil, nil)
}

func TestStuckOpenIsMarkedFailed(t *testing.T) {
	s := newStack(t, stackOptions{local: true, dropOpens: true, stuckAfter: time.Second})
	s.must(200, nil, "PUT", "/api/v1/policies/p", policyBody("vm-nic-nsg", nil), nil)
	var r request
	s.must(202, nil, "POST", "/api/v1/policies/p/initiate", initiate("vm-nic-nsg", "PT1H"), &r)
	time.Sleep(1100 * time.Millisecond)
	rep, err := s.rec.Reconcile(t.Context())
	if err != nil || rep.Stuck != 1 {
		t.Fatalf("sweep: %+v, %v", rep, err)
	}
	s.must(200, nil, "GET", "/api/v1/requests/"+r.ID, nil, &r)
	if r.Grants[0].Status != "Failed" || r.Status != "Closed" {
		t.Errorf("stuck grant: %s, request %s", r.Grants[0].Status, r.Status)
	}
	if f := s.auditDetails("failure"); len(f) == 0 || !strings.Contains(f[0], "not opened within") {
		t.Errorf("no failure audited: %v", f)
	}
}

// GET /vms reads the inventory from Azure once per TTL; a resource event
// makes the next one read it again, so a change shows at once.
func TestVMInventoryIsCachedUntilAnEvent(t *testing.T) {
	s := newStack(t, stackOptions{local: true})
	lists := func() int {
		n := 0
		for kind, c := range s.sim.Calls().ByKind {
			if strings.HasPrefix(kind, "LIST ") {
				n += c
			}
		}
		return n
	}
	s.must(200, nil, "GET", "/api/v1/vms", nil, nil)
	first := lists()
	if first == 0 {
		t.Fatal("the first GET /vms listed nothing from ARM")
	}
	for range 3 {
		s.must(200, nil, "GET", "/api/v1/vms", nil, nil)
	}
	if lists() != first {
		t.Errorf("GET /vms listed ARM again within the TTL: %d list calls, want %d", lists(), first)
	}
	if err := s.rec.HandleResourceEvent(t.Context(), jit.ResourceEvent{ID: "e", Type: jit.EventWriteSuccess, Subject: vmID("vm-nic-nsg")}); err != nil {
		t.Fatal(err)
	}
	s.must(200, nil, "GET", "/api/v1/vms", nil, nil)
	if lists() != 2*first {
		t.Errorf("after an event GET /vms made %d list calls in all, want %d", lists(), 2*first)
	}
}

// Extending a grant moves its end time without an ARM write; the sweep that
// follows must find the rule as it should be: no repair, no drift alarm.
func TestSweepAfterExtendFindsNoDrift(t *testing.T) {
	s := newStack(t, stackOptions{local: true})
	s.must(200, nil, "PUT", "/api/v1/policies/p", policyBody("vm-nic-nsg", nil), nil)
	var r request
	s.must(202, nil, "POST", "/api/v1/policies/p/initiate", initiate("vm-nic-nsg", "PT10M"), &r)
	waitFor(t, "rule open", func() bool { _, ok := s.rule("nsg-vm-nic", r.Grants[0].RuleName); return ok })
	s.must(200, nil, "POST", "/api/v1/requests/"+r.ID+"/extend", map[string]any{"duration": "PT1H"}, nil)
	writes := s.sim.Calls().Writes
	rep, err := s.rec.Reconcile(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if rep.Repaired != 0 || rep.Closed != 0 || rep.Orphans != 0 {
		t.Errorf("sweep after an extend: %+v, want nothing to repair", rep)
	}
	if d := s.auditDetails("drift"); len(d) != 0 {
		t.Errorf("sweep after an extend audited drift: %v", d)
	}
	if w := s.sim.Calls().Writes - writes; w != 0 {
		t.Errorf("sweep after an extend made %d ARM writes", w)
	}
	if _, ok := s.rule("nsg-vm-nic", r.Grants[0].RuleName); !ok {
		t.Error("the extended grant's rule is gone")
	}
}

// A repair the sweep cannot make is an audit event, not only a log line.
func TestFailedRepairIsAudited(t *testing.T) {
	s := newStack(t, stackOptions{local: true})
	s.must(200, nil, "PUT", "/api/v1/policies/p", policyBody("vm-nic-nsg", nil), nil)
	waitFor(t, "the lockdown", func() bool { return s.vm("vm-nic-nsg").State == jit.VMConfigured })
	deny := s.denyRules("nsg-vm-nic")[0]
	s.handEdit("DELETE", nsgID("nsg-vm-nic")+"/securityRules/"+deny, nil)
	s.sim.FailNext(armsim.Writes, 1000, armsim.Fault{Status: http.StatusForbidden, Code: "AuthorizationFailed",
		Message: "The client does not have authorization to perform action 'Microsoft.Network/networkSecurityGroups/write'."})
	if _, err := s.rec.Reconcile(t.Context()); err == nil {
		t.Fatal("a sweep whose every write failed reported no error")
	}
	s.sim.ClearFaults()
	if f := s.auditDetails("failure"); !slices.ContainsFunc(f, func(d string) bool { return strings.Contains(d, "bringing NSG nsg-vm-nic in line") }) {
		t.Errorf("failed deny restore not audited: %v", f)
	}
	if _, err := s.rec.Reconcile(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.rule("nsg-vm-nic", deny); !ok {
		t.Error("deny rule not restored once ARM recovered")
	}
}

// A NIC event re-reads the inventory in list calls, not one read per
// protected VM, and the deny rules follow a NIC that lost its NSG.
func TestNICEventFollowsTopology(t *testing.T) {
	s := newStack(t, stackOptions{local: true})
	ctx := t.Context()
	s.must(200, nil, "PUT", "/api/v1/policies/p", policyBody("vm-both-nsg", nil), nil)
	// Both NSGs in front of the VM locked (their syncs are done), before
	// counting what the event costs.
	waitFor(t, "the lockdown", func() bool { return s.vm("vm-both-nsg").State == jit.VMConfigured })
	deny := s.denyRules("nsg-vm-both")[0]
	nic := "/subscriptions/" + sub + "/resourceGroups/demo/providers/Microsoft.Network/networkInterfaces/vm-both-nsg-nic"
	ev := jit.ResourceEvent{ID: "nic-1", Type: jit.EventWriteSuccess, Subject: nic}

	// Nothing moved: list calls only, no write.
	before := s.sim.Calls()
	if err := s.rec.HandleResourceEvent(ctx, ev); err != nil {
		t.Fatal(err)
	}
	after := s.sim.Calls()
	if w := after.Writes - before.Writes; w != 0 {
		t.Errorf("a NIC event with nothing moved made %d writes", w)
	}
	for _, kind := range []string{"GET virtualMachines", "GET networkInterfaces"} {
		if n := after.ByKind[kind] - before.ByKind[kind]; n != 0 {
			t.Errorf("a NIC event made %d %s calls: want list calls, not reads per VM", n, kind)
		}
	}
	if after.ByKind["LIST virtualMachines"] == before.ByKind["LIST virtualMachines"] {
		t.Error("a NIC event did not list the VMs")
	}

	// The NIC loses its NSG (an edit of the estate behind the service's back).
	snap, err := s.sim.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var estate struct {
		Resources []map[string]any `json:"resources"`
	}
	if err := json.Unmarshal(snap, &estate); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, r := range estate.Resources {
		if id, _ := r["id"].(string); strings.EqualFold(id, nic) {
			delete(r["properties"].(map[string]any), "networkSecurityGroup")
			found = true
		}
	}
	if !found {
		t.Fatalf("no NIC %s in the estate", nic)
	}
	edited, _ := json.Marshal(estate)
	if err := s.sim.Load(bytes.NewReader(edited)); err != nil {
		t.Fatal(err)
	}
	if err := s.rec.HandleResourceEvent(ctx, jit.ResourceEvent{ID: "nic-2", Type: jit.EventWriteSuccess, Subject: nic}); err != nil {
		t.Fatal(err)
	}
	var pol struct {
		Properties struct {
			VirtualMachines []struct {
				NSGs []struct {
					ID string `json:"id"`
				} `json:"networkSecurityGroups"`
			} `json:"virtualMachines"`
		} `json:"properties"`
	}
	s.must(200, nil, "GET", "/api/v1/policies/p", nil, &pol)
	if vms := pol.Properties.VirtualMachines; len(vms) != 1 || len(vms[0].NSGs) != 1 || !strings.HasSuffix(vms[0].NSGs[0].ID, "/nsg-subnet-protected") {
		t.Errorf("after the NIC lost its NSG the policy's VM is guarded by %+v, want only nsg-subnet-protected", vms)
	}
	if _, ok := s.rule("nsg-subnet-protected", deny); !ok {
		t.Error("deny rule missing from the subnet's NSG")
	}
}

// Extending twice to the same end time keeps the one close queued for it:
// the second extend's "old" close is its own new one, and must not be
// cancelled (nothing but that close removes the rule here: no sweeper runs).
func TestExtendToSameEndKeepsTheClose(t *testing.T) {
	s := newStack(t, stackOptions{local: true})
	s.must(200, nil, "PUT", "/api/v1/policies/p", policyBody("vm-nic-nsg", nil), nil)
	var r request
	s.must(202, nil, "POST", "/api/v1/policies/p/initiate", initiate("vm-nic-nsg", "PT2S"), &r)
	waitFor(t, "rule open", func() bool { _, ok := s.rule("nsg-vm-nic", r.Grants[0].RuleName); return ok })
	end := time.Now().Add(4 * time.Second).UTC().Truncate(time.Second).Format(time.RFC3339)
	for range 2 {
		s.must(200, nil, "POST", "/api/v1/requests/"+r.ID+"/extend", map[string]any{"endTimeUtc": end}, nil)
	}
	waitFor(t, "the rule closed at the extended end", func() bool { _, ok := s.rule("nsg-vm-nic", r.Grants[0].RuleName); return !ok })
}

// A sweep that cannot list the NSGs fails with EUNAVAILABLE and says so in
// the trail.
func TestSweepListFailureIsAudited(t *testing.T) {
	s := newStack(t, stackOptions{local: true})
	s.sim.FailNext(armsim.Reads, 1000, armsim.Fault{Status: http.StatusForbidden, Code: "AuthorizationFailed",
		Message: "The client does not have authorization to perform action 'Microsoft.Network/networkSecurityGroups/read'."})
	_, err := s.rec.Reconcile(t.Context())
	s.sim.ClearFaults()
	if jit.ErrorCode(err) != jit.EUNAVAILABLE {
		t.Fatalf("sweep with ARM's NSG list failing: %v (%s), want EUNAVAILABLE", err, jit.ErrorCode(err))
	}
	if f := s.auditDetails("failure"); !slices.ContainsFunc(f, func(d string) bool { return strings.Contains(d, "listing network security groups") }) {
		t.Errorf("failed NSG listing not audited: %v", f)
	}
}
