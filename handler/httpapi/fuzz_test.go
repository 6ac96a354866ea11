package httpapi

import (
	"bytes"
	"encoding/base64"
	"encoding/csv"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"jitaccess/handler/jit"
)

// Fuzz targets for what the API reads from outside: request bodies (through
// decodeStrict and the body models), the Easy Auth principal header, ETags,
// query values, and the CSV cells it writes back. Plain `go test` runs their
// seeds (here and in testdata/fuzz); .ci/fuzz.sh fuzzes each for a bounded
// time.

const fuzzMaxBody = 64 << 10

const fuzzVM = "/subscriptions/11111111-1111-1111-1111-111111111111/resourceGroups/demo/providers/Microsoft.Compute/virtualMachines/vm-1"

var policySeeds = []string{
	// Defender's body, as its docs and scripts send it.
	`{"kind":"Basic","properties":{"virtualMachines":[{"id":"` + fuzzVM + `","ports":[{"number":22,"protocol":"TCP","allowedSourceAddressPrefix":"*","maxRequestAccessDuration":"PT3H"},{"number":3389,"protocol":"*","allowedSourceAddressPrefixes":["10.1.2.3/8","203.0.113.7"],"maxRequestAccessDuration":"PT1H30M"}]}]}}`,
	// What Defender's GET returns, read-only fields and all.
	`{"id":"/subscriptions/11111111-1111-1111-1111-111111111111/resourceGroups/demo/providers/Microsoft.Security/locations/westeurope/jitNetworkAccessPolicies/default","name":"default","type":"Microsoft.Security/locations/jitNetworkAccessPolicies","location":"westeurope","kind":"Basic","etag":"\"abc\"","properties":{"virtualMachines":[{"id":"` + fuzzVM + `","ports":[{"number":5986,"protocol":"*","allowedSourceAddressPrefix":"Internet","maxRequestAccessDuration":"P1D"}],"publicIpAddress":"198.51.100.4"}],"provisioningState":"Succeeded","requests":[]}}`,
	// Defaults: a VM without ports.
	`{"properties":{"virtualMachines":[{"id":"` + strings.ToUpper(fuzzVM) + `"}]}}`,
	`{"properties":{"virtualMachines":[{"id":"` + fuzzVM + `","ports":[{"number":53,"protocol":"udp","allowedSourceAddressPrefix":["2001:db8::1/48"],"maxRequestAccessDuration":"pt0,5h"}]}],"approval":{"required":true,"approvers":["a"],"minApprovals":1},"requesters":["g"]}}`,
	`{"properties":{"virtualMachines":[{"id":"` + fuzzVM + `","ports":[{"number":22,"allowedSourceAddressPrefix":null}]}]}}`,
	`{"properties":{"virtualMachines":[{"id":"` + fuzzVM + `","ports":[{"number":22,"allowedSourceAddressPrefix":"10.0.0.0/0"}]}]}}`,
	`{"properties":{"virtualMachines":[{"id":"` + fuzzVM + `","ports":[{"number":22,"maxRequestAccessDuration":"PT5M0.000000001S"},{"number":23,"maxRequestAccessDuration":"PT23H59M59.999999999S"}]}]}}`,
	// Bad ones.
	`{"properties":{"virtualMachines":[{"id":"` + fuzzVM + `","ports":[{"number":22,"protcol":"TCP"}]}]}}`,
	`{"properties":{"virtualMachines":[{"id":"vm-1","ports":[{"number":"22"}]}]}}`,
	`{"properties":{"virtualMachines":[{"id":"` + fuzzVM + `","ports":[{"number":22,"allowedSourceAddressPrefix":"*","allowedSourceAddressPrefixes":["*"]}]}]}}`,
	`{"properties":{"virtualMachines":[{"id":"` + fuzzVM + `","ports":[{"number":70000,"maxRequestAccessDuration":"3 hours","allowedSourceAddressPrefix":7}]}]}}`,
	`{"properties":null}`, `{}`, `[]`, `"x"`, `null`, ``, ` `, `{"properties":{}} {}`, `{"properties":{"virtualMachines":[`,
	`{"properties":{"virtualMachines":[{"id":"` + fuzzVM + `","ports":[{"number":1e400}]}]}}`,
}

