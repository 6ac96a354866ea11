package httpapi_test

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"jitaccess/handler/jit"
)

type recordedNotifications struct {
	mu   sync.Mutex
	got  []jit.Notification
	fail int // refuse this many deliveries first (503-like)
}

func (r *recordedNotifications) Deliver(_ context.Context, n jit.Notification) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail > 0 {
		r.fail--
		return errors.New("receiver busy (injected)")
	}
	r.got = append(r.got, n)
	return nil
}

func (r *recordedNotifications) events(request string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, n := range r.got {
		if n.Request == request {
			out = append(out, n.Event)
		}
	}
	return out
}

func TestApprovalFlow(t *testing.T) {
	notes := &recordedNotifications{}
	s := newStack(t, stackOptions{pendingExpiry: 2 * time.Second, notifier: notes})
	admin := easyAuth("admin-0", []string{jit.RoleAdmin})
	alice := easyAuth("alice", []string{jit.RoleRequester, jit.RoleApprover}) // may approve others, not herself
	bob := easyAuth("bob", []string{jit.RoleApprover})
	carol := easyAuth("carol", []string{jit.RoleApprover}, "group-oncall")
	s.must(200, admin, "PUT", "/api/v1/policies/gated", policyBody("vm-nic-nsg", map[string]any{
		"approval": map[string]any{"required": true, "approvers": []string{"bob", "group-oncall", "alice"}}}), nil)
	nic := nsgID("nsg-vm-nic")
	hasRule := func(name string) bool { return slices.Contains(s.sim.RuleNames(nic), name) }

	// Pending: nothing opens until an approver approves.
	var r request
	s.must(202, alice, "POST", "/api/v1/policies/gated/initiate", initiate("vm-nic-nsg", "PT2S"), &r)
	if r.Status != "Pending" || r.VirtualMachines[0].Ports[0].Status != "Pending" {
		t.Fatalf("status %s / %s, want Pending", r.Status, r.VirtualMachines[0].Ports[0].Status)
	}
	time.Sleep(100 * time.Millisecond)
	if hasRule(r.Grants[0].RuleName) {
		t.Fatal("a pending request opened a rule")
	}
	// An open operation for it, however it reached the worker, opens nothing.
	if err := s.worker.ApplyOperations(t.Context(), []jit.Operation{{ID: "forged", Kind: jit.OpOpen, RequestID: r.ID, Grant: 0, NSG: nic}})[0]; err != nil {
		t.Fatal(err)
	}
	if hasRule(r.Grants[0].RuleName) {
		t.Fatal("an open operation opened a rule of a pending request")
	}
	// Self-approval is refused, whatever roles the requestor has.
	if code, body := s.do(alice, "POST", "/api/v1/requests/"+r.ID+"/approve", nil, nil); code != 403 || !strings.Contains(body, "your own request") {
		t.Fatalf("self-approval: %d %s", code, body)
	}
	// An approver not in the list is refused.
	if code, _ := s.do(easyAuth("dave", []string{jit.RoleApprover}), "POST", "/api/v1/requests/"+r.ID+"/approve", nil, nil); code != 403 {
		t.Fatalf("approval by someone not listed: %d", code)
	}
	// A second person approves: it opens, with the clock starting now.
	approvedAt := time.Now()
	s.must(200, bob, "POST", "/api/v1/requests/"+r.ID+"/approve", map[string]any{"comment": "ok for the patch window"}, &r)
	if r.Status != "Active" || len(r.Approval.Decisions) != 1 || r.Approval.Decisions[0].By != "bob" {
		t.Fatalf("after approval: %+v", r)
	}
	waitFor(t, "rule open after approval", func() bool { return hasRule(r.Grants[0].RuleName) })
	s.must(409, carol, "POST", "/api/v1/requests/"+r.ID+"/approve", nil, nil) // no longer pending
	waitFor(t, "rule closed at the end", func() bool { return !hasRule(r.Grants[0].RuleName) })
	if lived := time.Since(approvedAt); lived < 1800*time.Millisecond {
		t.Errorf("the grant lasted %s: its clock must start at approval", lived)
	}
	waitFor(t, "notifications", func() bool {
		return slices.Equal(notes.events(r.ID), []string{"pending", "approved", "opened", "closed"})
	})

	// Deny: nothing ever opens.
	var d request
	s.must(202, alice, "POST", "/api/v1/policies/gated/initiate", initiate("vm-nic-nsg", "PT1H"), &d)
	s.must(200, carol, "POST", "/api/v1/requests/"+d.ID+"/deny", map[string]any{"comment": "not during the freeze"}, &d) // via group
	if d.Status != "Denied" || d.VirtualMachines[0].Ports[0].StatusReason != "Denied" {
		t.Fatalf("after deny: %+v", d)
	}
	s.must(409, bob, "POST", "/api/v1/requests/"+d.ID+"/approve", nil, nil)
	time.Sleep(100 * time.Millisecond)
	if hasRule(d.Grants[0].RuleName) {
		t.Fatal("a denied request opened a rule")
	}

	// Expiry: a pending request nobody decides on expires at the next sweep.
	var e request
	s.must(202, alice, "POST", "/api/v1/policies/gated/initiate", initiate("vm-nic-nsg", "PT1H"), &e)
	time.Sleep(2100 * time.Millisecond)
	if _, err := s.rec.Sweep(t.Context()); err != nil {
		t.Fatal(err)
	}
	s.must(200, admin, "GET", "/api/v1/requests/"+e.ID, nil, &e)
	if e.Status != "Expired" {
		t.Fatalf("pending request past its expiry: status %s", e.Status)
	}
	s.must(409, bob, "POST", "/api/v1/requests/"+e.ID+"/approve", nil, nil)

	// Two approvals needed: the first does not open.
	s.must(200, admin, "PUT", "/api/v1/policies/gated", policyBody("vm-nic-nsg", map[string]any{
		"approval": map[string]any{"required": true, "minApprovals": 2}}), nil)
	var two request
	s.must(202, alice, "POST", "/api/v1/policies/gated/initiate", initiate("vm-nic-nsg", "PT1H"), &two)
	s.must(200, bob, "POST", "/api/v1/requests/"+two.ID+"/approve", nil, &two)
	if two.Status != "Pending" {
		t.Fatalf("after one of two approvals: %s", two.Status)
	}
	s.must(409, bob, "POST", "/api/v1/requests/"+two.ID+"/approve", nil, nil) // the same approver twice
	s.must(200, carol, "POST", "/api/v1/requests/"+two.ID+"/approve", nil, &two)
	if two.Status != "Active" {
		t.Fatalf("after two approvals: %s", two.Status)
	}
	waitFor(t, "rule open after the second approval", func() bool { return hasRule(two.Grants[0].RuleName) })

	// Every step is in the audit trail.
	var audit struct {
		Value []struct {
			Action  string `json:"action"`
			Actor   string `json:"actor"`
			Request string `json:"request"`
		} `json:"value"`
	}
	s.must(200, admin, "GET", "/api/v1/audit", nil, &audit)
	seen := map[string]bool{}
	for _, ev := range audit.Value {
		seen[ev.Action+"/"+ev.Actor] = true
	}
	for _, want := range []string{"request/alice", "approve/bob", "deny/carol", "expire/jitaccess", "open/jitaccess", "close/jitaccess"} {
		if !seen[want] {
			t.Errorf("audit lacks %s", want)
		}
	}
}

