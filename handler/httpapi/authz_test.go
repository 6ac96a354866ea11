package httpapi_test

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"

	"jitaccess/handler/jit"
)

// TestAuthorizationMatrix calls every route as every kind of caller and
// checks the status, as a table. Callers come as App Service Authentication
// presents them (not local mode), plus no principal and a forged local-mode
// header. Each cell gets fresh objects, so one cell's success cannot change
// another's answer.
func TestAuthorizationMatrix(t *testing.T) {
	s := newStack(t, stackOptions{})
	admin := easyAuth("admin-0", []string{jit.RoleAdmin})
	owner := easyAuth("owner", []string{jit.RoleRequester})
	s.must(200, admin, "PUT", "/api/v1/policies/open", policyBody("vm-nic-nsg", nil), nil)
	s.must(200, admin, "PUT", "/api/v1/policies/gated", policyBody("vm-subnet-nsg", map[string]any{"approval": map[string]any{"required": true}}), nil)

	callers := []struct {
		name string
		who  as
	}{
		{"no role", easyAuth("c-none", nil)},
		{"reader", easyAuth("c-reader", []string{jit.RoleReader})},
		{"requester", easyAuth("c-requester", []string{jit.RoleRequester})},
		{"approver", easyAuth(approverOID, []string{jit.RoleApprover})},
		{"admin", easyAuth("c-admin", []string{jit.RoleAdmin})},
		{"no principal", nil},
		{"forged dev header", as{"X-Dev-Principal", "mallory", "X-Dev-Roles", jit.RoleAdmin}},
		{"owner of the request", owner},
		{"delegate (bot)", easyAuth("c-bot", []string{jit.RoleRequester, jit.RoleDelegate})},
	}
	// setup prepares what a route acts on and returns its path.
	ownRequest := func() string {
		var r request
		s.must(202, owner, "POST", "/api/v1/policies/open/initiate", initiate("vm-nic-nsg", "PT1H"), &r)
		return r.ID
	}
	pendingRequest := func() string {
		var r request
		s.must(202, owner, "POST", "/api/v1/policies/gated/initiate", initiate("vm-subnet-nsg", "PT1H"), &r)
		return r.ID
	}
	onBehalf := initiate("vm-nic-nsg", "PT1H")
	onBehalf["onBehalfOf"] = aliceOID
	byName := initiate("vm-nic-nsg", "PT1H")
	byName["onBehalfOf"] = "alice@contoso.com" // a name, not the object id sign-in gives
	bot := easyAuth("c-bot", []string{jit.RoleRequester, jit.RoleDelegate})
	// forApprover is a pending request a delegate filed for the approver.
	forApprover := func() string {
		b := initiate("vm-subnet-nsg", "PT1H")
		b["onBehalfOf"] = strings.ToUpper(approverOID)
		var r request
		s.must(202, bot, "POST", "/api/v1/policies/gated/initiate", b, &r)
		return r.ID
	}
	approvedRequest := func() string {
		id := pendingRequest()
		s.must(200, admin, "POST", "/api/v1/requests/"+id+"/approve", nil, nil)
		return id
	}
	// changedUnderRequest is a pending request whose policy then changes
	// (change: PUT with narrower sources, or DELETE) before anyone decides.
	changedUnderRequest := func(del bool) func() string {
		return func() string {
			waitFor(t, "an earlier deletion to finish", func() bool {
				code, body := s.do(admin, "GET", "/api/v1/policies/doomed", nil, nil)
				return code == 404 || !strings.Contains(body, `"provisioningState":"Deleting"`)
			})
			gate := map[string]any{"approval": map[string]any{"required": true}}
			s.must(200, admin, "PUT", "/api/v1/policies/doomed", policyBody("vm-both-nsg", gate), nil)
			var r request
			s.must(202, owner, "POST", "/api/v1/policies/doomed/initiate", initiate("vm-both-nsg", "PT1H"), &r)
			if del {
				s.must(202, admin, "DELETE", "/api/v1/policies/doomed", nil, nil)
			} else {
				narrow := policyBody("vm-both-nsg", gate)
				narrow["properties"].(map[string]any)["virtualMachines"].([]any)[0].(map[string]any)["ports"].([]any)[0].(map[string]any)["allowedSourceAddressPrefix"] = "10.0.0.0/8"
				s.must(200, admin, "PUT", "/api/v1/policies/doomed", narrow, nil)
			}
			return "/api/v1/requests/" + r.ID + "/approve"
		}
	}
	routes := []struct {
		method string
		path   func() string
		body   any
		want   [9]int // in the order of callers
	}{
		{"GET", func() string { return "/healthz" }, nil, [9]int{200, 200, 200, 200, 200, 200, 200, 200, 200}},
		{"GET", func() string { return "/api/v1/me" }, nil, [9]int{200, 200, 200, 200, 200, 401, 401, 200, 200}},
		{"GET", func() string { return "/api/v1/policies" }, nil, [9]int{403, 200, 200, 200, 200, 401, 401, 200, 200}},
		{"GET", func() string { return "/api/v1/policies/open" }, nil, [9]int{403, 200, 200, 200, 200, 401, 401, 200, 200}},
		{"PUT", func() string { return "/api/v1/policies/open" }, policyBody("vm-nic-nsg", nil), [9]int{403, 403, 403, 403, 200, 401, 401, 403, 403}},
		{"DELETE", func() string {
			// A deletion is accepted (202) and finishes once the deny rules are gone.
			waitFor(t, "an earlier deletion to finish", func() bool {
				code, body := s.do(admin, "GET", "/api/v1/policies/doomed", nil, nil)
				return code == 404 || !strings.Contains(body, `"provisioningState":"Deleting"`)
			})
			s.must(200, admin, "PUT", "/api/v1/policies/doomed", policyBody("vm-both-nsg", nil), nil)
			return "/api/v1/policies/doomed"
		}, nil, [9]int{403, 403, 403, 403, 202, 401, 401, 403, 403}},
		{"POST", func() string { return "/api/v1/policies/open/initiate" }, initiate("vm-nic-nsg", "PT1H"), [9]int{403, 403, 202, 403, 202, 401, 401, 202, 202}},
		{"POST", func() string { return "/api/v1/policies/open/initiate" }, onBehalf, [9]int{403, 403, 403, 403, 202, 401, 401, 403, 202}},
		{"POST", func() string { return "/api/v1/policies/open/initiate" }, byName, [9]int{403, 403, 403, 403, 400, 401, 401, 403, 400}},
		{"GET", func() string { return "/api/v1/requests" }, nil, [9]int{403, 200, 200, 200, 200, 401, 401, 200, 200}},
		{"GET", func() string { return "/api/v1/requests/" + ownRequest() }, nil, [9]int{404, 200, 404, 200, 200, 401, 401, 200, 404}},
		{"POST", func() string { return "/api/v1/requests/" + ownRequest() + "/revoke" }, nil, [9]int{403, 403, 403, 403, 200, 401, 401, 200, 403}},
		{"POST", func() string { return "/api/v1/requests/" + ownRequest() + "/extend" }, map[string]any{"duration": "PT2H"}, [9]int{403, 403, 403, 403, 200, 401, 401, 200, 403}},
		{"POST", func() string { return "/api/v1/requests/" + pendingRequest() + "/approve" }, nil, [9]int{403, 403, 403, 200, 200, 401, 401, 403, 403}},
		{"POST", func() string { return "/api/v1/requests/" + pendingRequest() + "/deny" }, nil, [9]int{403, 403, 403, 200, 200, 401, 401, 403, 403}},
		// Approved for PT1H: the requestor may move the end within that, not past it.
		{"POST", func() string { return "/api/v1/requests/" + approvedRequest() + "/extend" }, map[string]any{"duration": "PT30M"}, [9]int{403, 403, 403, 403, 200, 401, 401, 200, 403}},
		{"POST", func() string { return "/api/v1/requests/" + approvedRequest() + "/extend" }, map[string]any{"duration": "PT2H"}, [9]int{403, 403, 403, 403, 403, 401, 401, 403, 403}},
		// The person a delegate asked for cannot approve it, whatever case their id came in.
		{"POST", func() string { return "/api/v1/requests/" + forApprover() + "/approve" }, nil, [9]int{403, 403, 403, 403, 200, 401, 401, 403, 403}},
		// A request its policy no longer allows is not approved.
		{"POST", changedUnderRequest(false), nil, [9]int{403, 403, 403, 409, 409, 401, 401, 403, 403}},
		{"POST", changedUnderRequest(true), nil, [9]int{403, 403, 403, 409, 409, 401, 401, 403, 403}},
		{"GET", func() string { return "/api/v1/vms" }, nil, [9]int{403, 200, 200, 200, 200, 401, 401, 200, 200}},
		{"GET", func() string { return "/api/v1/audit" }, nil, [9]int{403, 200, 403, 403, 200, 401, 401, 403, 403}},
		{"GET", func() string { return "/api/v1/audit?format=csv" }, nil, [9]int{403, 200, 403, 403, 200, 401, 401, 403, 403}},
	}
	for _, r := range routes {
		for i, c := range callers {
			path := r.path()
			name := fmt.Sprintf("%s %s as %s", r.method, path, c.name)
			got, raw := s.do(c.who, r.method, path, r.body, nil)
			if got != r.want[i] {
				t.Errorf("%s: status %d, want %d (%s)", name, got, r.want[i], raw)
			}
		}
	}
	// A requester sees only their own requests.
	var list struct {
		Value []request `json:"value"`
	}
	s.must(200, easyAuth("c-requester", []string{jit.RoleRequester}), "GET", "/api/v1/requests", nil, &list)
	for _, r := range list.Value {
		var full struct {
			RequestorID string `json:"requestorId"`
		}
		s.must(200, admin, "GET", "/api/v1/requests/"+r.ID, nil, &full)
		if full.RequestorID != "c-requester" {
			t.Errorf("a requester's list shows %s's request", full.RequestorID)
		}
	}
	// A delegate sees the requests it submitted for others (alice, the
	// approver), as it may read
	// them, and no one else's.
	var mine request
	s.must(202, bot, "POST", "/api/v1/policies/open/initiate", onBehalf, &mine)
	s.must(200, bot, "GET", "/api/v1/requests/"+mine.ID, nil, nil)
	s.must(200, bot, "GET", "/api/v1/requests", nil, &list)
	if !slices.ContainsFunc(list.Value, func(r request) bool { return r.ID == mine.ID }) {
		t.Errorf("the delegate's list lacks the request it submitted for alice")
	}
	for _, r := range list.Value {
		var full struct {
			RequestorID string `json:"requestorId"`
		}
		s.must(200, admin, "GET", "/api/v1/requests/"+r.ID, nil, &full)
		if full.RequestorID != "c-bot" && full.RequestorID != aliceOID && full.RequestorID != approverOID {
			t.Errorf("the delegate's list shows %s's request", full.RequestorID)
		}
	}
}

