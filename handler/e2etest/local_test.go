package e2etest

import (
	"bytes"
	"encoding/csv"
	"strings"
	"testing"
	"time"
)

type requestRec struct {
	ID              string `json:"id"`
	Status          string `json:"status"`
	VirtualMachines []struct {
		ID    string `json:"id"`
		Ports []struct {
			Number       int       `json:"number"`
			EndTimeUtc   time.Time `json:"endTimeUtc"`
			Status       string    `json:"status"`
			StatusReason string    `json:"statusReason"`
			Source       string    `json:"allowedSourceAddressPrefix"`
		} `json:"ports"`
	} `json:"virtualMachines"`
	Grants []struct {
		RuleName string `json:"ruleName"`
		Status   string `json:"status"`
	} `json:"grants"`
}

type apiError struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

func demoPolicy() map[string]any {
	return map[string]any{
		"kind": "Basic",
		"properties": map[string]any{
			"virtualMachines": []any{
				map[string]any{"id": vmID("vm-nic-nsg"), "ports": []any{
					map[string]any{"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "*", "maxRequestAccessDuration": "PT1H"},
					map[string]any{"number": 3389, "protocol": "TCP", "allowedSourceAddressPrefixes": []string{"10.0.0.0/8", "192.0.2.0/24"}, "maxRequestAccessDuration": "PT2H"},
				}},
				map[string]any{"id": vmID("vm-subnet-nsg"), "ports": []any{
					map[string]any{"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "*", "maxRequestAccessDuration": "PT1H"},
				}},
				// No ports: Defender's defaults.
				map[string]any{"id": vmID("vm-both-nsg")},
			},
		},
	}
}

func initiateBody(vm string, port int, extra map[string]any) map[string]any {
	p := map[string]any{"number": port}
	for k, v := range extra {
		p[k] = v
	}
	return map[string]any{
		"virtualMachines": []any{map[string]any{"id": vmID(vm), "ports": []any{p}}},
		"justification":   "e2e test",
	}
}

// TestLocalEndToEnd walks through what a user does with curl: enable JIT,
// request, see the rule open and close on time, revoke, read the VM list and
// the audit trail, and survive a crash mid-grant.
func TestLocalEndToEnd(t *testing.T) {
	dataDir := t.TempDir()
	addr := freeAddr(t)
	p := startLocal(t, dataDir, addr)

	// 1. Enable JIT: deny rules appear in every NSG guarding each VM.
	var pol struct {
		Name       string `json:"name"`
		Etag       string `json:"etag"`
		Properties struct {
			ProvisioningState string `json:"provisioningState"`
			VirtualMachines   []struct {
				ID    string `json:"id"`
				Ports []struct {
					Number   int    `json:"number"`
					Protocol string `json:"protocol"`
					Max      string `json:"maxRequestAccessDuration"`
					Prefix   string `json:"allowedSourceAddressPrefix"`
				} `json:"ports"`
			} `json:"virtualMachines"`
		} `json:"properties"`
	}
	p.must(200, "PUT", "/api/v1/policies/demo", demoPolicy(), &pol)
	if ps := pol.Properties.ProvisioningState; ps != "Updating" && ps != "Succeeded" || pol.Etag == "" {
		t.Fatalf("policy answer: %+v", pol)
	}
	// The lockdown is asynchronous, as Defender's: the policy says
	// Succeeded once every NSG was seen denying its ports.
	waitFor(t, 10*time.Second, "the lockdown", func() bool {
		p.must(200, "GET", "/api/v1/policies/demo", nil, &pol)
		return pol.Properties.ProvisioningState == "Succeeded"
	})
	both := pol.Properties.VirtualMachines[2]
	if len(both.Ports) != 4 || both.Ports[0].Number != 22 || both.Ports[1].Number != 3389 || both.Ports[0].Max != "PT3H" || both.Ports[0].Prefix != "*" {
		t.Fatalf("default ports not applied: %+v", both.Ports)
	}
	denyIn := func(nsg, ip string, port int) armRule {
		t.Helper()
		for _, r := range p.nsgRules(nsg) {
			if r.denies(ip, port) {
				return r
			}
		}
		t.Fatalf("no deny rule for %s port %d in %s: %v", ip, port, nsg, p.nsgRules(nsg))
		return armRule{}
	}
	for _, c := range []struct {
		nsg, ip string
		port    int
	}{
		{"nsg-vm-nic", "10.10.1.4", 22}, {"nsg-vm-nic", "10.10.1.4", 3389}, {"nsg-subnet-protected", "10.10.2.4", 22},
		{"nsg-vm-both", "10.10.2.5", 5986}, {"nsg-subnet-protected", "10.10.2.5", 5985},
	} {
		r := denyIn(c.nsg, c.ip, c.port)
		if r.Properties.Priority < 4000 || r.Properties.Priority > 4095 {
			t.Errorf("deny rule for %s in %s: %+v", c.ip, c.nsg, r.Properties)
		}
	}
	if _, ok := p.nsgRules("nsg-vm-nic")["allow-https"]; !ok {
		t.Errorf("the foreign rule allow-https is gone from nsg-vm-nic")
	}
	// A VM with no NSG cannot be protected.
	var e apiError
	bad := demoPolicy()
	bad["properties"].(map[string]any)["virtualMachines"] = []any{map[string]any{"id": vmID("vm-no-nsg")}}
	p.must(400, "PUT", "/api/v1/policies/other", bad, &e)
	if !strings.Contains(e.Error.Message, "vm-no-nsg") || !strings.Contains(e.Error.Message, "network security group") {
		t.Errorf("unsupported VM message: %q", e.Error.Message)
	}

	// 2+3. Request SSH on vm-both-nsg for 3 s: answered 202 at once, the
	// allow rule appears in both NSGs, then disappears after the end time
	// with nobody calling anything.
	var req requestRec
	p.must(202, "POST", "/api/v1/policies/demo/initiate",
		initiateBody("vm-both-nsg", 22, map[string]any{"duration": "PT3S", "allowedSourceAddressPrefix": "203.0.113.7"}), &req)
	if req.ID == "" || len(req.Grants) != 1 {
		t.Fatalf("initiate answer: %+v", req)
	}
	end := req.VirtualMachines[0].Ports[0].EndTimeUtc
	rule := req.Grants[0].RuleName
	for _, nsg := range []string{"nsg-vm-both", "nsg-subnet-protected"} {
		took := waitFor(t, 5*time.Second, "allow rule in "+nsg, func() bool { _, ok := p.nsgRules(nsg)[rule]; return ok })
		t.Logf("allow rule present in %s %s after the 202", nsg, took)
	}
	r := p.nsgRules("nsg-vm-both")[rule]
	if r.Properties.Access != "Allow" || r.Properties.SourceAddressPrefix != "203.0.113.7" || r.Properties.Priority < 1000 || r.Properties.Priority > 1999 {
		t.Errorf("allow rule: %+v", r.Properties)
	}
	if r.Properties.Priority >= denyIn("nsg-vm-both", "10.10.2.5", 22).Properties.Priority {
		t.Errorf("allow rule priority %d is not ahead of the deny rule", r.Properties.Priority)
	}
	waitFor(t, time.Until(end)+10*time.Second, "allow rule removed after the end time", func() bool {
		_, a := p.nsgRules("nsg-vm-both")[rule]
		_, b := p.nsgRules("nsg-subnet-protected")[rule]
		return !a && !b
	})
	if lag := time.Since(end); lag < -time.Second {
		t.Errorf("rule removed %s before the end time", -lag)
	} else {
		t.Logf("rules removed %s after the end time", lag)
	}
	waitFor(t, 5*time.Second, "request closed", func() bool {
		p.must(200, "GET", "/api/v1/requests/"+req.ID, nil, &req)
		return req.Status == "Closed"
	})
	if st := req.VirtualMachines[0].Ports[0]; st.Status != "Revoked" || st.StatusReason != "Expired" {
		t.Errorf("expired port status %s/%s, want Revoked/Expired", st.Status, st.StatusReason)
	}

	// 4. Revoke early: the rule goes at once.
	var long requestRec
	p.must(202, "POST", "/api/v1/policies/demo/initiate",
		initiateBody("vm-nic-nsg", 22, map[string]any{"endTimeUtc": time.Now().Add(30 * time.Minute).UTC().Format(time.RFC3339), "allowedSourceAddressPrefix": []string{"198.51.100.0/24", "203.0.113.9"}}), &long)
	lrule := long.Grants[0].RuleName
	waitFor(t, 5*time.Second, "allow rule in nsg-vm-nic", func() bool { _, ok := p.nsgRules("nsg-vm-nic")[lrule]; return ok })
	// "My IP": no prefix means the caller's own address.
	var mine requestRec
	p.must(202, "POST", "/api/v1/policies/demo/initiate", initiateBody("vm-subnet-nsg", 22, map[string]any{"duration": "PT3S"}), &mine)
	if got := mine.VirtualMachines[0].Ports[0].Source; got != "127.0.0.1" {
		t.Errorf("My IP source = %q, want 127.0.0.1", got)
	}
	p.must(200, "POST", "/api/v1/requests/"+long.ID+"/revoke", nil, &long)
	took := waitFor(t, 5*time.Second, "revoked rule removed", func() bool { _, ok := p.nsgRules("nsg-vm-nic")[lrule]; return !ok })
	t.Logf("revoked rule removed %s after the revoke", took)
	if st := long.VirtualMachines[0].Ports[0]; st.Status != "Revoked" || st.StatusReason != "UserRequested" {
		t.Errorf("revoked port status %s/%s", st.Status, st.StatusReason)
	}
	p.must(409, "POST", "/api/v1/requests/"+long.ID+"/revoke", nil, nil)
	p.must(200, "POST", "/api/v1/requests/"+mine.ID+"/revoke", nil, nil)
	waitFor(t, 5*time.Second, "revoke of the short grant closed", func() bool { return closesOf(p, "vm-subnet-nsg", mine.ID) == 1 })
	mineEnd := mine.VirtualMachines[0].Ports[0].EndTimeUtc

	// A refused request is audited too.
	p.must(400, "POST", "/api/v1/policies/demo/initiate", initiateBody("vm-nic-nsg", 8080, map[string]any{"duration": "PT10M"}), nil)

	// 5. The VM list.
	var vms struct {
		Value []struct {
			Name       string     `json:"name"`
			State      string     `json:"state"`
			Reason     string     `json:"reason"`
			Approved   int        `json:"approvedRequestsLast7Days"`
			LastUser   string     `json:"lastUser"`
			LastAccess *time.Time `json:"lastAccessTimeUtc"`
			OpenPorts  []struct {
				Number int `json:"number"`
			} `json:"openPorts"`
			NSGs []struct {
				ID    string `json:"id"`
				Scope string `json:"scope"`
			} `json:"networkSecurityGroups"`
		} `json:"value"`
	}
	var open requestRec
	p.must(202, "POST", "/api/v1/policies/demo/initiate", initiateBody("vm-both-nsg", 3389, map[string]any{"duration": "PT30M", "allowedSourceAddressPrefix": "192.0.2.1"}), &open)
	waitFor(t, 5*time.Second, "3389 open on vm-both-nsg", func() bool {
		p.must(200, "GET", "/api/v1/requests/"+open.ID, nil, &open)
		return open.VirtualMachines[0].Ports[0].Status == "Initiated"
	})
	if _, ok := p.nsgRules("nsg-vm-both")[open.Grants[0].RuleName]; !ok {
		t.Fatalf("request says Initiated but the rule is not in nsg-vm-both")
	}
	p.must(200, "GET", "/api/v1/vms", nil, &vms)
	states := map[string]string{}
	for _, v := range vms.Value {
		states[v.Name] = v.State
		switch v.Name {
		case "vm-no-nsg":
			if v.State != "Unsupported" || !strings.Contains(v.Reason, "network security group") {
				t.Errorf("vm-no-nsg: %+v", v)
			}
		case "vm-both-nsg":
			if v.State != "Configured" || v.Approved != 2 || v.LastUser == "" || v.LastAccess == nil || len(v.NSGs) != 2 {
				t.Errorf("vm-both-nsg: %+v", v)
			}
			if len(v.OpenPorts) != 1 || v.OpenPorts[0].Number != 3389 {
				t.Errorf("vm-both-nsg open ports: %+v", v.OpenPorts)
			}
		case "vm-nic-nsg":
			if v.State != "Configured" || v.Approved != 1 || len(v.OpenPorts) != 0 {
				t.Errorf("vm-nic-nsg: %+v", v)
			}
		}
	}
	if len(states) != 4 {
		t.Errorf("VM list: %v", states)
	}

	// 6. The audit trail, as JSON filtered by VM and as CSV.
	var audit struct {
		Value []struct {
			Action string    `json:"action"`
			Result string    `json:"result"`
			Actor  string    `json:"actor"`
			VM     string    `json:"vm"`
			Time   time.Time `json:"timeUtc"`
			Ports  []int     `json:"ports"`
		} `json:"value"`
	}
	p.must(200, "GET", "/api/v1/audit?vm="+vmID("vm-nic-nsg"), nil, &audit)
	actions := map[string]int{}
	for i, ev := range audit.Value {
		if !strings.EqualFold(ev.VM, vmID("vm-nic-nsg")) {
			t.Errorf("audit filtered by VM returned %s", ev.VM)
		}
		if i > 0 && ev.Time.After(audit.Value[i-1].Time) {
			t.Errorf("audit not newest first at %d", i)
		}
		actions[ev.Action]++
	}
	for _, a := range []string{"lockdown", "request", "open", "close", "revoke", "refused"} {
		if actions[a] == 0 {
			t.Errorf("audit for vm-nic-nsg lacks %q events: %v", a, actions)
		}
	}
	p.must(200, "GET", "/api/v1/audit?from="+time.Now().Add(time.Hour).UTC().Format(time.RFC3339), nil, &audit)
	if len(audit.Value) != 0 {
		t.Errorf("audit from the future returned %d events", len(audit.Value))
	}
	csvBody := p.must(200, "GET", "/api/v1/audit?format=csv", nil, nil)
	rows, err := csv.NewReader(bytes.NewReader(csvBody)).ReadAll()
	if err != nil {
		t.Fatalf("CSV: %v", err)
	}
	if rows[0][0] != "time_utc" || len(rows) < 10 {
		t.Fatalf("CSV has %d rows, header %v", len(rows), rows[0])
	}
	seen := map[string]bool{}
	for _, row := range rows[1:] {
		seen[row[1]] = true
	}
	for _, a := range []string{"policy.put", "lockdown", "request", "open", "close", "revoke", "refused"} {
		if !seen[a] {
			t.Errorf("CSV lacks %q rows", a)
		}
	}

	// 7. Crash mid-grant: the grant still closes on time after a restart,
	// and a grant that ended while the process was down closes at start-up.
	var a, b requestRec
	p.must(202, "POST", "/api/v1/policies/demo/initiate", initiateBody("vm-subnet-nsg", 22, map[string]any{"duration": "PT4S", "allowedSourceAddressPrefix": "203.0.113.10"}), &a)
	p.must(202, "POST", "/api/v1/policies/demo/initiate", initiateBody("vm-nic-nsg", 22, map[string]any{"duration": "PT2S", "allowedSourceAddressPrefix": "203.0.113.11"}), &b)
	waitFor(t, 5*time.Second, "both rules open", func() bool {
		_, x := p.nsgRules("nsg-subnet-protected")[a.Grants[0].RuleName]
		_, y := p.nsgRules("nsg-vm-nic")[b.Grants[0].RuleName]
		return x && y
	})
	var calls callKinds
	calls.addStats(p.base)
	p.kill()
	endB := b.VirtualMachines[0].Ports[0].EndTimeUtc
	time.Sleep(time.Until(endB) + 500*time.Millisecond) // b ends while the process is down
	p = startLocal(t, dataDir, addr)
	if _, ok := p.nsgRules("nsg-subnet-protected")[a.Grants[0].RuleName]; !ok && time.Now().Before(a.VirtualMachines[0].Ports[0].EndTimeUtc.Add(-time.Second)) {
		t.Errorf("rule of a live grant lost across the restart")
	}
	took = waitFor(t, 5*time.Second, "overdue grant closed at start-up", func() bool { _, ok := p.nsgRules("nsg-vm-nic")[b.Grants[0].RuleName]; return !ok })
	t.Logf("overdue grant closed %s after restart", took)
	endA := a.VirtualMachines[0].Ports[0].EndTimeUtc
	waitFor(t, time.Until(endA)+10*time.Second, "live grant closed on time after restart", func() bool {
		_, ok := p.nsgRules("nsg-subnet-protected")[a.Grants[0].RuleName]
		return !ok
	})
	if lag := time.Since(endA); lag < -time.Second {
		t.Errorf("closed %s early", -lag)
	} else {
		t.Logf("live grant closed %s after its end time, across a restart", lag)
	}
	// The policy and the audit trail survived too.
	p.must(200, "GET", "/api/v1/policies/demo", nil, nil)
	// The revoked grant's scheduled close fell due long ago (across a
	// restart): it was a no-op, not a second close.
	if time.Now().Before(mineEnd.Add(time.Second)) {
		t.Fatalf("the test ran faster than the revoked grant's end time %s", mineEnd)
	}
	if n := closesOf(p, "vm-subnet-nsg", mine.ID); n != 1 {
		t.Errorf("revoked request %s has %d close events after its scheduled close fell due, want 1", mine.ID, n)
	}
	calls.addStats(p.base)
	calls.checkRoleCovers(t)
}

// closesOf counts the close events of one request in a VM's audit trail.
func closesOf(p *proc, vm, request string) int {
	var out struct {
		Value []struct {
			Action  string `json:"action"`
			Request string `json:"request"`
		} `json:"value"`
	}
	p.must(200, "GET", "/api/v1/audit?vm="+vmID(vm), nil, &out)
	n := 0
	for _, ev := range out.Value {
		if ev.Action == "close" && ev.Request == request {
			n++
		}
	}
	return n
}