func TestDelegationRequestersAndMyIP(t *testing.T) {
	proxy := netip.MustParsePrefix("127.0.0.0/8")
	s := newStack(t, stackOptions{trustedProxies: []netip.Prefix{proxy}})
	admin := easyAuth("admin-0", []string{jit.RoleAdmin})
	s.must(200, admin, "PUT", "/api/v1/policies/narrow", policyBody("vm-nic-nsg", map[string]any{"requesters": []string{"group-ops", erinOID}}), nil)

	body := func(onBehalfOf string) map[string]any {
		b := initiate("vm-nic-nsg", "PT10M")
		if onBehalfOf != "" {
			b["onBehalfOf"] = onBehalfOf
		}
		return b
	}
	// Only listed requesters (by id or group) may ask.
	s.must(403, easyAuth("frank", []string{jit.RoleRequester}), "POST", "/api/v1/policies/narrow/initiate", body(""), nil)
	s.must(202, easyAuth("gina", []string{jit.RoleRequester}, "group-ops"), "POST", "/api/v1/policies/narrow/initiate", body(""), nil)
	// A bot without the delegate role may not ask for someone else.
	s.must(403, easyAuth("bot", []string{jit.RoleRequester}), "POST", "/api/v1/policies/narrow/initiate", body(erinOID), nil)
	// With it, it may; the person must still be a listed requester.
	bot := easyAuth("bot", []string{jit.RoleRequester, jit.RoleDelegate})
	s.must(403, bot, "POST", "/api/v1/policies/narrow/initiate", body("6ba7b810-9dad-11d1-80b4-00c04fd430c8"), nil) // not a listed requester
	var r struct {
		RequestorID string `json:"requestorId"`
		SubmittedBy string `json:"submittedBy"`
	}
	s.must(202, bot, "POST", "/api/v1/policies/narrow/initiate", body(erinOID), &r)
	if r.RequestorID != erinOID || r.SubmittedBy != "bot" {
		t.Errorf("delegated request: %+v", r)
	}

	// "My IP" follows X-Forwarded-For only from a trusted proxy (the test
	// client connects from 127.0.0.1, which is trusted here).
	my := initiate("vm-nic-nsg", "PT10M")
	delete(my["virtualMachines"].([]any)[0].(map[string]any)["ports"].([]any)[0].(map[string]any), "allowedSourceAddressPrefix")
	var got request
	s.must(202, append(easyAuth(erinOID, []string{jit.RoleRequester}), "X-Forwarded-For", "198.51.100.20, 127.0.0.1"), "POST", "/api/v1/policies/narrow/initiate", my, &got)
	if src := got.VirtualMachines[0].Ports[0].Source; src != "198.51.100.20" {
		t.Errorf("source behind a trusted proxy = %s, want 198.51.100.20", src)
	}
	s.must(202, append(easyAuth(erinOID, []string{jit.RoleRequester}), "X-Forwarded-For", "not-an-ip"), "POST", "/api/v1/policies/narrow/initiate", my, &got)
	if src := got.VirtualMachines[0].Ports[0].Source; src != "127.0.0.1" {
		t.Errorf("source with a broken X-Forwarded-For = %s, want the peer 127.0.0.1", src)
	}
	untrusted := newStack(t, stackOptions{})
	untrusted.must(200, admin, "PUT", "/api/v1/policies/p", policyBody("vm-nic-nsg", nil), nil)
	untrusted.must(202, append(easyAuth("erin", []string{jit.RoleRequester}), "X-Forwarded-For", "198.51.100.20"), "POST", "/api/v1/policies/p/initiate", my, &got)
	if src := got.VirtualMachines[0].Ports[0].Source; src != "127.0.0.1" {
		t.Errorf("X-Forwarded-For believed from an untrusted peer: source %s", src)
	}
}