// FuzzPolicyBody runs a PUT body through decodeStrict and toPolicy, and what
// they accept through Normalise and back out as the GET body.
func FuzzPolicyBody(f *testing.F) {
	for _, s := range policySeeds {
		f.Add([]byte(s), "application/json")
	}
	f.Add([]byte(policySeeds[0]), "text/plain")
	f.Add([]byte(policySeeds[0]), "Application/JSON; charset=utf-8")
	// A long Content-Type is not echoed whole into the message.
	f.Add([]byte(policySeeds[0]), "applicatin"+strings.Repeat("\xbf", 3000)+"n/json")
	f.Fuzz(func(t *testing.T, body []byte, contentType string) {
		var b policyBody
		if err := decodeBody(body, contentType, &b); err != nil {
			checkUserError(t, body, err)
			return
		}
		checkRemarshal(t, body, &b, func() any { return new(policyBody) })
		pol, err := b.toPolicy("p")
		if err != nil {
			checkUserError(t, body, err)
			return
		}
		if len(pol.VMs) != len(b.Properties.VirtualMachines) {
			t.Fatalf("toPolicy of %q has %d VMs, the body %d", body, len(pol.VMs), len(b.Properties.VirtualMachines))
		}
		if err := pol.Normalise(jit.DefaultMinDuration); err != nil {
			checkUserError(t, body, err)
			return
		}
		// What a GET returns, PUT back, is the same policy.
		got, err := json.Marshal(policyToOut(pol, jit.PolicyStatus{}))
		if err != nil {
			t.Fatalf("marshalling the policy of %q: %v", body, err)
		}
		var back policyBody
		err = decodeBody(got, "application/json", &back)
		if err != nil {
			t.Fatalf("the GET body %s of PUT %q is refused on PUT: %v", got, body, err)
		}
		pol2, err := back.toPolicy("p")
		if err == nil {
			err = pol2.Normalise(jit.DefaultMinDuration)
		}
		if err != nil {
			t.Fatalf("the GET body %s of PUT %q is refused on PUT: %v", got, body, err)
		}
		again, _ := json.Marshal(policyToOut(pol2, jit.PolicyStatus{}))
		if !bytes.Equal(got, again) {
			t.Fatalf("PUT %q, GET, PUT, GET changed the policy:\n%s\n%s", body, got, again)
		}
	})
}

var initiateSeeds = []string{
	`{"virtualMachines":[{"id":"` + fuzzVM + `","ports":[{"number":22,"duration":"PT5M","allowedSourceAddressPrefix":"203.0.113.7"}]}],"justification":"restart nginx"}`,
	`{"virtualMachines":[{"id":"` + fuzzVM + `","ports":[{"number":22,"endTimeUtc":"2026-11-24T08:00:00Z","allowedSourceAddressPrefixes":["10.0.0.1","10.0.0.2"]}]}],"justification":""}`,
	`{"virtualMachines":[{"id":"` + fuzzVM + `","ports":[{"number":3389,"protocol":"udp","endTimeUtc":"2026-11-24T08:00:00.1234567+02:00"}]}],"onBehalfOf":"alice"}`,
	`{"virtualMachines":[{"id":"` + fuzzVM + `","ports":[{"number":22,"endTimeUtc":"2026-11-24T08:00:00"}]}]}`,
	`{"virtualMachines":[{"id":"` + fuzzVM + `","ports":[{"number":22,"endTimeUtc":"tomorrow","duration":"PT0S"}]}]}`,
	`{"virtualMachines":[{"id":"` + fuzzVM + `","ports":[{"number":0,"duration":"PT5M"}]}]}`,
	`{"virtualMachines":[{"id":"` + fuzzVM + `","ports":[{"number":22,"duration":"P1000000W1000000DT1H"}]}]}`,
	`{"virtualMachines": [], "justificaton": "x"}`, `{"virtualMachines": []} {}`, `{"virtualMachines": [`, ``,
	`{"virtualMachines":[{"id":"` + fuzzVM + `","ports":[{"number":22,"allowedSourceAddressPrefix":{"a":1}}]}]}`,
}

