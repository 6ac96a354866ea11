package e2etest

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestBadInputChangesNothing sends each kind of bad input and checks that it
// gets a 4xx with a message saying what is wrong, and that nothing changed:
// the policy, the requests and the NSGs are as before.
func TestBadInputChangesNothing(t *testing.T) {
	p := startLocal(t, t.TempDir(), freeAddr(t))
	var pol struct {
		Etag       string `json:"etag"`
		Properties struct {
			ProvisioningState string `json:"provisioningState"`
		} `json:"properties"`
	}
	p.must(200, "PUT", "/api/v1/policies/demo", demoPolicy(), &pol)
	// The lockdown is asynchronous: the state to keep is the one after it.
	waitFor(t, 10*time.Second, "the lockdown", func() bool {
		p.must(200, "GET", "/api/v1/policies/demo", nil, &pol)
		return pol.Properties.ProvisioningState == "Succeeded"
	})

	future := time.Now().Add(30 * time.Minute).UTC().Format(time.RFC3339)
	past := time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)
	initiate := "/api/v1/policies/demo/initiate"
	ok22 := func(extra map[string]any) map[string]any { return initiateBody("vm-nic-nsg", 22, extra) }
	cases := []struct {
		name, method, path string
		body               any
		status             int
		want               string // in the error message
	}{
		{"malformed JSON", "POST", initiate, `{"virtualMachines": [`, 400, "malformed JSON"},
		{"trailing data", "POST", initiate, `{"virtualMachines": []} {}`, 400, "unexpected data after"},
		{"empty body", "POST", initiate, ``, 400, "body is empty"},
		{"unknown field", "POST", initiate, `{"virtualMachines": [], "justificaton": "x"}`, 400, `unknown field "justificaton"`},
		{"unknown nested field", "PUT", "/api/v1/policies/demo", `{"properties":{"virtualMachines":[{"id":"` + vmID("vm-nic-nsg") + `","ports":[{"number":22,"protcol":"TCP"}]}]}}`, 400, `unknown field "protcol"`},
		{"wrong type", "POST", initiate, `{"virtualMachines": [{"id": "` + vmID("vm-nic-nsg") + `", "ports": [{"number": "22"}]}]}`, 400, "expected a whole number"},
		{"port not in policy", "POST", initiate, initiateBody("vm-nic-nsg", 8080, map[string]any{"endTimeUtc": future}), 400, "port 8080 is not in policy demo"},
		{"port 0", "POST", initiate, `{"virtualMachines": [{"id": "` + vmID("vm-nic-nsg") + `", "ports": [{"number": 0, "duration": "PT5M"}]}]}`, 400, "between 1 and 65535"},
		{"port 70000", "POST", initiate, initiateBody("vm-nic-nsg", 70000, map[string]any{"endTimeUtc": future}), 400, "port number 70000 is out of range"},
		{"policy port 70000", "PUT", "/api/v1/policies/demo", `{"properties":{"virtualMachines":[{"id":"` + vmID("vm-nic-nsg") + `","ports":[{"number":70000,"protocol":"TCP","maxRequestAccessDuration":"PT1H"}]}]}}`, 400, "port number 70000 is out of range"},
		{"policy protocol", "PUT", "/api/v1/policies/demo", `{"properties":{"virtualMachines":[{"id":"` + vmID("vm-nic-nsg") + `","ports":[{"number":22,"protocol":"ICMP","maxRequestAccessDuration":"PT1H"}]}]}}`, 400, "protocol \"ICMP\" is not supported"},
		{"policy max over a day", "PUT", "/api/v1/policies/demo", `{"properties":{"virtualMachines":[{"id":"` + vmID("vm-nic-nsg") + `","ports":[{"number":22,"protocol":"TCP","maxRequestAccessDuration":"P2D"}]}]}}`, 400, "maxRequestAccessDuration P2D is out of range"},
		{"policy bad duration", "PUT", "/api/v1/policies/demo", `{"properties":{"virtualMachines":[{"id":"` + vmID("vm-nic-nsg") + `","ports":[{"number":22,"protocol":"TCP","maxRequestAccessDuration":"3 hours"}]}]}}`, 400, "not an ISO 8601 duration"},
		{"policy bad prefix", "PUT", "/api/v1/policies/demo", `{"properties":{"virtualMachines":[{"id":"` + vmID("vm-nic-nsg") + `","ports":[{"number":22,"protocol":"TCP","allowedSourceAddressPrefix":"10.0.0.300","maxRequestAccessDuration":"PT1H"}]}]}}`, 400, "not an IP address or CIDR"},
		{"VM outside the subscriptions in scope", "PUT", "/api/v1/policies/demo", `{"properties":{"virtualMachines":[{"id":"/subscriptions/22222222-2222-2222-2222-222222222222/resourceGroups/demo/providers/Microsoft.Compute/virtualMachines/vm-1"}]}}`, 400, "not in this service's scope"},
		{"policy unknown VM", "PUT", "/api/v1/policies/demo", `{"properties":{"virtualMachines":[{"id":"` + vmID("vm-missing") + `"}]}}`, 400, "does not exist"},
		{"duration above maximum", "POST", initiate, ok22(map[string]any{"duration": "PT2H"}), 400, "longer than the maximum PT1H"},
		{"duration below minimum", "POST", initiate, ok22(map[string]any{"duration": "PT0.1S"}), 400, "shorter than the minimum"},
		{"end time in the past", "POST", initiate, ok22(map[string]any{"endTimeUtc": past}), 400, "is in the past"},
		{"end time not a time", "POST", initiate, ok22(map[string]any{"endTimeUtc": "tomorrow"}), 400, "not a date and time"},
		{"both end and duration", "POST", initiate, ok22(map[string]any{"endTimeUtc": future, "duration": "PT5M"}), 400, "not both"},
		{"no end", "POST", initiate, ok22(nil), 400, "endTimeUtc (or duration) is required"},
		{"source outside allowed", "POST", initiate, initiateBody("vm-nic-nsg", 3389, map[string]any{"duration": "PT5M", "allowedSourceAddressPrefix": "203.0.113.7"}), 400, "source 203.0.113.7 is not allowed for port 3389"},
		{"any source where not allowed", "POST", initiate, initiateBody("vm-nic-nsg", 3389, map[string]any{"duration": "PT5M", "allowedSourceAddressPrefix": "*"}), 400, "source * is not allowed"},
		{"wider CIDR than allowed", "POST", initiate, initiateBody("vm-nic-nsg", 3389, map[string]any{"duration": "PT5M", "allowedSourceAddressPrefix": "192.0.0.0/16"}), 400, "not allowed for port 3389"},
		{"not an ARM VM id", "POST", initiate, `{"virtualMachines": [{"id": "vm-nic-nsg", "ports": [{"number": 22, "duration": "PT5M"}]}]}`, 400, "is not an ARM VM id"},
		{"VM not in policy", "POST", initiate, initiateBody("vm-no-nsg", 22, map[string]any{"duration": "PT5M"}), 400, "is not in policy demo"},
		{"too many VMs in one request", "POST", initiate, manyVMs(49), 400, "at most 48"},
		{"IPv6 source for an IPv4-only VM", "POST", initiate, ok22(map[string]any{"duration": "PT5M", "allowedSourceAddressPrefix": "2001:db8::7"}), 400, "other IP version"},
		{"unknown policy", "POST", "/api/v1/policies/nope/initiate", ok22(map[string]any{"duration": "PT5M"}), 404, "policy nope does not exist"},
		{"bad policy name", "PUT", "/api/v1/policies/bad%20name", demoPolicy(), 400, "policy name"},
		{"unknown request", "GET", "/api/v1/requests/aaaaaaaaaaaaaaaaaaaaaaaaaa", nil, 404, "does not exist"},
		{"revoke unknown request", "POST", "/api/v1/requests/aaaaaaaaaaaaaaaaaaaaaaaaaa/revoke", nil, 404, "does not exist"},
		{"malformed request id", "GET", "/api/v1/requests/not-an-id%3F", nil, 404, "does not exist"},
		{"too large", "POST", initiate, `{"justification":"` + strings.Repeat("x", 2<<20) + `"}`, 413, "larger than"},
		{"wrong content type", "POST", initiate, nil, 415, "Content-Type"},
		{"wrong method", "DELETE", "/api/v1/vms", nil, 405, "not allowed"},
		{"unknown path", "GET", "/api/v1/nothing", nil, 404, "no such path"},
		{"bad audit time", "GET", "/api/v1/audit?from=yesterday", nil, 400, "not a date and time"},
		{"bad audit format", "GET", "/api/v1/audit?format=xml", nil, 400, "format"},
		{"page of none", "GET", "/api/v1/requests?limit=0", nil, 400, "limit must be a whole number between 1 and 1000"},
		{"page beyond the maximum", "GET", "/api/v1/vms?limit=1001", nil, 400, "a page holds at most 1000 VMs"},
		{"made-up skip token", "GET", "/api/v1/requests?status=Pending&$skipToken=abc", nil, 400, "$skipToken is not one this list gave out"},
		{"malformed list query", "GET", "/api/v1/policies?$skipToken=%", nil, 400, "the query string is not valid"},
		{"delete unknown policy", "DELETE", "/api/v1/policies/nope", nil, 404, "does not exist"},
		{"stale If-Match", "PUT", "/api/v1/policies/demo", demoPolicy(), 409, "If-Match"},
		{"dev header roles", "PUT", "/api/v1/policies/demo", demoPolicy(), 403, "JIT.Admin"},
	}
	before := snapshot(p)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var headers []string
			switch c.name {
			case "wrong content type":
				headers = []string{"Content-Type", "text/plain"}
				c.body = "x"
			case "stale If-Match":
				headers = []string{"If-Match", `"stale"`}
			case "dev header roles":
				headers = []string{"X-Dev-Principal", "mallory", "X-Dev-Roles", "JIT.Requester"}
			}
			var e apiError
			status, raw := p.call(c.method, c.path, c.body, &e, headers...)
			if status != c.status {
				t.Fatalf("status %d, want %d; body %s", status, c.status, raw)
			}
			if !strings.Contains(e.Error.Message, c.want) {
				t.Errorf("message %q does not say %q", e.Error.Message, c.want)
			}
			if e.Error.Code == "" {
				t.Errorf("no error code in %s", raw)
			}
		})
	}
	if after := snapshot(p); after != before {
		t.Errorf("bad input changed state:\nbefore %s\nafter  %s", before, after)
	}
}