// A request approved long after it was made gets the full StuckAfter to open,
// counted from the approval; and a pending request cannot be extended.
func TestLateApprovalIsNotStuck(t *testing.T) {
	s := newStack(t, stackOptions{stuckAfter: time.Second, dropOpens: true, pendingExpiry: time.Hour})
	admin := easyAuth("admin-0", []string{jit.RoleAdmin})
	alice := easyAuth("alice", []string{jit.RoleRequester})
	bob := easyAuth("bob", []string{jit.RoleApprover})
	s.must(200, admin, "PUT", "/api/v1/policies/gated", policyBody("vm-nic-nsg", map[string]any{
		"approval": map[string]any{"required": true, "approvers": []string{"bob"}}}), nil)
	var r request
	s.must(202, alice, "POST", "/api/v1/policies/gated/initiate", initiate("vm-nic-nsg", "PT1H"), &r)
	if code, body := s.do(alice, "POST", "/api/v1/requests/"+r.ID+"/extend", map[string]any{"duration": "PT2H"}, nil); code != 409 {
		t.Errorf("extending a pending request: %d %s, want 409", code, body)
	}
	time.Sleep(1200 * time.Millisecond) // longer than StuckAfter since the request was made
	s.must(200, bob, "POST", "/api/v1/requests/"+r.ID+"/approve", nil, &r)
	rep, err := s.rec.Reconcile(t.Context())
	if err != nil || rep.Stuck != 0 {
		t.Fatalf("sweep just after a late approval: %+v, %v; want nothing stuck", rep, err)
	}
	time.Sleep(1100 * time.Millisecond) // the open (dropped) never happened within StuckAfter of the approval
	if rep, err = s.rec.Reconcile(t.Context()); err != nil || rep.Stuck != 1 {
		t.Fatalf("sweep StuckAfter after the approval: %+v, %v; want the open given up", rep, err)
	}
}