// FuzzInitiateBody runs a request body through decodeStrict and toInput.
func FuzzInitiateBody(f *testing.F) {
	for _, s := range initiateSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var b initiateBody
		if err := decodeBody(body, "application/json", &b); err != nil {
			checkUserError(t, body, err)
			return
		}
		checkRemarshal(t, body, &b, func() any { return new(initiateBody) })
		in, err := b.toInput()
		if err != nil {
			checkUserError(t, body, err)
			return
		}
		if len(in.VMs) != len(b.VirtualMachines) {
			t.Fatalf("toInput of %q has %d VMs, the body %d", body, len(in.VMs), len(b.VirtualMachines))
		}
		for i, vm := range in.VMs {
			ports := b.VirtualMachines[i].Ports
			if vm.ID != b.VirtualMachines[i].ID || len(vm.Ports) != len(ports) {
				t.Fatalf("toInput of %q: VM %d is %+v, the body %+v", body, i, vm, b.VirtualMachines[i])
			}
			for j, p := range vm.Ports {
				if p.Number == 0 || p.Number != ports[j].Number || ports[j].Duration != "" && p.Duration <= 0 ||
					ports[j].EndTimeUtc != "" && p.End.IsZero() && !strings.HasPrefix(ports[j].EndTimeUtc, "0001-01-01T00:00:00") {
					t.Fatalf("toInput of %q: port %d of VM %d is %+v, the body %+v", body, j, i, p, ports[j])
				}
			}
		}
	})
}

// FuzzClientPrincipal feeds X-MS-CLIENT-PRINCIPAL raw: a refusal is
// Unauthorized with a message, an acceptance always names a principal.
func FuzzClientPrincipal(f *testing.F) {
	enc := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	for _, c := range [][2]string{
		{enc(`{"auth_typ":"aad","claims":[{"typ":"http://schemas.microsoft.com/identity/claims/objectidentifier","val":"oid-1"},{"typ":"roles","val":"JIT.Requester"},{"typ":"name","val":"Alice"}],"name_typ":"name","role_typ":"http://schemas.microsoft.com/ws/2008/06/identity/claims/role"}`), ""},
		{enc(`{"claims":[{"typ":"http://schemas.microsoft.com/ws/2008/06/identity/claims/role","val":"JIT.Admin"}],"role_typ":"http://schemas.microsoft.com/ws/2008/06/identity/claims/role"}`), "oid-2"},
		{enc(`{"claims":[{"typ":"oid","val":"oid-3"},{"typ":"","val":"JIT.Admin"}]}`), ""},
		{enc(`{"claims":[]}`), ""}, {enc(`{"claims":null}`), ""}, {enc(`[]`), ""}, {enc(`not json`), ""},
		{"not base64!", "x"}, {"", ""}, {"", "oid-4"}, {enc(`{"claims":[{"typ":"oid","val":""}]}`), ""},
		{strings.TrimRight(enc(`{"claims":[{"typ":"oid","val":"x"}]}`), "="), ""},
	} {
		f.Add(c[0], c[1])
	}
	f.Fuzz(func(t *testing.T, raw, headerID string) {
		h := http.Header{}
		h.Set("X-MS-CLIENT-PRINCIPAL", raw)
		h.Set("X-MS-CLIENT-PRINCIPAL-ID", headerID)
		h.Set("X-MS-CLIENT-PRINCIPAL-NAME", "someone")
		p, err := parseClientPrincipal(h, "203.0.113.7")
		if err != nil {
			if jit.ErrorCode(err) != jit.EUNAUTHORIZED || jit.ErrorMessage(err) == "" {
				t.Fatalf("parseClientPrincipal(%q): error %v, code %q", raw, err, jit.ErrorCode(err))
			}
			return
		}
		if p.ID == "" || headerID != "" && p.ID != headerID || p.Address != "203.0.113.7" {
			t.Fatalf("parseClientPrincipal(%q, id %q) = %+v", raw, headerID, p)
		}
	})
}

