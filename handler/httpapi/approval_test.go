package httpapi_test

import (
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"jitaccess/handler/jit"
)

type recordedNotifications struct {
	mu  sync.Mutex
	got []jit.Notification
}

func (r *recordedNotifications) Notify(n jit.Notification) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, n)
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
	if err := s.svc.ApplyOperation(t.Context(), jit.Operation{ID: "forged", Kind: jit.OpOpen, RequestID: r.ID, Grant: 0, NSG: nic}); err != nil {
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
	if _, err := s.svc.Sweep(t.Context()); err != nil {
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
	s.must(200, admin, "PUT", "/api/v1/policies/narrow", policyBody("vm-nic-nsg", map[string]any{"requesters": []string{"group-ops", "erin"}}), nil)

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
	s.must(403, easyAuth("bot", []string{jit.RoleRequester}), "POST", "/api/v1/policies/narrow/initiate", body("erin"), nil)
	// With it, it may; the person must still be a listed requester.
	bot := easyAuth("bot", []string{jit.RoleRequester, jit.RoleDelegate})
	s.must(403, bot, "POST", "/api/v1/policies/narrow/initiate", body("frank"), nil)
	var r struct {
		RequestorID string `json:"requestorId"`
		SubmittedBy string `json:"submittedBy"`
	}
	s.must(202, bot, "POST", "/api/v1/policies/narrow/initiate", body("erin"), &r)
	if r.RequestorID != "erin" || r.SubmittedBy != "bot" {
		t.Errorf("delegated request: %+v", r)
	}

	// "My IP" follows X-Forwarded-For only from a trusted proxy (the test
	// client connects from 127.0.0.1, which is trusted here).
	my := initiate("vm-nic-nsg", "PT10M")
	delete(my["virtualMachines"].([]any)[0].(map[string]any)["ports"].([]any)[0].(map[string]any), "allowedSourceAddressPrefix")
	var got request
	s.must(202, append(easyAuth("erin", []string{jit.RoleRequester}), "X-Forwarded-For", "198.51.100.20, 127.0.0.1"), "POST", "/api/v1/policies/narrow/initiate", my, &got)
	if src := got.VirtualMachines[0].Ports[0].Source; src != "198.51.100.20" {
		t.Errorf("source behind a trusted proxy = %s, want 198.51.100.20", src)
	}
	s.must(202, append(easyAuth("erin", []string{jit.RoleRequester}), "X-Forwarded-For", "not-an-ip"), "POST", "/api/v1/policies/narrow/initiate", my, &got)
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
	rep, err := s.svc.Reconcile(t.Context())
	if err != nil || rep.Stuck != 0 {
		t.Fatalf("sweep just after a late approval: %+v, %v; want nothing stuck", rep, err)
	}
	time.Sleep(1100 * time.Millisecond) // the open (dropped) never happened within StuckAfter of the approval
	if rep, err = s.svc.Reconcile(t.Context()); err != nil || rep.Stuck != 1 {
		t.Fatalf("sweep StuckAfter after the approval: %+v, %v; want the open given up", rep, err)
	}
}