// Object ids as sign-in gives them.
const (
	aliceOID = "0f8fad5b-d9cb-469f-a165-70867728950e"
	erinOID  = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
	// approverOID is the authorization matrix's approver.
	approverOID = "9b2c1d4e-5f60-4a7b-8c9d-0e1f2a3b4c5d"
)

// portBody is one port of a policy body, with its own approval when
// approvers is not nil.
func portBody(number int, sources string, approvers []string) map[string]any {
	p := map[string]any{"number": number, "protocol": "TCP", "allowedSourceAddressPrefix": sources, "maxRequestAccessDuration": "PT2H"}
	if approvers != nil {
		p["approval"] = map[string]any{"required": true, "approvers": approvers}
	}
	return p
}

func policyWithPorts(vm string, approval map[string]any, ports ...map[string]any) map[string]any {
	ps := make([]any, len(ports))
	for i, p := range ports {
		ps[i] = p
	}
	props := map[string]any{"virtualMachines": []any{map[string]any{"id": vmID(vm), "ports": ps}}}
	if approval != nil {
		props["approval"] = approval
	}
	return map[string]any{"properties": props}
}

func initiatePorts(vm, duration string, ports ...int) map[string]any {
	ps := make([]any, len(ports))
	for i, n := range ports {
		ps[i] = map[string]any{"number": n, "duration": duration, "allowedSourceAddressPrefix": "203.0.113.7"}
	}
	return map[string]any{"virtualMachines": []any{map[string]any{"id": vmID(vm), "ports": ps}}, "justification": "test"}
}

// An approved request cannot be extended past what was approved: a longer
// extension would need a new approval.
func TestExtendStaysWithinApproval(t *testing.T) {
	notes := &recordedNotifications{}
	s := newStack(t, stackOptions{notifier: notes})
	admin := easyAuth("admin-0", []string{jit.RoleAdmin})
	alice := easyAuth("alice", []string{jit.RoleRequester})
	bob := easyAuth("bob", []string{jit.RoleApprover})
	s.must(200, admin, "PUT", "/api/v1/policies/gated", policyWithPorts("vm-nic-nsg",
		map[string]any{"required": true, "approvers": []string{"bob"}}, portBody(22, "*", nil)), nil)
	var r request
	s.must(202, alice, "POST", "/api/v1/policies/gated/initiate", initiate("vm-nic-nsg", "PT5M"), &r)
	s.must(200, bob, "POST", "/api/v1/requests/"+r.ID+"/approve", nil, &r)
	for _, who := range []struct {
		name   string
		caller as
	}{{"requestor", alice}, {"admin", admin}} {
		code, body := s.do(who.caller, "POST", "/api/v1/requests/"+r.ID+"/extend", map[string]any{"duration": "PT2H"}, nil)
		if code != 403 || !strings.Contains(body, "approv") {
			t.Errorf("%s extending an approved PT5M to PT2H: %d %s, want 403 saying it needs approval", who.name, code, body)
		}
	}
	// Within what was approved, it may still move its end.
	s.must(200, alice, "POST", "/api/v1/requests/"+r.ID+"/extend", map[string]any{"duration": "PT2M"}, nil)
	s.must(200, alice, "POST", "/api/v1/requests/"+r.ID+"/extend", map[string]any{"duration": "PT4M"}, nil)
	s.must(403, alice, "POST", "/api/v1/requests/"+r.ID+"/extend", map[string]any{"duration": "PT10M"}, nil)

	// A request that needed no approval extends up to the port's maximum.
	s.must(200, admin, "PUT", "/api/v1/policies/open", policyWithPorts("vm-subnet-nsg", nil, portBody(22, "*", nil)), nil)
	var o request
	s.must(202, alice, "POST", "/api/v1/policies/open/initiate", initiate("vm-subnet-nsg", "PT5M"), &o)
	s.must(200, alice, "POST", "/api/v1/requests/"+o.ID+"/extend", map[string]any{"duration": "PT2H"}, nil)
}