// FuzzClientPrincipalClaims builds the header from fuzz claims: the object
// id claim or the id header names the principal, and exactly the role
// claims give roles.
func FuzzClientPrincipalClaims(f *testing.F) {
	f.Add("oid-1", "JIT.Requester", "http://schemas.microsoft.com/ws/2008/06/identity/claims/role", "", false)
	f.Add("", "JIT.Admin", "roles", "oid-2", true)
	f.Add("ö\x00\"", "", "", "", false)
	f.Fuzz(func(t *testing.T, oid, role, roleTyp, headerID string, shortOID bool) {
		oidTyp := "http://schemas.microsoft.com/identity/claims/objectidentifier"
		if shortOID {
			oidTyp = "oid"
		}
		type claim struct {
			Typ string `json:"typ"`
			Val string `json:"val"`
		}
		cp := struct {
			Claims  []claim `json:"claims"`
			RoleTyp string  `json:"role_typ"`
		}{[]claim{{"name", "Alice"}, {oidTyp, oid}, {"roles", role}, {roleTyp, role}}, roleTyp}
		if roleTyp == oidTyp {
			return // the id claim is then a role claim; nothing to compare
		}
		raw, _ := json.Marshal(cp)
		h := http.Header{}
		h.Set("X-MS-CLIENT-PRINCIPAL", base64.StdEncoding.EncodeToString(raw))
		h.Set("X-MS-CLIENT-PRINCIPAL-ID", headerID)
		p, err := parseClientPrincipal(h, "")
		// JSON replaces invalid UTF-8; compare with what the claims carry.
		oid, role = jsonString(oid), jsonString(role)
		wantID := headerID
		if wantID == "" {
			wantID = oid
		}
		if wantID == "" {
			if jit.ErrorCode(err) != jit.EUNAUTHORIZED {
				t.Fatalf("a principal without an id: %+v, %v", p, err)
			}
			return
		}
		if err != nil || p.ID != wantID {
			t.Fatalf("principal %s with id header %q = %+v, %v; want id %q", raw, headerID, p, err, wantID)
		}
		for _, r := range p.Roles {
			if r != role && !(roleTyp == "name" && r == "Alice") && !(roleTyp == oidTyp && r == oid) {
				t.Fatalf("principal %s has role %q, which no role claim gives", raw, r)
			}
		}
		if len(p.Roles) == 0 {
			t.Fatalf("principal %s lost its role %q", raw, role)
		}
	})
}

func jsonString(s string) string {
	b, _ := json.Marshal(s)
	var out string
	_ = json.Unmarshal(b, &out)
	return out
}

// FuzzPrefixList calls UnmarshalJSON on any bytes, as a custom decoder may
// be given (encoding/json only passes it valid JSON).
func FuzzPrefixList(f *testing.F) {
	for _, s := range []string{`"*"`, ` "10.0.0.0/8" `, `["10.0.0.1","10.0.0.2"]`, `[]`, `null`, `[null]`, `7`, `{"a":1}`, `[1]`, ``, `[`, `"`, `["a",`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var p prefixList
		err := p.UnmarshalJSON(b)
		if err != nil {
			var fe *fieldError
			if !errors.As(err, &fe) || fe.Error() == "" {
				t.Fatalf("UnmarshalJSON(%q): error %v", b, err)
			}
			return
		}
		var list []string
		if string(bytes.TrimSpace(b)) == "null" {
			if p != nil {
				t.Fatalf("UnmarshalJSON(null) = %q, want absent", p)
			}
		} else if json.Unmarshal(b, &list) == nil && bytes.HasPrefix(bytes.TrimSpace(b), []byte("[")) {
			if len(p) != len(list) {
				t.Fatalf("UnmarshalJSON(%q) = %q, want %q", b, p, list)
			}
		} else if len(p) != 1 {
			t.Fatalf("UnmarshalJSON(%q) = %q, want one prefix", b, p)
		}
	})
}

