package azurenet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"

	"jitaccess/handler/jit"
)

// TestDecodeNSGPage: a page is decoded NSG by NSG, members it does not
// know skipped, and its nextLink returned.
func TestDecodeNSGPage(t *testing.T) {
	var b strings.Builder
	b.WriteString(`{"unknown":{"nested":[1,2,{"x":null}]},"value":[`)
	for i := range 120 {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, `{"id":"nsg-%d","location":"westeurope","properties":{"securityRules":[{"name":"r","properties":{"direction":"Inbound","priority":%d,"access":"Allow","protocol":"Tcp","destinationPortRange":"22","sourceAddressPrefix":"*","destinationAddressPrefix":"*"}}]}}`, i, 100+i)
	}
	b.WriteString(`],"nextLink":"https://example.invalid/next"}`)

	var got []leanNSG
	next, err := decodeNSGPage([]byte(b.String()), func(n leanNSG) { got = append(got, n) })
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 120 || got[119].ID != "nsg-119" || got[7].Properties.SecurityRules[0].Properties.Priority != 107 {
		t.Errorf("decoded %d NSGs, last %+v", len(got), got[len(got)-1])
	}
	if next != "https://example.invalid/next" {
		t.Errorf("nextLink %q", next)
	}
}

func TestDecodeNSGPageRejectsMalformed(t *testing.T) {
	for _, body := range []string{``, `[]`, `{"value":{}}`, `{"value":[{"id":1}]}`, `{"value":[`, `{"value":[]`} {
		if _, err := decodeNSGPage([]byte(body), func(leanNSG) {}); err == nil {
			t.Errorf("%q decoded without error", body)
		}
	}
}

// TestAwaitOperationAnswerStates: a PUT's answer alone settles the write
// only when it says Succeeded (or says nothing and has nothing to follow);
// a failed write, or one in progress with no operation to follow, is an
// lroError, which the driver retries.
func TestAwaitOperationAnswerStates(t *testing.T) {
	d := &Driver{}
	for _, tc := range []struct {
		body    string
		async   string
		wantErr bool
	}{
		{`{"properties":{"provisioningState":"Succeeded"}}`, "", false},
		{``, "", false},
		{`{"properties":{"provisioningState":"Failed"}}`, "", true},
		{`{"properties":{"provisioningState":"Canceled"}}`, "https://arm.invalid/op", true},
		{`{"properties":{"provisioningState":"Updating"}}`, "", true},
		{`{"properties":{"provisioningState":"Updating"}}`, "not a url", true},
	} {
		resp := &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, Body: io.NopCloser(strings.NewReader(tc.body))}
		if tc.async != "" {
			resp.Header.Set("Azure-AsyncOperation", tc.async)
		}
		err := d.awaitOperation(context.Background(), runtime.Pipeline{}, resp)
		var lro lroError
		if tc.wantErr != (err != nil) || (err != nil && !errors.As(err, &lro)) {
			t.Errorf("answer %s, operation %q: %v, want an lroError: %v", tc.body, tc.async, err, tc.wantErr)
		}
	}
}

// TestPlanRulesUnreadableRule: a rule ARM sent without properties cannot
// show whose it is, so it is never changed: kept byte-for-byte beside a new
// rule, and a Put of its name is a conflict, not a duplicate.
func TestPlanRulesUnreadableRule(t *testing.T) {
	doc, err := decodeNSG([]byte(`{"properties":{"securityRules":[{"name":"jit-allow-x-0"},{"name":"other","properties":{"direction":"Inbound","priority":1000}}]}}`))
	if err != nil {
		t.Fatal(err)
	}
	owner := jit.Owner{Deployment: "prod"}
	rule := func(name string) jit.SecurityRule {
		return jit.SecurityRule{Name: name, Description: owner.Marker() + "grant", Access: jit.AccessAllow, Protocol: "Tcp",
			Ports: []string{"22"}, Sources: []string{"198.51.100.1"}, Destinations: []string{"10.0.0.4"}}
	}
	bands := []Band{{DefaultAllowMin, DefaultAllowMax}}
	prune := func(jit.SecurityRule) bool { return true }
	_, _, err = planRules(doc, "nsg", jit.RuleChange{Put: []jit.SecurityRule{rule("jit-allow-x-0")}, Prune: prune}, bands, owner)
	if jit.ErrorCode(err) != jit.ECONFLICT {
		t.Errorf("put over an unreadable rule: %v, want ECONFLICT", err)
	}
	rules, a, err := planRules(doc, "nsg", jit.RuleChange{Put: []jit.SecurityRule{rule("jit-allow-y-0")}, Delete: []string{"jit-allow-x-0"}, Prune: prune}, bands, owner)
	if err != nil {
		t.Fatal(err)
	}
	if len(rules) != 3 || string(rules[0]) != `{"name":"jit-allow-x-0"}` || !slices.Equal(a.Created, []string{"jit-allow-y-0"}) || a.Removed != nil || a.Updated != nil {
		t.Fatalf("rules %s, applied %+v: want the unreadable rule kept and one created", rules, a)
	}
	var got leanRule
	if err := json.Unmarshal(rules[2], &got); err != nil || got.Name != "jit-allow-y-0" || got.Properties == nil || got.Properties.Priority != 1001 {
		t.Errorf("new rule %s (%v), want jit-allow-y-0 at 1001", rules[2], err)
	}
}