// A port's own approvers replace the policy's for that port: a policy-level
// approver cannot open a port that names its own, and a request over ports
// with different approvers needs each port's approvers.
// TestApproversFollowThePolicy: a port that gains stricter approvers
// while a request waits is approved by the new ones, not the old.
func TestApproversFollowThePolicy(t *testing.T) {
	s := newStack(t, stackOptions{})
	admin := easyAuth("admin-0", []string{jit.RoleAdmin})
	alice := easyAuth("alice", []string{jit.RoleRequester})
	lead := easyAuth("lena", []string{jit.RoleApprover}, "team-leads")
	sec := easyAuth("sam", []string{jit.RoleApprover}, "secops")
	s.must(200, admin, "PUT", "/api/v1/policies/p", policyWithPorts("vm-nic-nsg",
		map[string]any{"required": true, "approvers": []string{"team-leads"}}, portBody(22, "*", nil)), nil)
	var r request
	s.must(202, alice, "POST", "/api/v1/policies/p/initiate", initiatePorts("vm-nic-nsg", "PT1H", 22), &r)
	// Security makes port 22 theirs while the request waits.
	s.must(200, admin, "PUT", "/api/v1/policies/p", policyWithPorts("vm-nic-nsg",
		map[string]any{"required": true, "approvers": []string{"team-leads"}}, portBody(22, "*", []string{"secops"})), nil)
	if code, body := s.do(lead, "POST", "/api/v1/requests/"+r.ID+"/approve", nil, nil); code != 403 || !strings.Contains(body, "changed with its policy") {
		t.Fatalf("a team-leads approval after port 22 became secops': %d %s, want 403", code, body)
	}
	s.must(200, sec, "POST", "/api/v1/requests/"+r.ID+"/approve", nil, &r)
	if r.Status != "Active" {
		t.Fatalf("after the secops approval: %s", r.Status)
	}
}