// FuzzNeutraliseCell: no exported cell starts a formula, only such cells
// change, and the CSV writer and reader agree on the result.
func FuzzNeutraliseCell(f *testing.F) {
	for _, s := range []string{"", "=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx", "'=x", "alice", "=HYPERLINK(\"http://x\")", "\n=1", " =1", "a,b\"c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c := neutraliseCell(s)
		if c != "" && strings.ContainsRune("=+-@\t\r", rune(c[0])) {
			t.Fatalf("neutraliseCell(%q) = %q starts a formula", s, c)
		}
		if c != s && c != "'"+s || c != s && !strings.ContainsRune("=+-@\t\r", rune(s[0])) {
			t.Fatalf("neutraliseCell(%q) = %q", s, c)
		}
		var buf bytes.Buffer
		w := csv.NewWriter(&buf)
		_ = w.Write([]string{c, "x"})
		w.Flush()
		rec, err := csv.NewReader(&buf).Read()
		if err != nil {
			t.Fatalf("CSV of cell %q does not read back: %v", c, err)
		}
		// encoding/csv turns \r\n into \n inside quoted fields; otherwise a
		// cell reads back as written.
		if want := strings.ReplaceAll(c, "\r\n", "\n"); len(rec) != 2 || rec[0] != want && !strings.Contains(c, "\r") {
			t.Fatalf("CSV cell %q reads back as %q", c, rec)
		}
	})
}

// FuzzUnquoteETag: what the API sends as ETag (strconv.Quote) comes back
// through If-Match as it was, weak or not; anything else never panics.
func FuzzUnquoteETag(f *testing.F) {
	for _, s := range []string{"", `"abc"`, `W/"abc"`, `*`, `"`, `"\x"`, ` "a" `, `W/`, `"a", "b"`, "\"\\u00e9\""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		_ = unquoteETag(s)
		if got := unquoteETag(strconv.Quote(s)); got != s {
			t.Fatalf("unquoteETag(%s) = %q, want %q", strconv.Quote(s), got, s)
		}
		if got := unquoteETag("W/" + strconv.Quote(s)); got != s {
			t.Fatalf("unquoteETag(W/%s) = %q, want %q", strconv.Quote(s), got, s)
		}
	})
}

// FuzzQueryValues covers the query values the list endpoints parse.
func FuzzQueryValues(f *testing.F) {
	for _, c := range [][2]string{{"2026-01-02T15:04:05Z", "10"}, {"2026-01-02T15:04:05.123456789+02:00", "100000"}, {"2026-01-02", "0"}, {"", "-1"}, {"tomorrow", "1e3"}, {"9999-12-31T23:59:59-23:59", "100001"}} {
		f.Add(c[0], c[1])
	}
	f.Fuzz(func(t *testing.T, tv, limit string) {
		if tm, err := parseTime("from", tv); err != nil {
			checkUserError(t, []byte(tv), err)
		} else if tv == "" != tm.IsZero() && !strings.HasPrefix(tv, "0001-01-01T00:00:00") {
			t.Fatalf("parseTime(%q) = %v: only an empty value means no bound", tv, tm)
		}
		pg, err := parsePage(url.Values{"limit": {limit}, "$skipToken": {tv}}, requestPages)
		if err != nil {
			checkUserError(t, []byte(limit+tv), err)
		} else if pg.size < 1 || pg.size > requestPages.max || limit == "" && pg.size != requestPages.def {
			t.Fatalf("parsePage(limit %q) = %d", limit, pg.size)
		}
	})
}