// Another site's page cannot use a signed-in person's cookie to change
// anything: a cross-site fetch says so in Sec-Fetch-Site, and an HTML form
// (which needs no script) can only send form or text content types, even
// with an empty body.
func TestCrossSiteChangesAreRefused(t *testing.T) {
	s := newStack(t, stackOptions{})
	admin := easyAuth("admin-0", []string{jit.RoleAdmin})
	s.must(200, admin, "PUT", "/api/v1/policies/p", policyBody("vm-nic-nsg", nil), nil)
	var r request
	s.must(202, admin, "POST", "/api/v1/policies/p/initiate", initiate("vm-nic-nsg", "PT1H"), &r)
	revoke := "/api/v1/requests/" + r.ID + "/revoke"
	for _, c := range []struct {
		name  string
		extra as
		want  int
	}{
		{"cross-site fetch", as{"Sec-Fetch-Site", "cross-site"}, 403},
		{"same-site fetch from a sibling host", as{"Sec-Fetch-Site", "same-site"}, 403},
		{"HTML form, empty body", as{"Content-Type", "application/x-www-form-urlencoded"}, 415},
		{"text/plain form", as{"Content-Type", "text/plain;charset=UTF-8"}, 415},
		{"multipart form", as{"Content-Type", "multipart/form-data; boundary=x"}, 415},
	} {
		if code, body := s.do(append(slices.Clone(admin), c.extra...), "POST", revoke, nil, nil); code != c.want {
			t.Errorf("%s: revoke answered %d %s, want %d", c.name, code, body, c.want)
		}
		if code, _ := s.do(append(slices.Clone(admin), c.extra...), "DELETE", "/api/v1/policies/p", nil, nil); code != c.want {
			t.Errorf("%s: policy delete answered %d, want %d", c.name, code, c.want)
		}
	}
	s.must(200, admin, "GET", "/api/v1/requests/"+r.ID, nil, &r)
	if r.Status != "Active" {
		t.Fatalf("after refused cross-site revokes the request is %s", r.Status)
	}
	s.must(200, admin, "GET", "/api/v1/policies/p", nil, nil)
	// A body without a Content-Type (what a no-cors fetch can send) is not
	// taken as JSON.
	body, _ := json.Marshal(initiate("vm-nic-nsg", "PT1H"))
	req, _ := http.NewRequest("POST", s.url+"/api/v1/policies/p/initiate", bytes.NewReader(body))
	for i := 0; i+1 < len(admin); i += 2 {
		req.Header.Set(admin[i], admin[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 415 {
		t.Errorf("a JSON body without Content-Type answered %d, want 415", resp.StatusCode)
	}
	var list struct {
		Value []request `json:"value"`
	}
	s.must(200, admin, "GET", "/api/v1/requests", nil, &list)
	if len(list.Value) != 1 {
		t.Errorf("%d requests after a refused one, want 1", len(list.Value))
	}
	// The portal's own requests are same-origin; curl sends no such header.
	s.must(200, append(slices.Clone(admin), "Sec-Fetch-Site", "same-origin"), "POST", revoke, nil, nil)
}

// A hostile value that reaches the audit trail (here an identity and a
// justification) comes out of the CSV export as text, never as a formula.
func TestAuditCSVNeutralisesFormulas(t *testing.T) {
	s := newStack(t, stackOptions{})
	evil := easyAuth("=HYPERLINK(\"http://x\")", []string{jit.RoleAdmin})
	s.must(200, evil, "PUT", "/api/v1/policies/p", policyBody("vm-nic-nsg", nil), nil)
	body := initiate("vm-nic-nsg", "PT1H")
	body["justification"] = "@SUM(1+1)"
	s.must(202, evil, "POST", "/api/v1/policies/p/initiate", body, nil)
	_, raw := s.do(easyAuth("auditor", []string{jit.RoleReader}), "GET", "/api/v1/audit?format=csv", nil, nil)
	rows, err := csv.NewReader(strings.NewReader(raw)).ReadAll()
	if err != nil {
		t.Fatalf("the export is not CSV: %v\n%s", err, raw)
	}
	if len(rows) < 3 {
		t.Fatalf("CSV has %d rows, want a header and the events:\n%s", len(rows), raw)
	}
	seen := false
	for _, row := range rows[1:] {
		for _, cell := range row {
			if cell != "" && strings.ContainsRune("=+-@\t\r", rune(cell[0])) {
				t.Errorf("cell %q would be read as a formula", cell)
			}
			if cell == `'=HYPERLINK("http://x")` {
				seen = true
			}
		}
	}
	if !seen {
		t.Errorf("the hostile actor is not in the export as text:\n%s", raw)
	}
}