func TestPortApproversAreNotLoosened(t *testing.T) {
	s := newStack(t, stackOptions{})
	admin := easyAuth("admin-0", []string{jit.RoleAdmin})
	alice := easyAuth("alice", []string{jit.RoleRequester})
	lead := easyAuth("lena", []string{jit.RoleApprover}, "team-leads")
	sec := easyAuth("sam", []string{jit.RoleApprover}, "secops")
	s.must(200, admin, "PUT", "/api/v1/policies/rdp", policyWithPorts("vm-nic-nsg",
		map[string]any{"required": true, "approvers": []string{"team-leads"}},
		portBody(22, "*", nil), portBody(3389, "*", []string{"secops"})), nil)

	var rdp request
	s.must(202, alice, "POST", "/api/v1/policies/rdp/initiate", initiatePorts("vm-nic-nsg", "PT1H", 3389), &rdp)
	if code, body := s.do(lead, "POST", "/api/v1/requests/"+rdp.ID+"/approve", nil, &rdp); code != 403 {
		t.Fatalf("a team-leads approval of RDP (port approvers secops): %d %s, want 403", code, body)
	}
	s.must(200, sec, "POST", "/api/v1/requests/"+rdp.ID+"/approve", nil, &rdp)
	if rdp.Status != "Active" {
		t.Fatalf("RDP after the secops approval: %s", rdp.Status)
	}

	var ssh request
	s.must(202, alice, "POST", "/api/v1/policies/rdp/initiate", initiatePorts("vm-nic-nsg", "PT1H", 22), &ssh)
	s.must(403, sec, "POST", "/api/v1/requests/"+ssh.ID+"/approve", nil, nil)
	s.must(200, lead, "POST", "/api/v1/requests/"+ssh.ID+"/approve", nil, &ssh)
	if ssh.Status != "Active" {
		t.Fatalf("SSH after the team-leads approval: %s", ssh.Status)
	}

	// Both ports: one approval from each set.
	var both request
	s.must(202, alice, "POST", "/api/v1/policies/rdp/initiate", initiatePorts("vm-nic-nsg", "PT1H", 22, 3389), &both)
	s.must(200, lead, "POST", "/api/v1/requests/"+both.ID+"/approve", nil, &both)
	if both.Status != "Pending" {
		t.Fatalf("SSH+RDP after only a team-leads approval: %s, want Pending", both.Status)
	}
	s.must(200, sec, "POST", "/api/v1/requests/"+both.ID+"/approve", nil, &both)
	if both.Status != "Active" {
		t.Fatalf("SSH+RDP after both approvals: %s", both.Status)
	}
}

// An approval checks the request against the policy as it is now: a request
// the policy no longer allows is refused and closed, and nothing opens.
func TestApprovalRechecksThePolicy(t *testing.T) {
	s := newStack(t, stackOptions{})
	admin := easyAuth("admin-0", []string{jit.RoleAdmin})
	alice := easyAuth("alice", []string{jit.RoleRequester})
	bob := easyAuth("bob", []string{jit.RoleApprover})
	gate := map[string]any{"required": true, "approvers": []string{"bob"}}
	both := policyWithPorts("vm-nic-nsg", gate, portBody(22, "*", nil), portBody(3389, "*", nil))
	for _, c := range []struct {
		name   string
		change func()
		reason string
	}{
		{"policy deleted", func() { s.must(202, admin, "DELETE", "/api/v1/policies/p", nil, nil) }, "policy"},
		{"sources narrowed", func() {
			s.must(200, admin, "PUT", "/api/v1/policies/p", policyWithPorts("vm-nic-nsg", gate, portBody(22, "10.0.0.0/8", nil), portBody(3389, "*", nil)), nil)
		}, "source"},
		{"port removed", func() {
			s.must(200, admin, "PUT", "/api/v1/policies/p", policyWithPorts("vm-nic-nsg", gate, portBody(3389, "*", nil)), nil)
		}, "port 22"},
		{"maximum shortened", func() {
			short := portBody(22, "*", nil)
			short["maxRequestAccessDuration"] = "PT30M"
			s.must(200, admin, "PUT", "/api/v1/policies/p", policyWithPorts("vm-nic-nsg", gate, short, portBody(3389, "*", nil)), nil)
		}, "maximum"},
		{"VM removed", func() {
			s.must(200, admin, "PUT", "/api/v1/policies/p", policyWithPorts("vm-subnet-nsg", gate, portBody(22, "*", nil)), nil)
		}, "VM"},
	} {
		t.Run(c.name, func(t *testing.T) {
			waitFor(t, "an earlier deletion to finish", func() bool {
				code, body := s.do(admin, "GET", "/api/v1/policies/p", nil, nil)
				return code == 404 || !strings.Contains(body, `"provisioningState":"Deleting"`)
			})
			s.must(200, admin, "PUT", "/api/v1/policies/p", both, nil)
			var r request
			s.must(202, alice, "POST", "/api/v1/policies/p/initiate", initiate("vm-nic-nsg", "PT1H"), &r)
			c.change()
			code, body := s.do(bob, "POST", "/api/v1/requests/"+r.ID+"/approve", nil, nil)
			if code != 409 || !strings.Contains(body, c.reason) {
				t.Fatalf("approval after the change: %d %s, want 409 naming the %s", code, body, c.reason)
			}
			s.must(200, admin, "GET", "/api/v1/requests/"+r.ID, nil, &r)
			if r.Status != "Denied" || r.VirtualMachines[0].Ports[0].StatusReason != "PolicyChanged" {
				t.Errorf("request after the refused approval: %s / %s, want Denied / PolicyChanged", r.Status, r.VirtualMachines[0].Ports[0].StatusReason)
			}
			time.Sleep(50 * time.Millisecond)
			if slices.Contains(s.sim.RuleNames(nsgID("nsg-vm-nic")), r.Grants[0].RuleName) {
				t.Error("a request the policy no longer allows opened a rule")
			}
			var audit struct {
				Value []struct {
					Action  string `json:"action"`
					Request string `json:"request"`
					Detail  string `json:"detail"`
				} `json:"value"`
			}
			s.must(200, admin, "GET", "/api/v1/audit", nil, &audit)
			if !slices.ContainsFunc(audit.Value, func(ev struct {
				Action  string `json:"action"`
				Request string `json:"request"`
				Detail  string `json:"detail"`
			}) bool {
				return ev.Request == r.ID && ev.Action == "withdraw" && strings.Contains(ev.Detail, c.reason)
			}) {
				t.Errorf("the audit lacks the withdrawal of %s: %+v", r.ID, audit.Value)
			}
		})
	}
}