// FuzzSkipToken: a token this server made reads back as it was made; any
// other string is refused with a user error or names a position.
func FuzzSkipToken(f *testing.F) {
	f.Add("requests", "abc", int64(1767225600), "")
	f.Add("audit", "20260102T150405-x", int64(0), "eyJrIjoicmVxdWVzdHMiLCJpIjoieCJ9")
	f.Fuzz(func(t *testing.T, kind, id string, sec int64, raw string) {
		tok := pageToken{Kind: kind, ID: id, Time: time.Unix(sec%(1<<35), 0).UTC()}
		// Lists give out tokens of valid UTF-8 only (JSON would replace
		// anything else), and of at most maxTokenLen characters.
		if kind != "" && len(id) <= 1024 && utf8.ValidString(kind) && utf8.ValidString(id) && len(encodeToken(tok)) <= maxTokenLen {
			got, ok := decodeToken(encodeToken(tok))
			if !ok || got.Kind != tok.Kind || got.ID != tok.ID || !got.Time.Equal(tok.Time) {
				t.Fatalf("token %+v read back as %+v, %v", tok, got, ok)
			}
		}
		if _, err := parsePage(url.Values{"$skipToken": {raw}}, auditPages); err != nil {
			checkUserError(t, []byte(raw), err)
		}
	})
}

// decodeBody runs decodeStrict as a handler does.
func decodeBody(body []byte, contentType string, v any) error {
	r := httptest.NewRequest(http.MethodPut, "/api/v1/policies/p", bytes.NewReader(body))
	if contentType != "" {
		r.Header.Set("Content-Type", contentType)
	}
	return decodeStrict(httptest.NewRecorder(), r, fuzzMaxBody, v)
}

// checkUserError: a refusal is an *httpError with a 4xx status or a
// *jit.Error with code EINVALID or EUNAUTHORIZED, with a message of bounded
// length however long the input, and writeError answers with it.
func checkUserError(t *testing.T, in []byte, err error) {
	t.Helper()
	var he *httpError
	if errors.As(err, &he) {
		if he.status < 400 || he.status > 499 || he.code == "" || he.msg == "" {
			t.Fatalf("input %q: http error %+v", in, he)
		}
	} else if code := jit.ErrorCode(err); code != jit.EINVALID && code != jit.EUNAUTHORIZED || jit.ErrorMessage(err) == "" {
		t.Fatalf("input %q: error %v (code %q) is not a user error", in, err, code)
	}
	rec := httptest.NewRecorder()
	writeError(rec, err)
	var eb errorBody
	if rec.Code < 400 || rec.Code > 499 || json.Unmarshal(rec.Body.Bytes(), &eb) != nil || eb.Error.Message == "" || len(eb.Error.Message) > 1024 || eb.Error.Code == "" {
		t.Fatalf("input %q: writeError answered %d %s", in, rec.Code, rec.Body)
	}
}

// checkRemarshal: a body decodeStrict accepted marshals, and that JSON is
// accepted again and marshals to the same bytes.
func checkRemarshal(t *testing.T, body []byte, v any, fresh func() any) {
	t.Helper()
	m1, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("accepted body %q does not marshal: %v", body, err)
	}
	v2 := fresh()
	if err := decodeBody(m1, "application/json", v2); err != nil {
		t.Fatalf("accepted body %q marshals to %s, which is refused: %v", body, m1, err)
	}
	m2, err := json.Marshal(v2)
	if err != nil || !bytes.Equal(m1, m2) {
		t.Fatalf("accepted body %q: marshal, decode, marshal gave\n%s\n%s (%v)", body, m1, m2, err)
	}
}