// snapshot is the state bad input must not change: the policy's etag, the
// requests, and the rules of every NSG.
// manyVMs is an initiate body naming n VMs.
func manyVMs(n int) map[string]any {
	var vms []any
	for i := range n {
		vms = append(vms, map[string]any{"id": vmID(fmt.Sprintf("vm-%d", i)), "ports": []any{map[string]any{"number": 22, "duration": "PT5M"}}})
	}
	return map[string]any{"virtualMachines": vms, "justification": "bulk"}
}

func snapshot(p *proc) string {
	var pol struct {
		Etag string `json:"etag"`
	}
	p.must(200, "GET", "/api/v1/policies/demo", nil, &pol)
	var reqs struct {
		Value []any `json:"value"`
	}
	p.must(200, "GET", "/api/v1/requests", nil, &reqs)
	s := fmt.Sprintf("etag=%s requests=%d", pol.Etag, len(reqs.Value))
	for _, nsg := range []string{"nsg-vm-nic", "nsg-subnet-protected", "nsg-vm-both"} {
		rules := p.nsgRules(nsg)
		names := slices.Sorted(maps.Keys(rules))
		for _, name := range names {
			s += fmt.Sprintf(" %s/%s@%d", nsg, name, rules[name].Properties.Priority)
		}
	}
	return s
}