// onBehalfOf takes the object id sign-in gives, so the person named cannot
// approve the request under their own id.
func TestDelegatedRequestsNameObjectIDs(t *testing.T) {
	s := newStack(t, stackOptions{})
	admin := easyAuth("admin-0", []string{jit.RoleAdmin})
	bot := easyAuth("bot", []string{jit.RoleRequester, jit.RoleDelegate})
	s.must(200, admin, "PUT", "/api/v1/policies/gated", policyBody("vm-nic-nsg", map[string]any{
		"approval": map[string]any{"required": true}}), nil)
	for _, name := range []string{"alice@contoso.com", "alice", "{" + aliceOID + "}", aliceOID + "x"} {
		b := initiate("vm-nic-nsg", "PT1H")
		b["onBehalfOf"] = name
		if code, body := s.do(bot, "POST", "/api/v1/policies/gated/initiate", b, nil); code != 400 || !strings.Contains(body, "object id") {
			t.Errorf("onBehalfOf %q: %d %s, want 400 asking for the object id", name, code, body)
		}
	}
	b := initiate("vm-nic-nsg", "PT1H")
	b["onBehalfOf"] = strings.ToUpper(aliceOID)
	var r struct {
		request
		RequestorID string `json:"requestorId"`
	}
	s.must(202, bot, "POST", "/api/v1/policies/gated/initiate", b, &r)
	if r.RequestorID != aliceOID {
		t.Errorf("requestor %s, want the canonical %s", r.RequestorID, aliceOID)
	}
	alice := easyAuth(aliceOID, []string{jit.RoleApprover})
	if code, body := s.do(alice, "POST", "/api/v1/requests/"+r.ID+"/approve", nil, nil); code != 403 || !strings.Contains(body, "your own request") {
		t.Errorf("alice approving the request made for her: %d %s", code, body)
	}
	botApprover := easyAuth("bot", []string{jit.RoleApprover})
	if code, body := s.do(botApprover, "POST", "/api/v1/requests/"+r.ID+"/approve", nil, nil); code != 403 || !strings.Contains(body, "your own request") {
		t.Errorf("the delegate approving what it submitted: %d %s", code, body)
	}
	s.must(200, easyAuth("bob", []string{jit.RoleApprover}), "POST", "/api/v1/requests/"+r.ID+"/approve", nil, nil)
}
