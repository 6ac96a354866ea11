package e2etest

import (
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// The portal flows below were first tried by hand: deciding on pending
// requests, extending open access and disabling JIT. The page is driven as
// local mode's administrator (no identity headers, every role); other people
// act through the API with local mode's dev headers.

// alice is a requester who is not an approver.
var alice = []string{"X-Dev-Principal", "alice", "X-Dev-Roles", "JIT.Requester"}

// port22 is a policy port: SSH from anywhere for at most an hour.
func port22() map[string]any {
	return map[string]any{"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "*", "maxRequestAccessDuration": "PT1H"}
}

// getRequest reads a request through the API as the administrator.
func getRequest(p *proc, id string) requestRec {
	p.t.Helper()
	var r requestRec
	p.must(200, "GET", "/api/v1/requests/"+id, nil, &r)
	return r
}

// ruleIn says whether the NSG holds a rule of that name.
func ruleIn(p *proc, nsg, rule string) bool {
	p.t.Helper()
	_, ok := p.nsgRules(nsg)[rule]
	return ok
}

// guard is a VM's address behind one of the NSGs that guard it, in the demo
// estate.
type guard struct{ nsg, vm, ip string }

var (
	nicGuard        = guard{"nsg-vm-nic", "vm-nic-nsg", "10.10.1.4"}
	bothNICGuard    = guard{"nsg-vm-both", "vm-both-nsg", "10.10.2.5"}
	bothSubnetGuard = guard{"nsg-subnet-protected", "vm-both-nsg", "10.10.2.5"}
)

// locks says whether g's NSG holds a deny rule of ours closing port to g's VM.
func (g guard) locks(p *proc, port int) bool {
	p.t.Helper()
	return locked(p.nsgRules(g.nsg), g.ip, port)
}

// openPortal loads the page and waits until it has drawn the VM tables.
func openPortal(b *browser, p *proc) {
	b.t.Helper()
	b.step("loading the portal", 20*time.Second,
		chromedp.Navigate(p.base+"/"),
		chromedp.WaitVisible(chromedp.CSS(`body[data-ready]`)),
		chromedp.WaitReady(chromedp.CSS(`#table-unsupported tr[data-vm="vm-no-nsg"]`)),
	)
}

// TestPortalApprovals: alice asks for SSH on a VM whose policy needs an
// approval; the administrator approves one request and denies another in
// the page's Approvals tab, and the NSG shows exactly the approved access.
func TestPortalApprovals(t *testing.T) {
	t.Parallel()
	start := time.Now()
	p := startLocal(t, t.TempDir(), freeAddr(t))
	p.must(200, "PUT", "/api/v1/policies/guarded", map[string]any{"properties": map[string]any{
		"approval":        map[string]any{"required": true},
		"virtualMachines": []any{map[string]any{"id": vmID("vm-subnet-nsg"), "ports": []any{port22()}}},
	}}, nil)
	ask := func(source, why string) string {
		t.Helper()
		body := initiateBody("vm-subnet-nsg", 22, map[string]any{"duration": "PT10M", "allowedSourceAddressPrefix": source})
		body["justification"] = why
		var r requestRec
		p.must(202, "POST", "/api/v1/policies/guarded/initiate", body, &r, alice...)
		if r.Status != "Pending" {
			t.Fatalf("alice's request %s is %s, want Pending", r.ID, r.Status)
		}
		return r.ID
	}
	approveID := ask("203.0.113.7", "patch openssl")
	denyID := ask("203.0.113.8", "just curious")
	const nsg = "nsg-subnet-protected"
	if ruleIn(p, nsg, "jit-allow-"+approveID+"-0") || ruleIn(p, nsg, "jit-allow-"+denyID+"-0") {
		t.Fatalf("an allow rule is in %s before any approval", nsg)
	}

	b := startBrowser(t)
	openPortal(b, p)
	b.do("opening the approvals inbox",
		chromedp.WaitVisible(chromedp.CSS("#tab-approvals")),
		chromedp.Click(chromedp.CSS("#tab-approvals")),
		chromedp.WaitVisible(chromedp.CSS(`#table-approvals tr[data-request-id="`+approveID+`"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#table-approvals tr[data-request-id="`+denyID+`"]`)),
	)
	b.screenshot("approvals")
	if got := b.text("#count-approvals"); got != "(2)" {
		t.Errorf("approvals tab counts %q, want (2)", got)
	}
	row := b.text(`#table-approvals tr[data-request-id="` + approveID + `"]`)
	for _, want := range []string{"alice", "vm-subnet-nsg 22 from 203.0.113.7", "patch openssl"} {
		if !strings.Contains(row, want) {
			t.Errorf("the inbox row of %s says %q; want %q in it", approveID, row, want)
		}
	}

	b.do("approving the first request",
		chromedp.Click(chromedp.CSS(`#table-approvals tr[data-request-id="`+approveID+`"] button[data-key="approve:`+approveID+`"]`)),
		chromedp.WaitNotPresent(chromedp.CSS(`#table-approvals tr[data-request-id="`+approveID+`"]`)),
	)
	rule := "jit-allow-" + approveID + "-0"
	waitFor(t, 5*time.Second, "the approved request's rule in "+nsg, func() bool { return ruleIn(p, nsg, rule) })
	if r := getRequest(p, approveID); r.Status != "Active" {
		t.Errorf("approved request is %s, want Active", r.Status)
	}
	if r := p.nsgRules(nsg)[rule]; r.Properties.Access != "Allow" || r.Properties.SourceAddressPrefix != "203.0.113.7" {
		t.Errorf("rule %s in %s: %+v; want Allow from 203.0.113.7", rule, nsg, r.Properties)
	}

	// The last pending request decided, the tab goes away and the page
	// shows the requests instead.
	b.do("denying the second request",
		chromedp.Click(chromedp.CSS(`#table-approvals tr[data-request-id="`+denyID+`"] button[data-key="deny:`+denyID+`"]`)),
		chromedp.WaitNotVisible(chromedp.CSS("#tab-approvals")),
		chromedp.WaitVisible(chromedp.CSS(`#table-requests tr[data-request-id="`+denyID+`"] .badge[data-status="Denied"]`)),
	)
	if r := getRequest(p, denyID); r.Status != "Denied" {
		t.Errorf("denied request is %s, want Denied", r.Status)
	}
	for name := range p.nsgRules(nsg) {
		if strings.HasPrefix(name, "jit-allow-") && name != rule {
			t.Errorf("%s holds %s; only the approved request's rule %s should be there", nsg, name, rule)
		}
	}
	t.Logf("approvals scenario took %s", time.Since(start).Round(100*time.Millisecond))
}

// TestPortalExtend: open access is extended from the Requests tab, once with
// a time over the port's maximum (refused next to the field) and once within it.
func TestPortalExtend(t *testing.T) {
	t.Parallel()
	start := time.Now()
	p := startLocal(t, t.TempDir(), freeAddr(t))
	p.must(200, "PUT", "/api/v1/policies/ssh", map[string]any{"properties": map[string]any{
		"virtualMachines": []any{map[string]any{"id": vmID("vm-nic-nsg"), "ports": []any{port22()}}},
	}}, nil)
	var req requestRec
	p.must(202, "POST", "/api/v1/policies/ssh/initiate",
		initiateBody("vm-nic-nsg", 22, map[string]any{"duration": "PT10M", "allowedSourceAddressPrefix": "203.0.113.9"}), &req)
	before := req.VirtualMachines[0].Ports[0].EndTimeUtc

	b := startBrowser(t)
	openPortal(b, p)
	row := `#table-requests tr[data-request-id="` + req.ID + `"]`
	b.do("opening the extend form",
		chromedp.Click(chromedp.CSS("#tab-requests")),
		chromedp.WaitVisible(chromedp.CSS(row+` .badge[data-status="Open"]`)),
		chromedp.Click(chromedp.CSS(row+` button[aria-label="Extend request `+req.ID+`"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#slot-requests form`)),
	)
	amount, unit := `#slot-requests form .duration input`, `#slot-requests form .duration select`
	b.do("asking for two hours, over the port's maximum",
		chromedp.SetValue(chromedp.CSS(amount), "2"),
		chromedp.SetValue(chromedp.CSS(unit), "h"),
		chromedp.Click(chromedp.CSS(`#slot-requests form button[type=submit]`)),
		chromedp.WaitVisible(chromedp.CSS(`#slot-requests form .field-error`)),
	)
	if msg := b.text(`#slot-requests form .field-error`); !strings.Contains(msg, "PT1H") {
		t.Errorf("the refused extension says %q; want the API's message naming the maximum PT1H", msg)
	}
	if got := getRequest(p, req.ID).VirtualMachines[0].Ports[0].EndTimeUtc; !got.Equal(before) {
		t.Errorf("a refused extension moved the end from %s to %s", before, got)
	}

	clicked := time.Now()
	b.do("extending by 30 minutes from now",
		chromedp.SetValue(chromedp.CSS(amount), "30"),
		chromedp.SetValue(chromedp.CSS(unit), "m"),
		chromedp.Click(chromedp.CSS(`#slot-requests form button[type=submit]`)),
		chromedp.WaitNotPresent(chromedp.CSS(`#slot-requests form`)),
	)
	after := getRequest(p, req.ID)
	end := after.VirtualMachines[0].Ports[0].EndTimeUtc
	if want := clicked.Add(30 * time.Minute); end.Before(want.Add(-5*time.Second)) || end.After(want.Add(5*time.Second)) {
		t.Errorf("after extending by 30 minutes the end is %s (was %s); want about %s", end, before, want)
	}
	if after.Status != "Active" || !ruleIn(p, "nsg-vm-nic", "jit-allow-"+req.ID+"-0") {
		t.Errorf("after the extension the request is %s and its rule in nsg-vm-nic present=%v; want Active, present",
			after.Status, ruleIn(p, "nsg-vm-nic", "jit-allow-"+req.ID+"-0"))
	}
	if msg := b.text("#page-message"); !strings.Contains(msg, "extended") {
		t.Errorf("page message after the extension: %q", msg)
	}
	t.Logf("extend scenario took %s", time.Since(start).Round(100*time.Millisecond))
}

// TestPortalDisable: JIT is disabled on one VM of a shared policy, which
// keeps the rest of the policy (its approval rule too), and then on the
// last VM, which deletes the policy. Deny rules and open access go with it.
func TestPortalDisable(t *testing.T) {
	t.Parallel()
	start := time.Now()
	p := startLocal(t, t.TempDir(), freeAddr(t))
	p.must(200, "PUT", "/api/v1/policies/shared", map[string]any{"properties": map[string]any{
		"approval":   map[string]any{"required": true},
		"requesters": []string{"alice"},
		"virtualMachines": []any{
			map[string]any{"id": vmID("vm-nic-nsg"), "ports": []any{port22()}},
			map[string]any{"id": vmID("vm-both-nsg"), "ports": []any{
				port22(),
				map[string]any{"number": 3389, "protocol": "TCP", "allowedSourceAddressPrefixes": []string{"10.0.0.0/8", "192.0.2.0/24"}, "maxRequestAccessDuration": "PT2H",
					"approval": map[string]any{"required": true, "minApprovals": 2}},
			}},
		},
	}}, nil)
	// The lockdown runs after the PUT has answered.
	for _, g := range []guard{nicGuard, bothNICGuard, bothSubnetGuard} {
		waitFor(t, 5*time.Second, "the lockdown of "+g.vm+" in "+g.nsg, func() bool { return g.locks(p, 22) })
	}
	// Live access on the VM to be disabled: it must be revoked with it.
	var open requestRec
	p.must(202, "POST", "/api/v1/policies/shared/initiate",
		initiateBody("vm-nic-nsg", 22, map[string]any{"duration": "PT10M", "allowedSourceAddressPrefix": "203.0.113.10"}), &open)
	p.must(200, "POST", "/api/v1/requests/"+open.ID+"/approve", map[string]any{"comment": "ok"}, nil,
		"X-Dev-Principal", "bob", "X-Dev-Roles", "JIT.Approver")
	openRule := "jit-allow-" + open.ID + "-0"
	waitFor(t, 5*time.Second, "the open request's rule in nsg-vm-nic", func() bool { return ruleIn(p, "nsg-vm-nic", openRule) })

	b := startBrowser(t)
	openPortal(b, p)
	disable := func(vm string) {
		t.Helper()
		b.do("disabling JIT on "+vm,
			chromedp.Click(chromedp.CSS("#tab-configured")),
			chromedp.Click(chromedp.CSS(`#table-configured input[data-vm="`+vm+`"]`)),
			chromedp.Click(chromedp.CSS("#btn-disable")),
			chromedp.WaitVisible(chromedp.CSS(`#slot-configured [aria-labelledby="disable-title"]`)),
		)
		if got := b.text("#disable-title"); got != "Disable JIT on "+vm+"?" {
			t.Errorf("the confirmation asks %q", got)
		}
		b.do("confirming",
			chromedp.Click(chromedp.CSS(`#slot-configured [aria-labelledby="disable-title"] button.danger`)),
			chromedp.WaitNotPresent(chromedp.CSS(`#slot-configured [aria-labelledby="disable-title"]`)),
			chromedp.WaitNotPresent(chromedp.CSS(`#table-configured tr[data-vm="`+vm+`"]`)),
			chromedp.WaitReady(chromedp.CSS(`#table-notconfigured tr[data-vm="`+vm+`"]`)),
		)
		if msg := b.text("#page-message"); !strings.HasPrefix(msg, "Disabling JIT on "+vm+": removal in progress.") {
			t.Errorf("page message after disabling: %q; want the removal in progress", msg)
		}
	}

	type sharedPolicy struct {
		Properties struct {
			Approval *struct {
				Required bool `json:"required"`
			} `json:"approval"`
			Requesters      []string `json:"requesters"`
			VirtualMachines []struct {
				ID    string `json:"id"`
				Ports []struct {
					Number   int    `json:"number"`
					Max      string `json:"maxRequestAccessDuration"`
					Approval *struct {
						Required     bool `json:"required"`
						MinApprovals int  `json:"minApprovals"`
					} `json:"approval"`
				} `json:"ports"`
			} `json:"virtualMachines"`
		} `json:"properties"`
	}
	// readShared reads policy shared, failing unless it holds vm-both-nsg
	// alone with its approval rules and requesters intact.
	readShared := func(after string) sharedPolicy {
		t.Helper()
		var pol sharedPolicy
		p.must(200, "GET", "/api/v1/policies/shared", nil, &pol)
		vms := pol.Properties.VirtualMachines
		if len(vms) != 1 || !strings.EqualFold(vms[0].ID, vmID("vm-both-nsg")) {
			t.Fatalf("policy shared holds %+v after %s; want vm-both-nsg alone", vms, after)
		}
		if a := pol.Properties.Approval; a == nil || !a.Required {
			t.Errorf("policy shared lost its approval rule after %s", after)
		}
		if got := strings.Join(pol.Properties.Requesters, ","); got != "alice" {
			t.Errorf("policy shared has requesters %q after %s, want alice", got, after)
		}
		if ports := vms[0].Ports; len(ports) != 2 || ports[1].Approval == nil || ports[1].Approval.MinApprovals != 2 {
			t.Errorf("vm-both-nsg's port 3389 lost its own approval rule after %s: %+v", after, ports)
		}
		return pol
	}

	// 1. One VM of two: the policy keeps the other VM and everything else.
	disable("vm-nic-nsg")
	readShared("disabling vm-nic-nsg")
	waitFor(t, 5*time.Second, "the deny rule to leave nsg-vm-nic", func() bool { return !nicGuard.locks(p, 22) })
	waitFor(t, 5*time.Second, "the open access on vm-nic-nsg to be revoked", func() bool { return !ruleIn(p, "nsg-vm-nic", openRule) })
	if st := getRequest(p, open.ID).Status; st == "Active" {
		t.Errorf("the request on the disabled VM is still %s", st)
	}
	for _, g := range []guard{bothNICGuard, bothSubnetGuard} {
		for _, port := range []int{22, 3389} {
			if !g.locks(p, port) {
				t.Errorf("disabling vm-nic-nsg opened port %d of vm-both-nsg in %s", port, g.nsg)
			}
		}
	}

	// Editing the remaining VM's ports keeps the approval rules too, which
	// the editor does not show.
	b.do("giving port 22 of vm-both-nsg a 2-hour maximum",
		chromedp.Click(chromedp.CSS(`#table-configured input[data-vm="vm-both-nsg"]`)),
		chromedp.Click(chromedp.CSS("#btn-edit")),
		chromedp.WaitVisible(chromedp.CSS("#policy-form")),
		chromedp.SetValue(chromedp.CSS(`#policy-form tbody tr:has(input.port[value="22"]) .duration input`), "2"),
		chromedp.SetValue(chromedp.CSS(`#policy-form tbody tr:has(input.port[value="22"]) .duration select`), "h"),
		chromedp.Click(chromedp.CSS(`#policy-form button[type=submit]`)),
		chromedp.WaitNotPresent(chromedp.CSS("#policy-form")),
	)
	if got := readShared("editing vm-both-nsg's ports").Properties.VirtualMachines[0].Ports[0]; got.Number != 22 || got.Max != "PT2H" {
		t.Errorf("after the edit port 22 of vm-both-nsg is %+v, want a PT2H maximum", got)
	}

	// 2. The last VM: the policy goes.
	disable("vm-both-nsg")
	p.must(404, "GET", "/api/v1/policies/shared", nil, nil)
	for _, g := range []guard{bothNICGuard, bothSubnetGuard} {
		waitFor(t, 5*time.Second, "the deny rule to leave "+g.nsg, func() bool { return !g.locks(p, 22) && !g.locks(p, 3389) })
	}
	t.Logf("disable scenario took %s", time.Since(start).Round(100*time.Millisecond))
}

// TestPortalDenyRuleDeleted: a person deletes a VM's deny rule by hand in
// ARM. Local mode hears of it as Event Grid would and puts it back within
// moments, so the page may never catch the gap; what it must never do is
// show "Locked" from a VM list asked for while ARM lacked the rule. The
// test looks at ARM and at the page in turns, making the page reload its
// lists each time (as a person coming back to the tab does), and checks
// every look at the page against what ARM held when its list was asked for.
func TestPortalDenyRuleDeleted(t *testing.T) {
	t.Parallel()
	p := startLocal(t, t.TempDir(), freeAddr(t))
	p.must(200, "PUT", "/api/v1/policies/ssh", map[string]any{"properties": map[string]any{
		"virtualMachines": []any{map[string]any{"id": vmID("vm-nic-nsg"), "ports": []any{port22()}}},
	}}, nil)
	waitFor(t, 5*time.Second, "the lockdown of vm-nic-nsg", func() bool { return nicGuard.locks(p, 22) })

	b := startBrowser(t)
	openPortal(b, p)
	badge := `#table-configured tr[data-vm="vm-nic-nsg"] td[data-label="Lockdown"] .badge`
	b.waitJS("vm-nic-nsg to show Locked", 10*time.Second,
		`(() => { const b = document.querySelector('`+badge+`'); return b && b.textContent === 'Locked'; })()`)

	var deny string
	for name, r := range p.nsgRules(nicGuard.nsg) {
		if r.denies(nicGuard.ip, 22) {
			deny = name
		}
	}
	// armLook is ARM's state as the test saw it; pageLook is what the page
	// showed and when it had asked for the VM list it showed.
	type armLook struct {
		at     time.Time
		locked bool
	}
	type pageLook struct {
		label string
		asked time.Time
	}
	var arm []armLook
	var page []pageLook
	look := func() {
		t.Helper()
		arm = append(arm, armLook{time.Now(), nicGuard.locks(p, 22)})
		got := evalJS[[]string](b, `(() => { const b = document.querySelector('`+badge+`');
			document.dispatchEvent(new Event('visibilitychange'));
			return [b ? b.textContent : '(no row)', document.body.getAttribute('data-vms-asked') || '0']; })()`)
		ms, err := strconv.ParseInt(got[1], 10, 64)
		if err != nil {
			t.Fatalf("data-vms-asked is %q: %v", got[1], err)
		}
		page = append(page, pageLook{got[0], time.UnixMilli(ms)})
	}

	status, raw := p.call("DELETE", "/_arm"+rgURL+"/providers/Microsoft.Network/networkSecurityGroups/"+nicGuard.nsg+
		"/securityRules/"+deny+"?api-version=2024-05-01", nil, nil)
	if status/100 != 2 {
		t.Fatalf("deleting %s by hand: status %d, %s", deny, status, raw)
	}
	deleted := time.Now()
	// Until ARM holds the rule again and the page shows Locked from a list
	// asked for after that.
	var repaired time.Time
	for {
		look()
		last := arm[len(arm)-1]
		if last.locked && repaired.IsZero() {
			repaired = last.at
		}
		if pl := page[len(page)-1]; !repaired.IsZero() && pl.label == "Locked" && pl.asked.After(repaired) {
			break
		}
		if time.Since(deleted) > 15*time.Second {
			t.Fatalf("15s after deleting %s by hand: ARM holds it again=%v, the page shows %q", deny, !repaired.IsZero(), page[len(page)-1].label)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// The service knows what it last saw in ARM: it learns of a hand edit
	// through an event, within lag.
	const lag = 300 * time.Millisecond
	gap := 0
	shown := map[string]int{}
	for _, pl := range page {
		shown[pl.label]++
		if pl.label != "Locked" {
			continue
		}
		// ARM lacked the rule at every look from lag before the list was
		// asked for until after.
		from := pl.asked.Add(-lag)
		i := slices.IndexFunc(arm, func(a armLook) bool { return !a.at.Before(from) })
		j := slices.IndexFunc(arm, func(a armLook) bool { return !a.at.Before(pl.asked) })
		if i <= 0 || j < 0 {
			continue
		}
		if slices.ContainsFunc(arm[i-1:j+1], func(a armLook) bool { return a.locked }) {
			continue
		}
		t.Errorf("the page showed Locked from a VM list asked for at %s, while ARM lacked %s from %s to %s",
			pl.asked.Format("15:04:05.000"), deny, arm[i-1].at.Format("15:04:05.000"), arm[j].at.Format("15:04:05.000"))
	}
	for _, a := range arm {
		if !a.locked {
			gap++
		}
	}
	t.Logf("after deleting %s: %d looks at ARM without it, the page showed %v; ARM held it again after %s",
		deny, gap, shown, repaired.Sub(deleted).Round(time.Millisecond))
}

// TestPortalLockdownPending: with ARM writes taking seconds, as in Azure,
// the page shows an enabled VM's lockdown pending (its ports and policy
// state with it), lets access be requested meanwhile, and follows the
// lockdown to "Locked".
func TestPortalLockdownPending(t *testing.T) {
	t.Parallel()
	start := time.Now()
	p := startLocal(t, t.TempDir(), freeAddr(t), "JIT_ARM_LATENCY=2s")
	b := startBrowser(t)
	openPortal(b, p)
	b.do("enabling JIT on vm-subnet-nsg with the defaults",
		chromedp.Click(chromedp.CSS("#tab-notconfigured")),
		chromedp.Click(chromedp.CSS(`#table-notconfigured input[data-vm="vm-subnet-nsg"]`)),
		chromedp.Click(chromedp.CSS("#btn-enable")),
		chromedp.WaitVisible(chromedp.CSS("#policy-form")),
		chromedp.Click(chromedp.CSS(`#policy-form button[type=submit]`)),
		chromedp.WaitVisible(chromedp.CSS(`#table-configured tr[data-vm="vm-subnet-nsg"]`)),
	)
	if msg := b.text("#page-message"); !strings.Contains(msg, "Lockdown in progress") {
		t.Errorf("page message after enabling: %q; want the lockdown in progress", msg)
	}
	row := `#table-configured tr[data-vm="vm-subnet-nsg"]`
	if got := b.text(row + ` td[data-label="Lockdown"]`); !strings.Contains(got, "Lockdown pending") || !strings.Contains(got, "nsg-subnet-protected") {
		t.Errorf("the Lockdown column says %q; want Lockdown pending in nsg-subnet-protected", got)
	}
	if got := b.text(row + ` td[data-label="JIT ports"]`); !strings.Contains(got, "22/TCP") {
		t.Errorf("a VM whose lockdown is pending shows ports %q; want its policy's", got)
	}
	if got := b.text(row + ` td[data-label="Policy"]`); !strings.Contains(got, "Updating") {
		t.Errorf("the Policy column says %q; want provisioning Updating", got)
	}
	if got := b.text("#count-configured"); got != "(1)" {
		t.Errorf("the Configured tab counts %q, want (1)", got)
	}

	// Access may be asked for while the lockdown runs.
	tr := `#request-form tr:has(input[data-port="22"])`
	b.do("requesting SSH on the VM being locked",
		chromedp.Click(chromedp.CSS(row+` input[data-vm="vm-subnet-nsg"]`)),
		chromedp.Click(chromedp.CSS("#btn-request")),
		chromedp.WaitVisible(chromedp.CSS(tr)),
		chromedp.Click(chromedp.CSS(tr+` input[type=checkbox]`)),
		chromedp.SendKeys(chromedp.CSS("#req-justification"), "first look"),
		chromedp.Click(chromedp.CSS(`#request-form button[type=submit]`)),
		chromedp.WaitVisible(chromedp.CSS(`#panel-requests`)),
	)
	id := latestRequest(t, p, 22)

	b.do("looking at the Configured tab", chromedp.Click(chromedp.CSS("#tab-configured")))
	b.waitJS("the Lockdown column to say Locked", 20*time.Second,
		`(() => { const b = document.querySelector('`+row+` td[data-label="Lockdown"] .badge'); return b && b.textContent === 'Locked'; })()`)
	if !locked(p.nsgRules("nsg-subnet-protected"), "10.10.2.4", 22) {
		t.Errorf("the page says Locked but nsg-subnet-protected does not deny 22 to 10.10.2.4")
	}
	b.waitJS("the policy state to leave the Policy column", 10*time.Second,
		`!document.querySelector('`+row+` [data-provisioning]')`)
	waitFor(t, 20*time.Second, "request "+id+"'s rule in nsg-subnet-protected", func() bool {
		return ruleIn(p, "nsg-subnet-protected", "jit-allow-"+id+"-0")
	})
	t.Logf("lockdown-pending scenario took %s", time.Since(start).Round(100*time.Millisecond))
}
