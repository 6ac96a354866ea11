// Package storetest is the behaviour suite every jit.Store must pass: the
// bbolt store runs it against a temporary file and the Table Storage store
// against Azurite, so that both twins keep the same contract.
//
// It depends on jit and the standard library's testing only; it must not
// know about any particular store.
//
// The contract beyond store.go's comments, as the suite asserts it: policy
// names are unique case-insensitively (GetPolicy("PROD") finds "Prod") and
// ListPolicies orders by lower-case name; a VM is in one policy at most,
// whoever writes at the same time; NSG states are keyed by the
// case-insensitive id and keep the spelling of their first writer; ListRequests, ScanRequests and
// ScanAudit order newest first with ties in ascending id order; RequestFilter.Policy and the
// VM filters ignore case; an audit event without ID or Time is EINVALID, as
// is an empty policy name or request id; not-found messages name the key.
//
// Times are compared at microsecond precision, in UTC: Table Storage keeps
// 100 ns ticks, bbolt keeps nanoseconds, and callers may pass times in any
// zone. Ids include characters Table Storage keys forbid (/ \ # ?) and
// upper-case ARM ids, which a store must still keep exactly.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"jitaccess/handler/jit"
)

// Run runs the suite. newStore must return an empty store for each subtest
// and clean it up with t.Cleanup.
func Run(t *testing.T, newStore func(t *testing.T) jit.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s jit.Store)
	}{
		{"PolicyRoundTrip", testPolicyRoundTrip},
		{"PolicyNameIsCaseInsensitive", testPolicyNameCase},
		{"PolicyUpdateETag", testPolicyUpdateETag},
		{"PolicyDeleteETag", testPolicyDeleteETag},
		{"PolicyNotFound", testPolicyNotFound},
		{"ListPolicies", testListPolicies},
		{"PolicyNoLostUpdate", testPolicyNoLostUpdate},
		{"InvalidInput", testInvalidInput},
		{"RequestRoundTrip", testRequestRoundTrip},
		{"RequestOddIDs", testRequestOddIDs},
		{"RequestCreateUpdateETag", testRequestETag},
		{"RequestNoLostUpdate", testRequestNoLostUpdate},
		{"ListRequestsFilters", testListRequestsFilters},
		{"ListRequestsFollowsUpdates", testListRequestsFollowsUpdates},
		{"ScanRequests", testScanRequests},
		{"AuditRoundTrip", testAuditRoundTrip},
		{"AuditOrderAndFilters", testAuditOrderAndFilters},
		{"AuditIdempotent", testAuditIdempotent},
		{"AuditConcurrentReappend", testAuditConcurrentReappend},
		{"AuditScanStopsOnError", testAuditScanStops},
		{"AuditManyEvents", testAuditMany},
		{"Empty", testEmpty},
		{"RequestCreateAudited", testRequestCreateAudited},
		{"RequestUpdateAudited", testRequestUpdateAudited},
		{"PolicyWritesAudited", testPolicyWritesAudited},
		{"Notices", testNotices},
		{"NSGStateRoundTrip", testNSGStateRoundTrip},
		{"NSGStateMerge", testNSGStateMerge},
		{"NSGStateIDCase", testNSGStateIDCase},
		{"NSGStateConcurrent", testNSGStateConcurrent},
		{"VMUse", testVMUse},
		{"VMUseConcurrent", testVMUseConcurrent},
		{"PolicyOneVM", testPolicyOneVM},
		{"PolicyDeletingHoldsVMs", testPolicyDeletingHoldsVMs},
		{"PolicyRaceOneVM", testPolicyRaceOneVM},
		{"PolicyRaceSameName", testPolicyRaceSameName},
		{"PolicyRaceUnrelated", testPolicyRaceUnrelated},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.fn(t, newStore(t))
		})
	}
}

// Fixtures. base has nanoseconds and a zone other than UTC on purpose.
var (
	zone = time.FixedZone("UTC+2", 2*3600)
	base = time.Date(2025, 3, 4, 5, 6, 7, 123456789, zone)

	vmA = "/subscriptions/00000000-0000-0000-0000-00000000000a/resourceGroups/RG-One/providers/Microsoft.Compute/virtualMachines/VM-A"
	vmB = "/subscriptions/00000000-0000-0000-0000-00000000000a/resourceGroups/RG-One/providers/Microsoft.Compute/virtualMachines/vm-b"
	vmC = "/subscriptions/00000000-0000-0000-0000-00000000000a/resourceGroups/rg-two/providers/Microsoft.Compute/virtualMachines/vm-c"

	nsgNIC    = "/subscriptions/00000000-0000-0000-0000-00000000000a/resourceGroups/RG-One/providers/Microsoft.Network/networkSecurityGroups/NSG-NIC"
	nsgSubnet = "/subscriptions/00000000-0000-0000-0000-00000000000a/resourceGroups/RG-One/providers/Microsoft.Network/networkSecurityGroups/nsg-subnet"
)

// oddIDs are keys that Table Storage forbids or mangles, and ARM-style ids.
var oddIDs = []string{
	"slash/inside",
	`back\slash`,
	"hash#inside",
	"question?mark",
	"percent%2Fencoded",
	"with space",
	"ünïcödé",
	"UPPER-lower",
	nsgNIC,
	vmA + "#grant/0?x",
}

func fullPolicy(name string) jit.Policy {
	return jit.Policy{
		Name: name,
		VMs: []jit.VMPolicy{
			{
				ID: vmA,
				Ports: []jit.PortRule{
					{Number: 22, Protocol: jit.ProtocolTCP, AllowedSources: []string{"*"}, MaxDuration: 3 * time.Hour},
					{Number: 3389, Protocol: jit.ProtocolAny, AllowedSources: []string{"203.0.113.7/32", "10.0.0.0/8"}, MaxDuration: 90 * time.Minute},
				},
				Name:       "VM-A",
				PrivateIPs: []string{"10.0.0.4", "fd00::4"},
				NSGs:       []jit.NSGRef{{ID: nsgNIC, Scope: "nic"}, {ID: nsgSubnet, Scope: "subnet"}},
			},
			{
				ID:    vmB,
				Ports: []jit.PortRule{{Number: 5986, Protocol: jit.ProtocolUDP, AllowedSources: []string{"192.0.2.0/24"}, MaxDuration: 24 * time.Hour}},
				Name:  "vm-b",
			},
		},
		ETag:      "ignored-on-create",
		CreatedAt: base,
		UpdatedAt: base.Add(time.Hour + 987*time.Nanosecond),
		UpdatedBy: "alice@example.com",
	}
}

func fullRequest(id string) jit.Request {
	return jit.Request{
		ID:            id,
		Policy:        "Prod",
		Requestor:     "11111111-2222-3333-4444-555555555555",
		RequestorName: "Alice Ådahl",
		Justification: "incident #42: \"disk full\"\n<script>",
		StartTime:     base,
		Status:        jit.RequestActive,
		Approval: &jit.RequestApproval{MinApprovals: 1, Approvers: []string{"approver-1"}, PendingUntil: base.Add(time.Hour),
			Decisions: []jit.Decision{{By: "approver-1", ByName: "Bob", At: base.Add(time.Minute), Approve: true, Comment: "ok"}}},
		Grants: []jit.Grant{
			{
				VM:           vmA,
				Protocol:     jit.ProtocolTCP,
				Ports:        []int{22, 3389},
				Sources:      []string{"203.0.113.7"},
				Destinations: []string{"10.0.0.4"},
				End:          base.Add(3 * time.Hour),
				ApprovedEnd:  base.Add(3 * time.Hour),
				Status:       jit.GrantInitiated,
				NSGs: []jit.GrantNSG{
					{ID: nsgNIC, State: jit.RuleOpen, OpenedAt: base.Add(time.Second)},
					{ID: nsgSubnet, State: jit.RulePending, Error: "throttled: 429"},
				},
			},
			{
				VM:           vmB,
				Protocol:     jit.ProtocolAny,
				Ports:        []int{5986},
				Sources:      []string{"*"},
				Destinations: []string{"10.0.1.5", "fd00::5"},
				End:          base.Add(time.Hour),
				Status:       jit.GrantRevoked,
				StatusReason: jit.ReasonUserRequested,
				ClosedAt:     base.Add(30*time.Minute + 555*time.Nanosecond),
				NSGs: []jit.GrantNSG{
					{ID: nsgSubnet, State: jit.RuleClosed, OpenedAt: base.Add(2 * time.Second), ClosedAt: base.Add(30 * time.Minute)},
				},
			},
		},
		ETag: "ignored-on-create",
	}
}

func fullEvent(id string) jit.AuditEvent {
	return jit.AuditEvent{
		ID:       id,
		Time:     base,
		Action:   jit.AuditOpen,
		Actor:    "jitaccess",
		Policy:   "Prod",
		Request:  "req/1",
		VM:       vmA,
		NSG:      nsgNIC,
		Protocol: jit.ProtocolTCP,
		Ports:    []int{22, 3389},
		Sources:  []string{"203.0.113.7", "10.0.0.0/8"},
		Result:   jit.ResultFailure,
		Detail:   "ARM said: 409 \"AnotherOperationInProgress\"\ttab",
	}
}

func testPolicyRoundTrip(t *testing.T, s jit.Store) {
	ctx := context.Background()
	in := fullPolicy("Prod-1.web_tier")
	created, err := s.CreatePolicy(ctx, in)
	if err != nil {
		t.Fatalf("CreatePolicy: %v", err)
	}
	if created.ETag == "" || created.ETag == in.ETag {
		t.Errorf("CreatePolicy returned ETag %q, want a new non-empty one", created.ETag)
	}
	want := in
	want.ETag = created.ETag
	assertEqual(t, "created policy", created, want)

	got, err := s.GetPolicy(ctx, in.Name)
	if err != nil {
		t.Fatalf("GetPolicy: %v", err)
	}
	assertEqual(t, "stored policy", got, want)
	assertUTC(t, "stored policy", got)
}

func testPolicyNameCase(t *testing.T, s jit.Store) {
	ctx := context.Background()
	if _, err := s.CreatePolicy(ctx, fullPolicy("Prod")); err != nil {
		t.Fatalf("CreatePolicy: %v", err)
	}
	_, err := s.CreatePolicy(ctx, fullPolicy("prod"))
	assertCode(t, "CreatePolicy(prod) after Prod", err, jit.ECONFLICT)

	got, err := s.GetPolicy(ctx, "PROD")
	if err != nil {
		t.Fatalf("GetPolicy(PROD): %v", err)
	}
	if got.Name != "Prod" {
		t.Errorf("GetPolicy(PROD).Name = %q, want the stored spelling Prod", got.Name)
	}
	ps, err := s.ListPolicies(ctx)
	if err != nil {
		t.Fatalf("ListPolicies: %v", err)
	}
	if len(ps) != 1 {
		t.Errorf("ListPolicies returned %d policies, want 1", len(ps))
	}
	got.UpdatedBy = "bob"
	got.Name = "pROD"
	if _, err := s.UpdatePolicy(ctx, got); err != nil {
		t.Fatalf("UpdatePolicy(pROD): %v", err)
	}
	if got, _ := s.GetPolicy(ctx, "prod"); got.UpdatedBy != "bob" {
		t.Errorf("after UpdatePolicy(pROD), UpdatedBy = %q, want bob", got.UpdatedBy)
	}
	if err := s.DeletePolicy(ctx, "prOD", ""); err != nil {
		t.Fatalf("DeletePolicy(prOD): %v", err)
	}
	_, err = s.GetPolicy(ctx, "Prod")
	assertCode(t, "GetPolicy after delete", err, jit.ENOTFOUND)
}

func testPolicyUpdateETag(t *testing.T, s jit.Store) {
	ctx := context.Background()
	v1, err := s.CreatePolicy(ctx, fullPolicy("web"))
	if err != nil {
		t.Fatalf("CreatePolicy: %v", err)
	}
	v1.UpdatedBy = "bob"
	v2, err := s.UpdatePolicy(ctx, v1)
	if err != nil {
		t.Fatalf("UpdatePolicy with current ETag: %v", err)
	}
	if v2.ETag == "" || v2.ETag == v1.ETag {
		t.Errorf("UpdatePolicy returned ETag %q, want a new one (old %q)", v2.ETag, v1.ETag)
	}
	got, err := s.GetPolicy(ctx, "web")
	if err != nil {
		t.Fatalf("GetPolicy: %v", err)
	}
	assertEqual(t, "policy after update", got, v2)

	stale := v1
	stale.UpdatedBy = "mallory"
	_, err = s.UpdatePolicy(ctx, stale)
	assertCode(t, "UpdatePolicy with stale ETag", err, jit.ECONFLICT)
	if got, _ := s.GetPolicy(ctx, "web"); got.UpdatedBy != "bob" || got.ETag != v2.ETag {
		t.Errorf("a conflicting update changed the policy: UpdatedBy %q ETag %q", got.UpdatedBy, got.ETag)
	}

	blind := v1
	blind.ETag = ""
	blind.UpdatedBy = "carol"
	v3, err := s.UpdatePolicy(ctx, blind)
	if err != nil {
		t.Fatalf("UpdatePolicy without ETag: %v", err)
	}
	if v3.ETag == "" || v3.ETag == v2.ETag {
		t.Errorf("unconditional UpdatePolicy returned ETag %q, want a new one", v3.ETag)
	}

	missing := fullPolicy("nowhere")
	_, err = s.UpdatePolicy(ctx, missing)
	assertCode(t, "UpdatePolicy of a missing policy", err, jit.ENOTFOUND)
	assertMessageNames(t, err, "nowhere")
	missing.ETag = ""
	_, err = s.UpdatePolicy(ctx, missing)
	assertCode(t, "UpdatePolicy of a missing policy without ETag", err, jit.ENOTFOUND)
	if _, err := s.GetPolicy(ctx, "nowhere"); jit.ErrorCode(err) != jit.ENOTFOUND {
		t.Errorf("UpdatePolicy of a missing policy created it")
	}
}

func testPolicyDeleteETag(t *testing.T, s jit.Store) {
	ctx := context.Background()
	v1, err := s.CreatePolicy(ctx, fullPolicy("web"))
	if err != nil {
		t.Fatalf("CreatePolicy: %v", err)
	}
	v2, err := s.UpdatePolicy(ctx, v1)
	if err != nil {
		t.Fatalf("UpdatePolicy: %v", err)
	}
	err = s.DeletePolicy(ctx, "web", v1.ETag)
	assertCode(t, "DeletePolicy with stale ETag", err, jit.ECONFLICT)
	if _, err := s.GetPolicy(ctx, "web"); err != nil {
		t.Fatalf("policy gone after a conflicting delete: %v", err)
	}
	if err := s.DeletePolicy(ctx, "web", v2.ETag); err != nil {
		t.Fatalf("DeletePolicy with current ETag: %v", err)
	}
	_, err = s.GetPolicy(ctx, "web")
	assertCode(t, "GetPolicy after delete", err, jit.ENOTFOUND)
	err = s.DeletePolicy(ctx, "web", "")
	assertCode(t, "second DeletePolicy", err, jit.ENOTFOUND)
	assertMessageNames(t, err, "web")

	// A tag read before the delete must not match the policy created after.
	v3, err := s.CreatePolicy(ctx, fullPolicy("web"))
	if err != nil {
		t.Fatalf("CreatePolicy again: %v", err)
	}
	if v3.ETag == v2.ETag || v3.ETag == v1.ETag {
		t.Errorf("recreated policy reuses an old ETag %q", v3.ETag)
	}
	old := v2
	_, err = s.UpdatePolicy(ctx, old)
	assertCode(t, "UpdatePolicy with a tag from before the delete", err, jit.ECONFLICT)
	if err := s.DeletePolicy(ctx, "web", ""); err != nil {
		t.Errorf("DeletePolicy without ETag: %v", err)
	}
	if ps, err := s.ListPolicies(ctx); err != nil || len(ps) != 0 {
		t.Errorf("ListPolicies after deleting the only policy = %d, %v; want none", len(ps), err)
	}
}

func testPolicyNotFound(t *testing.T, s jit.Store) {
	_, err := s.GetPolicy(context.Background(), "absent")
	assertCode(t, "GetPolicy(absent)", err, jit.ENOTFOUND)
	assertMessageNames(t, err, "absent")
}

func testListPolicies(t *testing.T, s jit.Store) {
	ctx := context.Background()
	tags := map[string]string{}
	for _, name := range []string{"gamma", "Alpha", "beta"} {
		p, err := s.CreatePolicy(ctx, ownedBy(name, name))
		if err != nil {
			t.Fatalf("CreatePolicy(%s): %v", name, err)
		}
		tags[name] = p.ETag
	}
	ps, err := s.ListPolicies(ctx)
	if err != nil {
		t.Fatalf("ListPolicies: %v", err)
	}
	var names []string
	for _, p := range ps {
		names = append(names, p.Name)
		if p.ETag != tags[p.Name] {
			t.Errorf("ListPolicies: %s has ETag %q, want %q", p.Name, p.ETag, tags[p.Name])
		}
		want := ownedBy(p.Name, p.Name)
		want.ETag = p.ETag
		assertEqual(t, "listed policy "+p.Name, p, want)
	}
	if want := []string{"Alpha", "beta", "gamma"}; !slices.Equal(names, want) {
		t.Errorf("ListPolicies names = %q, want %q (case-insensitive name order)", names, want)
	}
}

func testInvalidInput(t *testing.T, s jit.Store) {
	ctx := context.Background()
	noTime := fullEvent("no-time")
	noTime.Time = time.Time{}
	calls := []struct {
		name string
		call func() error
	}{
		{"GetPolicy", func() error { _, err := s.GetPolicy(ctx, ""); return err }},
		{"CreatePolicy", func() error { _, err := s.CreatePolicy(ctx, fullPolicy("")); return err }},
		{"UpdatePolicy", func() error { _, err := s.UpdatePolicy(ctx, fullPolicy("")); return err }},
		{"DeletePolicy", func() error { return s.DeletePolicy(ctx, "", "") }},
		{"GetRequest", func() error { _, err := s.GetRequest(ctx, ""); return err }},
		{"CreateRequest", func() error { _, err := s.CreateRequest(ctx, fullRequest("")); return err }},
		{"UpdateRequest", func() error { _, err := s.UpdateRequest(ctx, fullRequest("")); return err }},
		{"AppendAudit without id", func() error { return s.AppendAudit(ctx, fullEvent("")) }},
		{"AppendAudit without time", func() error { return s.AppendAudit(ctx, noTime) }},
	}
	for _, c := range calls {
		assertCode(t, c.name, c.call(), jit.EINVALID)
	}
}

func testRequestRoundTrip(t *testing.T, s jit.Store) {
	ctx := context.Background()
	in := fullRequest("3k2l4m5n6o7p8q9r0s1t2u3v4w")
	created, err := s.CreateRequest(ctx, in)
	if err != nil {
		t.Fatalf("CreateRequest: %v", err)
	}
	if created.ETag == "" || created.ETag == in.ETag {
		t.Errorf("CreateRequest returned ETag %q, want a new non-empty one", created.ETag)
	}
	want := in
	want.ETag = created.ETag
	assertEqual(t, "created request", created, want)
	got, err := s.GetRequest(ctx, in.ID)
	if err != nil {
		t.Fatalf("GetRequest: %v", err)
	}
	assertEqual(t, "stored request", got, want)
	assertUTC(t, "stored request", got)
	if !got.Grants[0].ClosedAt.IsZero() || !got.Grants[0].NSGs[1].OpenedAt.IsZero() {
		t.Errorf("zero times came back non-zero: %v, %v", got.Grants[0].ClosedAt, got.Grants[0].NSGs[1].OpenedAt)
	}

	// A request with no grants and empty strings round-trips too.
	bare := jit.Request{ID: "bare", StartTime: base, Status: jit.RequestClosed}
	if _, err := s.CreateRequest(ctx, bare); err != nil {
		t.Fatalf("CreateRequest(bare): %v", err)
	}
	got, err = s.GetRequest(ctx, "bare")
	if err != nil {
		t.Fatalf("GetRequest(bare): %v", err)
	}
	bare.ETag = got.ETag
	assertEqual(t, "bare request", got, bare)
}

func testRequestOddIDs(t *testing.T, s jit.Store) {
	ctx := context.Background()
	for i, id := range oddIDs {
		r := fullRequest(id)
		r.StartTime = base.Add(time.Duration(i) * time.Minute)
		if _, err := s.CreateRequest(ctx, r); err != nil {
			t.Fatalf("CreateRequest(%q): %v", id, err)
		}
	}
	for _, id := range oddIDs {
		got, err := s.GetRequest(ctx, id)
		if err != nil {
			t.Errorf("GetRequest(%q): %v", id, err)
			continue
		}
		if got.ID != id {
			t.Errorf("GetRequest(%q).ID = %q", id, got.ID)
		}
		got.Justification = "updated"
		if _, err := s.UpdateRequest(ctx, got); err != nil {
			t.Errorf("UpdateRequest(%q): %v", id, err)
		}
	}
	rs, err := s.ListRequests(ctx, jit.RequestFilter{})
	if err != nil {
		t.Fatalf("ListRequests: %v", err)
	}
	var ids []string
	for _, r := range rs {
		ids = append(ids, r.ID)
		if r.Justification != "updated" {
			t.Errorf("listed %q has Justification %q, want updated", r.ID, r.Justification)
		}
	}
	want := slices.Clone(oddIDs)
	slices.Reverse(want)
	if !slices.Equal(ids, want) {
		t.Errorf("ListRequests ids = %q, want %q", ids, want)
	}
	_, err = s.GetRequest(ctx, "slash")
	assertCode(t, "GetRequest of a prefix of an odd id", err, jit.ENOTFOUND)
}

func testRequestETag(t *testing.T, s jit.Store) {
	ctx := context.Background()
	v1, err := s.CreateRequest(ctx, fullRequest("r1"))
	if err != nil {
		t.Fatalf("CreateRequest: %v", err)
	}
	_, err = s.CreateRequest(ctx, fullRequest("r1"))
	assertCode(t, "second CreateRequest", err, jit.ECONFLICT)

	v1.Status = jit.RequestClosed
	v2, err := s.UpdateRequest(ctx, v1)
	if err != nil {
		t.Fatalf("UpdateRequest: %v", err)
	}
	if v2.ETag == "" || v2.ETag == v1.ETag {
		t.Errorf("UpdateRequest returned ETag %q, want a new one (old %q)", v2.ETag, v1.ETag)
	}
	got, err := s.GetRequest(ctx, "r1")
	if err != nil {
		t.Fatalf("GetRequest: %v", err)
	}
	assertEqual(t, "request after update", got, v2)

	stale := v1
	stale.Justification = "lost"
	_, err = s.UpdateRequest(ctx, stale)
	assertCode(t, "UpdateRequest with stale ETag", err, jit.ECONFLICT)
	if got, _ := s.GetRequest(ctx, "r1"); got.Justification == "lost" {
		t.Errorf("a conflicting update changed the request")
	}

	blind := v1
	blind.ETag = ""
	blind.Justification = "blind"
	if _, err := s.UpdateRequest(ctx, blind); err != nil {
		t.Errorf("UpdateRequest without ETag: %v", err)
	}

	_, err = s.UpdateRequest(ctx, fullRequest("missing-req"))
	assertCode(t, "UpdateRequest of a missing request", err, jit.ENOTFOUND)
	assertMessageNames(t, err, "missing-req")
	_, err = s.GetRequest(ctx, "missing-req")
	assertCode(t, "GetRequest of a missing request", err, jit.ENOTFOUND)
	assertMessageNames(t, err, "missing-req")
}

// incrementConcurrently runs 8 goroutines that each add 1 ten times with
// read-modify-write, retrying on ECONFLICT. Any lost update shows as a
// final count below 80.
func incrementConcurrently(t *testing.T, increment func() error) {
	const workers, each = 8, 10
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range each {
				for try := 0; ; try++ {
					err := increment()
					if err == nil {
						break
					}
					if jit.ErrorCode(err) != jit.ECONFLICT || try > 1000 {
						t.Errorf("increment: %v", err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
}

func testPolicyNoLostUpdate(t *testing.T, s jit.Store) {
	ctx := context.Background()
	p := fullPolicy("counter")
	p.UpdatedBy = "0"
	if _, err := s.CreatePolicy(ctx, p); err != nil {
		t.Fatalf("CreatePolicy: %v", err)
	}
	incrementConcurrently(t, func() error {
		p, err := s.GetPolicy(ctx, "counter")
		if err != nil {
			return err
		}
		n, err := strconv.Atoi(p.UpdatedBy)
		if err != nil {
			return err
		}
		p.UpdatedBy = strconv.Itoa(n + 1)
		_, err = s.UpdatePolicy(ctx, p)
		return err
	})
	if got, _ := s.GetPolicy(ctx, "counter"); got.UpdatedBy != "80" {
		t.Errorf("counter = %s after 80 increments: an update was lost", got.UpdatedBy)
	}
}

func testRequestNoLostUpdate(t *testing.T, s jit.Store) {
	ctx := context.Background()
	r := fullRequest("counter")
	r.Justification = "0"
	if _, err := s.CreateRequest(ctx, r); err != nil {
		t.Fatalf("CreateRequest: %v", err)
	}
	incrementConcurrently(t, func() error {
		r, err := s.GetRequest(ctx, "counter")
		if err != nil {
			return err
		}
		n, err := strconv.Atoi(r.Justification)
		if err != nil {
			return err
		}
		r.Justification = strconv.Itoa(n + 1)
		_, err = s.UpdateRequest(ctx, r)
		return err
	})
	if got, _ := s.GetRequest(ctx, "counter"); got.Justification != "80" {
		t.Errorf("counter = %s after 80 increments: an update was lost", got.Justification)
	}
}

// listFixture stores six requests in shuffled order; newest first they are
// r5a, r5b (same start: ids ascending), r4, r3, r2, r1.
func listFixture(t *testing.T, s jit.Store) time.Time {
	t.Helper()
	t0 := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	mk := func(id, policy, requestor, status string, hours int, vms ...string) jit.Request {
		r := jit.Request{ID: id, Policy: policy, Requestor: requestor, Status: status, StartTime: t0.Add(time.Duration(hours) * time.Hour)}
		for _, vm := range vms {
			r.Grants = append(r.Grants, jit.Grant{VM: vm, Protocol: jit.ProtocolTCP, Ports: []int{22}, End: r.StartTime.Add(time.Hour), Status: jit.GrantInitiated})
		}
		return r
	}
	rs := []jit.Request{
		mk("r3", "dev", "alice", jit.RequestClosed, 3, vmA, vmC),
		mk("r5b", "Prod", "alice", jit.RequestClosed, 5, vmA),
		mk("r1", "Prod", "alice", jit.RequestActive, 1, vmA),
		mk("r5a", "dev", "bob", jit.RequestActive, 5, vmB),
		mk("r4", "Prod", "carol", jit.RequestActive, 4, vmC),
		mk("r2", "prod", "bob", jit.RequestClosed, 2, vmB),
	}
	rs[4].SubmittedBy = "bot" // r4: carol's, asked for by a delegate
	for _, r := range rs {
		if _, err := s.CreateRequest(context.Background(), r); err != nil {
			t.Fatalf("CreateRequest(%s): %v", r.ID, err)
		}
	}
	return t0
}

func testListRequestsFilters(t *testing.T, s jit.Store) {
	t0 := listFixture(t, s)
	cases := []struct {
		name string
		f    jit.RequestFilter
		want []string
	}{
		{"all", jit.RequestFilter{}, []string{"r5a", "r5b", "r4", "r3", "r2", "r1"}},
		{"vm upper case", jit.RequestFilter{VM: strings.ToUpper(vmA)}, []string{"r5b", "r3", "r1"}},
		{"vm lower case, second grant", jit.RequestFilter{VM: strings.ToLower(vmC)}, []string{"r4", "r3"}},
		{"unknown vm", jit.RequestFilter{VM: vmA + "x"}, nil},
		{"policy any case", jit.RequestFilter{Policy: "PROD"}, []string{"r5b", "r4", "r2", "r1"}},
		{"requestor", jit.RequestFilter{Requestor: "alice"}, []string{"r5b", "r3", "r1"}},
		{"one status", jit.RequestFilter{Statuses: []string{jit.RequestClosed}}, []string{"r5b", "r3", "r2"}},
		{"any of statuses", jit.RequestFilter{Statuses: []string{jit.RequestActive, jit.RequestClosed}}, []string{"r5a", "r5b", "r4", "r3", "r2", "r1"}},
		{"unknown status", jit.RequestFilter{Statuses: []string{"Nope"}}, nil},
		{"since is inclusive", jit.RequestFilter{Since: t0.Add(3 * time.Hour)}, []string{"r5a", "r5b", "r4", "r3"}},
		{"since in another zone", jit.RequestFilter{Since: t0.Add(3 * time.Hour).In(zone)}, []string{"r5a", "r5b", "r4", "r3"}},
		{"since after all", jit.RequestFilter{Since: t0.Add(6 * time.Hour)}, nil},
		{"limit", jit.RequestFilter{Limit: 2}, []string{"r5a", "r5b"}},
		{"limit above count", jit.RequestFilter{Limit: 100}, []string{"r5a", "r5b", "r4", "r3", "r2", "r1"}},
		{"limit applies after filters", jit.RequestFilter{VM: vmC, Limit: 1}, []string{"r4"}},
		{"combined", jit.RequestFilter{VM: vmA, Statuses: []string{jit.RequestClosed}, Since: t0.Add(2 * time.Hour), Limit: 5}, []string{"r5b", "r3"}},
		{"combined with requestor", jit.RequestFilter{Requestor: "bob", Policy: "Prod", Statuses: []string{jit.RequestClosed}}, []string{"r2"}},
		{"party: the submitter", jit.RequestFilter{Party: "bot"}, []string{"r4"}},
		{"party: the requestor", jit.RequestFilter{Party: "carol"}, []string{"r4"}},
		{"party: a requestor without delegates", jit.RequestFilter{Party: "alice"}, []string{"r5b", "r3", "r1"}},
		{"party and requestor", jit.RequestFilter{Party: "bot", Requestor: "alice"}, nil},
		{"party, hostile", jit.RequestFilter{Party: "bot' or '1' eq '1"}, nil},
		{"after the first", jit.RequestFilter{After: jit.Position{Time: t0.Add(5 * time.Hour), ID: "r5a"}}, []string{"r5b", "r4", "r3", "r2", "r1"}},
		{"after a tie", jit.RequestFilter{After: jit.Position{Time: t0.Add(5 * time.Hour), ID: "r5b"}}, []string{"r4", "r3", "r2", "r1"}},
		{"after, in another zone", jit.RequestFilter{After: jit.Position{Time: t0.Add(5 * time.Hour).In(zone), ID: "r5b"}}, []string{"r4", "r3", "r2", "r1"}},
		{"after a gone request", jit.RequestFilter{After: jit.Position{Time: t0.Add(270 * time.Minute), ID: "zz"}}, []string{"r4", "r3", "r2", "r1"}},
		{"after, with limit", jit.RequestFilter{After: jit.Position{Time: t0.Add(4 * time.Hour), ID: "r4"}, Limit: 2}, []string{"r3", "r2"}},
		{"after, by vm", jit.RequestFilter{VM: vmA, After: jit.Position{Time: t0.Add(5 * time.Hour), ID: "r5b"}}, []string{"r3", "r1"}},
		{"after, by status", jit.RequestFilter{Statuses: []string{jit.RequestActive}, After: jit.Position{Time: t0.Add(5 * time.Hour), ID: "r5a"}}, []string{"r4", "r1"}},
		{"after, by requestor", jit.RequestFilter{Requestor: "alice", After: jit.Position{Time: t0.Add(3 * time.Hour), ID: "r3"}}, []string{"r1"}},
		{"after the last", jit.RequestFilter{After: jit.Position{Time: t0.Add(time.Hour), ID: "r1"}}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rs, err := s.ListRequests(context.Background(), c.f)
			if err != nil {
				t.Fatalf("ListRequests: %v", err)
			}
			if got := requestIDs(rs); !slices.Equal(got, c.want) {
				t.Errorf("ListRequests(%+v) = %q, want %q", c.f, got, c.want)
			}
			var scanned []string
			err = s.ScanRequests(context.Background(), c.f, func(r jit.Request) error {
				scanned = append(scanned, r.ID)
				return nil
			})
			if err != nil || !slices.Equal(scanned, c.want) {
				t.Errorf("ScanRequests(%+v) = %q, %v; want %q", c.f, scanned, err, c.want)
			}
		})
	}
}

// testScanRequests crosses any chunk or page boundary a store may have:
// the scan resumes where it left off, fn may use the store (here: create
// requests, older and newer than the one it is handed) without breaking
// the scan, and an error from fn, or the end of ctx, stops it.
func testScanRequests(t *testing.T, s jit.Store) {
	ctx := context.Background()
	const n = 40
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	var want []string // active ones, newest first
	for _, i := range rand.Perm(n) {
		// Three per start time, so chunks and pages end between equal times.
		r := jit.Request{ID: fmt.Sprintf("s%02d", i), Status: jit.RequestActive, StartTime: t0.Add(time.Duration(i/3) * time.Minute)}
		if i%4 == 1 {
			r.Status = jit.RequestClosed
		}
		if _, err := s.CreateRequest(ctx, r); err != nil {
			t.Fatalf("CreateRequest: %v", err)
		}
	}
	for i := n - 1; i >= 0; i-- {
		if i%4 != 1 {
			want = append(want, fmt.Sprintf("s%02d", i))
		}
	}
	// want is newest first with ties in ascending id order.
	slices.SortStableFunc(want, func(a, b string) int {
		ia, _ := strconv.Atoi(a[1:])
		ib, _ := strconv.Atoi(b[1:])
		if c := ib/3 - ia/3; c != 0 {
			return c
		}
		return strings.Compare(a, b)
	})
	active := jit.RequestFilter{Statuses: []string{jit.RequestActive}}

	var got []string
	created := map[string]bool{}
	err := s.ScanRequests(ctx, active, func(r jit.Request) error {
		got = append(got, r.ID)
		if len(got)%7 == 0 {
			// Written during the scan: one newer than everything, one in
			// the middle, one older than everything.
			for _, at := range []time.Duration{time.Hour, 6*time.Minute + time.Second, -time.Hour} {
				id := fmt.Sprintf("new%02d%+d", len(got), int(at.Seconds()))
				created[id] = true
				if _, err := s.CreateRequest(ctx, jit.Request{ID: id, Status: jit.RequestActive, StartTime: t0.Add(at)}); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("ScanRequests: %v", err)
	}
	var old []string
	times := map[string]int{}
	for _, id := range got {
		if times[id]++; !created[id] {
			old = append(old, id)
		} else if times[id] == 2 {
			t.Errorf("request %s created during the scan came twice", id)
		}
	}
	if !slices.Equal(old, want) {
		t.Errorf("scan with writes in between saw %q, want %q (requests created meanwhile aside)", old, want)
	}

	limited := active
	limited.Limit = 9
	got = nil
	if err := s.ScanRequests(ctx, limited, func(r jit.Request) error { got = append(got, r.ID); return nil }); err != nil || len(got) != 9 {
		t.Errorf("scan with limit 9: %d requests, %v", len(got), err)
	}

	stop := errors.New("enough")
	calls := 0
	err = s.ScanRequests(ctx, jit.RequestFilter{}, func(jit.Request) error {
		if calls++; calls == 11 {
			return fmt.Errorf("scan: %w", stop)
		}
		return nil
	})
	if !errors.Is(err, stop) || calls != 11 {
		t.Errorf("fn failing at call 11: ScanRequests returned %v after %d calls, want fn's error and no call after it", err, calls)
	}

	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	calls = 0
	err = s.ScanRequests(cctx, jit.RequestFilter{}, func(jit.Request) error {
		if calls++; calls == 5 {
			cancel()
		}
		return nil
	})
	if !errors.Is(err, context.Canceled) || calls != 5 {
		t.Errorf("ctx cancelled at call 5: ScanRequests returned %v after %d calls, want context.Canceled and no call after it", err, calls)
	}
}

func testListRequestsFollowsUpdates(t *testing.T, s jit.Store) {
	ctx := context.Background()
	t0 := listFixture(t, s)
	r1, err := s.GetRequest(ctx, "r1")
	if err != nil {
		t.Fatalf("GetRequest: %v", err)
	}
	r1.Status = jit.RequestClosed
	r1.StartTime = t0.Add(10 * time.Hour)
	r1.Grants[0].VM = vmB
	if _, err := s.UpdateRequest(ctx, r1); err != nil {
		t.Fatalf("UpdateRequest: %v", err)
	}
	check := func(f jit.RequestFilter, want ...string) {
		t.Helper()
		rs, err := s.ListRequests(ctx, f)
		if err != nil {
			t.Fatalf("ListRequests: %v", err)
		}
		if got := requestIDs(rs); !slices.Equal(got, want) {
			t.Errorf("after update, ListRequests(%+v) = %q, want %q", f, got, want)
		}
	}
	check(jit.RequestFilter{}, "r1", "r5a", "r5b", "r4", "r3", "r2")
	check(jit.RequestFilter{Statuses: []string{jit.RequestActive}}, "r5a", "r4")
	check(jit.RequestFilter{VM: vmA}, "r5b", "r3")
	check(jit.RequestFilter{Since: t0.Add(6 * time.Hour)}, "r1")
}

func requestIDs(rs []jit.Request) []string {
	var ids []string
	for _, r := range rs {
		ids = append(ids, r.ID)
	}
	return ids
}

func testAuditRoundTrip(t *testing.T, s jit.Store) {
	ctx := context.Background()
	var want []jit.AuditEvent
	for i, id := range oddIDs {
		ev := fullEvent(id)
		ev.Time = base.Add(time.Duration(len(oddIDs)-i) * time.Second)
		if err := s.AppendAudit(ctx, ev); err != nil {
			t.Fatalf("AppendAudit(%q): %v", id, err)
		}
		want = append(want, ev)
	}
	bare := jit.AuditEvent{ID: "bare", Time: base.Add(-time.Hour), Action: jit.AuditRequest}
	if err := s.AppendAudit(ctx, bare); err != nil {
		t.Fatalf("AppendAudit(bare): %v", err)
	}
	want = append(want, bare)
	got := scanAll(t, s, jit.AuditFilter{})
	if len(got) != len(want) {
		t.Fatalf("ScanAudit returned %d events, want %d", len(got), len(want))
	}
	for i := range want {
		assertEqual(t, "audit event "+want[i].ID, got[i], want[i])
		assertUTC(t, "audit event", got[i])
	}
}

// auditFixture appends events in shuffled order; newest first they are
// e5, e4a, e4b (same time: ids ascending), e3, e2, e1.
func auditFixture(t *testing.T, s jit.Store) time.Time {
	t.Helper()
	t0 := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	mk := func(id string, minutes int, vm string) jit.AuditEvent {
		return jit.AuditEvent{ID: id, Time: t0.Add(time.Duration(minutes) * time.Minute), Action: jit.AuditOpen, VM: vm, Result: jit.ResultSuccess}
	}
	for _, ev := range []jit.AuditEvent{
		mk("e3", 3, vmA),
		mk("e4b", 4, vmC),
		mk("e1", 1, strings.ToLower(vmA)),
		mk("e5", 5, vmB),
		mk("e4a", 4, strings.ToUpper(vmA)),
		mk("e2", 2, vmB),
	} {
		if err := s.AppendAudit(context.Background(), ev); err != nil {
			t.Fatalf("AppendAudit(%s): %v", ev.ID, err)
		}
	}
	return t0
}

func testAuditOrderAndFilters(t *testing.T, s jit.Store) {
	t0 := auditFixture(t, s)
	at := func(minutes int) time.Time { return t0.Add(time.Duration(minutes) * time.Minute) }
	cases := []struct {
		name string
		f    jit.AuditFilter
		want []string
	}{
		{"all", jit.AuditFilter{}, []string{"e5", "e4a", "e4b", "e3", "e2", "e1"}},
		{"vm any case", jit.AuditFilter{VM: vmA}, []string{"e4a", "e3", "e1"}},
		{"unknown vm", jit.AuditFilter{VM: vmA + "x"}, nil},
		{"from is inclusive", jit.AuditFilter{From: at(3)}, []string{"e5", "e4a", "e4b", "e3"}},
		{"to is exclusive", jit.AuditFilter{To: at(4)}, []string{"e3", "e2", "e1"}},
		{"to a nanosecond later", jit.AuditFilter{To: at(4).Add(time.Nanosecond)}, []string{"e4a", "e4b", "e3", "e2", "e1"}},
		{"from and to", jit.AuditFilter{From: at(2), To: at(5)}, []string{"e4a", "e4b", "e3", "e2"}},
		{"from and to in another zone", jit.AuditFilter{From: at(2).In(zone), To: at(5).In(zone)}, []string{"e4a", "e4b", "e3", "e2"}},
		{"from equals to", jit.AuditFilter{From: at(3), To: at(3)}, nil},
		{"to before all", jit.AuditFilter{To: at(0)}, nil},
		{"from after all", jit.AuditFilter{From: at(6)}, nil},
		{"limit", jit.AuditFilter{Limit: 2}, []string{"e5", "e4a"}},
		{"limit after filters", jit.AuditFilter{VM: vmB, Limit: 1}, []string{"e5"}},
		{"everything", jit.AuditFilter{VM: vmA, From: at(1), To: at(4), Limit: 1}, []string{"e3"}},
		{"after a tie", jit.AuditFilter{After: jit.Position{Time: at(4), ID: "e4a"}}, []string{"e4b", "e3", "e2", "e1"}},
		{"after, in another zone", jit.AuditFilter{After: jit.Position{Time: at(4).In(zone), ID: "e4b"}}, []string{"e3", "e2", "e1"}},
		{"after, by vm", jit.AuditFilter{VM: vmA, After: jit.Position{Time: at(4), ID: "e4a"}}, []string{"e3", "e1"}},
		{"after, with limit", jit.AuditFilter{After: jit.Position{Time: at(5), ID: "e5"}, Limit: 2}, []string{"e4a", "e4b"}},
		{"after, newer than to", jit.AuditFilter{To: at(3), After: jit.Position{Time: at(4), ID: "e4b"}}, []string{"e2", "e1"}},
		{"after, older than to", jit.AuditFilter{To: at(5), After: jit.Position{Time: at(3), ID: "e3"}}, []string{"e2", "e1"}},
		{"after, with from", jit.AuditFilter{From: at(2), After: jit.Position{Time: at(3), ID: "e3"}}, []string{"e2"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := eventIDs(scanAll(t, s, c.f)); !slices.Equal(got, c.want) {
				t.Errorf("ScanAudit(%+v) = %q, want %q", c.f, got, c.want)
			}
		})
	}
}

func testAuditIdempotent(t *testing.T, s jit.Store) {
	ctx := context.Background()
	first := fullEvent("once/only#1")
	if err := s.AppendAudit(ctx, first); err != nil {
		t.Fatalf("AppendAudit: %v", err)
	}
	again := first
	again.Time = first.Time.Add(time.Hour)
	again.Detail = "second delivery"
	for range 3 {
		if err := s.AppendAudit(ctx, again); err != nil {
			t.Fatalf("AppendAudit of a stored id: %v", err)
		}
	}
	got := scanAll(t, s, jit.AuditFilter{})
	if len(got) != 1 {
		t.Fatalf("after re-appending, ScanAudit returned %d events, want 1: %+v", len(got), got)
	}
	assertEqual(t, "re-appended event", got[0], first)
	// The re-append must not be findable at its own time either.
	if got := scanAll(t, s, jit.AuditFilter{From: again.Time}); len(got) != 0 {
		t.Errorf("re-append with a later time is visible: %+v", got)
	}
}

func testAuditConcurrentReappend(t *testing.T, s jit.Store) {
	ctx := context.Background()
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := range 10 {
				ev := fullEvent(fmt.Sprintf("ev-%d", i))
				ev.Time = base.Add(time.Duration(i)*time.Minute + time.Duration(w)*time.Second)
				if err := s.AppendAudit(ctx, ev); err != nil {
					t.Errorf("AppendAudit: %v", err)
				}
			}
		})
	}
	wg.Wait()
	got := eventIDs(scanAll(t, s, jit.AuditFilter{}))
	want := []string{"ev-9", "ev-8", "ev-7", "ev-6", "ev-5", "ev-4", "ev-3", "ev-2", "ev-1", "ev-0"}
	if !slices.Equal(got, want) {
		t.Errorf("after concurrent re-appends, ScanAudit = %q, want each id once: %q", got, want)
	}
}

func testAuditScanStops(t *testing.T, s jit.Store) {
	auditFixture(t, s)
	stop := errors.New("enough")
	var seen []string
	err := s.ScanAudit(context.Background(), jit.AuditFilter{}, func(ev jit.AuditEvent) error {
		seen = append(seen, ev.ID)
		if len(seen) == 2 {
			return fmt.Errorf("scan: %w", stop)
		}
		return nil
	})
	if !errors.Is(err, stop) {
		t.Errorf("ScanAudit returned %v, want fn's error", err)
	}
	if want := []string{"e5", "e4a"}; !slices.Equal(seen, want) {
		t.Errorf("fn saw %q, want %q and nothing after its error", seen, want)
	}
}

// testAuditMany crosses any page or batch boundary a store may have.
func testAuditMany(t *testing.T, s jit.Store) {
	ctx := context.Background()
	const n = 150
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	order := rand.Perm(n)
	for _, i := range order {
		vm := vmA
		if i%3 == 0 {
			vm = vmB
		}
		ev := jit.AuditEvent{ID: fmt.Sprintf("ev-%03d", i), Time: t0.Add(time.Duration(i) * time.Second), Action: jit.AuditClose, VM: vm}
		if err := s.AppendAudit(ctx, ev); err != nil {
			t.Fatalf("AppendAudit: %v", err)
		}
	}
	want := func(from, to int, vm string) []string {
		var ids []string
		for i := to - 1; i >= from; i-- {
			if vm == "" || (i%3 == 0) == (vm == vmB) {
				ids = append(ids, fmt.Sprintf("ev-%03d", i))
			}
		}
		return ids
	}
	sec := func(i int) time.Time { return t0.Add(time.Duration(i) * time.Second) }
	cases := []struct {
		name string
		f    jit.AuditFilter
		want []string
	}{
		{"all", jit.AuditFilter{}, want(0, n, "")},
		{"vm", jit.AuditFilter{VM: vmB}, want(0, n, vmB)},
		{"range", jit.AuditFilter{From: sec(7), To: sec(140)}, want(7, 140, "")},
		{"limit", jit.AuditFilter{Limit: 100}, want(50, n, "")},
		{"vm and limit", jit.AuditFilter{VM: vmA, Limit: 90}, want(0, n, vmA)[:90]},
	}
	for _, c := range cases {
		if got := eventIDs(scanAll(t, s, c.f)); !slices.Equal(got, c.want) {
			t.Errorf("%s: ScanAudit(%+v) returned %d events %q..., want %d", c.name, c.f, len(got), head(got), len(c.want))
		}
	}
}

func testEmpty(t *testing.T, s jit.Store) {
	ctx := context.Background()
	if ps, err := s.ListPolicies(ctx); err != nil || len(ps) != 0 {
		t.Errorf("ListPolicies on an empty store = %v, %v; want none", ps, err)
	}
	if rs, err := s.ListRequests(ctx, jit.RequestFilter{}); err != nil || len(rs) != 0 {
		t.Errorf("ListRequests on an empty store = %v, %v; want none", rs, err)
	}
	if evs := scanAll(t, s, jit.AuditFilter{}); len(evs) != 0 {
		t.Errorf("ScanAudit on an empty store = %v; want none", evs)
	}
}

func head(ids []string) []string { return ids[:min(len(ids), 5)] }

func scanAll(t *testing.T, s jit.Store, f jit.AuditFilter) []jit.AuditEvent {
	t.Helper()
	var evs []jit.AuditEvent
	err := s.ScanAudit(context.Background(), f, func(ev jit.AuditEvent) error {
		evs = append(evs, ev)
		return nil
	})
	if err != nil {
		t.Fatalf("ScanAudit(%+v): %v", f, err)
	}
	return evs
}

func eventIDs(evs []jit.AuditEvent) []string {
	var ids []string
	for _, ev := range evs {
		ids = append(ids, ev.ID)
	}
	return ids
}

func assertCode(t *testing.T, what string, err error, code string) {
	t.Helper()
	if got := jit.ErrorCode(err); got != code {
		t.Errorf("%s: error %v has code %q, want %q", what, err, got, code)
	}
}

func assertMessageNames(t *testing.T, err error, name string) {
	t.Helper()
	if msg := jit.ErrorMessage(err); !strings.Contains(msg, name) {
		t.Errorf("error message %q does not name %q", msg, name)
	}
}

// assertEqual compares got and want after Comparable.
func assertEqual[T any](t *testing.T, what string, got, want T) {
	t.Helper()
	g, w := Comparable(got), Comparable(want)
	if !reflect.DeepEqual(g, w) {
		t.Errorf("%s differs:\n got  %+v\n want %+v", what, g, w)
	}
}

// Comparable returns a deep copy of v (a struct, or a pointer to one) with
// every time.Time in UTC truncated to the microsecond and every empty slice
// nil: the differences a store may introduce without losing information.
func Comparable[T any](v T) T {
	c := reflect.New(reflect.TypeOf(v)).Elem()
	c.Set(canonical(reflect.ValueOf(v)))
	return c.Interface().(T)
}

var timeType = reflect.TypeFor[time.Time]()

func canonical(v reflect.Value) reflect.Value {
	switch {
	case v.Type() == timeType:
		t := v.Interface().(time.Time)
		return reflect.ValueOf(t.UTC().Truncate(time.Microsecond))
	case v.Kind() == reflect.Struct:
		c := reflect.New(v.Type()).Elem()
		for i := range v.NumField() {
			if c.Field(i).CanSet() {
				c.Field(i).Set(canonical(v.Field(i)))
			}
		}
		return c
	case v.Kind() == reflect.Slice:
		if v.Len() == 0 {
			return reflect.Zero(v.Type())
		}
		c := reflect.MakeSlice(v.Type(), v.Len(), v.Len())
		for i := range v.Len() {
			c.Index(i).Set(canonical(v.Index(i)))
		}
		return c
	case v.Kind() == reflect.Pointer && !v.IsNil():
		c := reflect.New(v.Type().Elem())
		c.Elem().Set(canonical(v.Elem()))
		return c
	}
	return v
}

// assertUTC checks that every time in v comes back in UTC, so that callers
// can format and compare stored times without converting.
func assertUTC(t *testing.T, what string, v any) {
	t.Helper()
	var walk func(path string, v reflect.Value)
	walk = func(path string, v reflect.Value) {
		switch {
		case v.Type() == timeType:
			if loc := v.Interface().(time.Time).Location(); loc != time.UTC {
				t.Errorf("%s: %s is in zone %v, want UTC", what, path, loc)
			}
		case v.Kind() == reflect.Struct:
			for i := range v.NumField() {
				walk(path+"."+v.Type().Field(i).Name, v.Field(i))
			}
		case v.Kind() == reflect.Slice:
			for i := range v.Len() {
				walk(fmt.Sprintf("%s[%d]", path, i), v.Index(i))
			}
		case v.Kind() == reflect.Pointer && !v.IsNil():
			walk(path, v.Elem())
		}
	}
	walk("", reflect.ValueOf(v))
}

// testRequestCreateAudited holds CreateRequest to its promise: the request
// and its audit events are stored together (the events in the trail when
// it returns, with nothing left to recover), and a refused create stores
// none of the events.
func testRequestCreateAudited(t *testing.T, s jit.Store) {
	ctx := context.Background()
	r := fullRequest("recorded")
	events := []jit.AuditEvent{fullEvent("request-recorded-0"), fullEvent("request-recorded-1")}
	events[1].Time = events[0].Time.Add(time.Second)
	created, err := s.CreateRequest(ctx, r, events...)
	if err != nil {
		t.Fatalf("CreateRequest: %v", err)
	}
	if created.ETag == "" {
		t.Error("CreateRequest returned no ETag")
	}
	got, err := s.GetRequest(ctx, r.ID)
	if err != nil {
		t.Fatalf("GetRequest after CreateRequest: %v", err)
	}
	want := r
	want.ETag = created.ETag
	assertEqual(t, "recorded request", got, want)
	if n := len(scanAll(t, s, jit.AuditFilter{})); n != 2 {
		t.Fatalf("%d audit events after CreateRequest, want 2", n)
	}
	assertNothingToRecover(t, s)
	// The same id again: a conflict, and its events are not stored either.
	if _, err := s.CreateRequest(ctx, r, fullEvent("request-recorded-again")); jit.ErrorCode(err) != jit.ECONFLICT {
		t.Fatalf("CreateRequest of an existing id: %v, want a conflict", err)
	}
	if n := len(scanAll(t, s, jit.AuditFilter{})); n != 2 {
		t.Errorf("a refused CreateRequest stored audit events: %d, want 2", n)
	}
	// An event without a time is refused before anything is stored.
	if _, err := s.CreateRequest(ctx, fullRequest("recorded-2"), jit.AuditEvent{ID: "no-time"}); jit.ErrorCode(err) != jit.EINVALID {
		t.Errorf("CreateRequest with an event without time: %v, want invalid", err)
	}
	if _, err := s.GetRequest(ctx, "recorded-2"); jit.ErrorCode(err) != jit.ENOTFOUND {
		t.Errorf("a refused CreateRequest stored its request: %v", err)
	}
}

// testRequestUpdateAudited holds UpdateRequest to its promise: the update
// and its audit events are stored together, and a refused update (a
// conflict, a missing request, a bad event) stores neither.
func testRequestUpdateAudited(t *testing.T, s jit.Store) {
	ctx := context.Background()
	created, err := s.CreateRequest(ctx, fullRequest("updated"))
	if err != nil {
		t.Fatalf("CreateRequest: %v", err)
	}
	changed := created
	changed.Status = jit.RequestClosed
	updated, err := s.UpdateRequest(ctx, changed, fullEvent("close-updated-0"))
	if err != nil {
		t.Fatalf("UpdateRequest: %v", err)
	}
	if updated.ETag == "" || updated.ETag == created.ETag {
		t.Errorf("UpdateRequest returned etag %q (was %q), want a new one", updated.ETag, created.ETag)
	}
	got, err := s.GetRequest(ctx, created.ID)
	if err != nil {
		t.Fatalf("GetRequest after UpdateRequest: %v", err)
	}
	if got.Status != jit.RequestClosed || got.ETag != updated.ETag {
		t.Errorf("after UpdateRequest: status %q etag %q, want %q %q", got.Status, got.ETag, jit.RequestClosed, updated.ETag)
	}
	if n := len(scanAll(t, s, jit.AuditFilter{})); n != 1 {
		t.Fatalf("%d audit events after UpdateRequest, want 1", n)
	}
	// A stale etag: a conflict, and neither the change nor its event stored.
	stale := created
	stale.Status = jit.RequestDenied
	if _, err := s.UpdateRequest(ctx, stale, fullEvent("stale-updated-0")); jit.ErrorCode(err) != jit.ECONFLICT {
		t.Fatalf("UpdateRequest with a stale etag: %v, want a conflict", err)
	}
	if got, _ := s.GetRequest(ctx, created.ID); got.Status != jit.RequestClosed {
		t.Errorf("a refused UpdateRequest changed the request: status %q", got.Status)
	}
	if n := len(scanAll(t, s, jit.AuditFilter{})); n != 1 {
		t.Errorf("a refused UpdateRequest stored audit events: %d, want 1", n)
	}
	// A missing request, and an event without a time: nothing stored.
	if _, err := s.UpdateRequest(ctx, fullRequest("never-created"), fullEvent("missing-updated-0")); jit.ErrorCode(err) != jit.ENOTFOUND {
		t.Errorf("UpdateRequest of a missing request: %v, want not found", err)
	}
	bad := updated
	bad.Status = jit.RequestDenied
	if _, err := s.UpdateRequest(ctx, bad, jit.AuditEvent{ID: "no-time"}); jit.ErrorCode(err) != jit.EINVALID {
		t.Errorf("UpdateRequest with an event without time: %v, want invalid", err)
	}
	if got, _ := s.GetRequest(ctx, created.ID); got.Status != jit.RequestClosed {
		t.Errorf("an UpdateRequest with a bad event changed the request: status %q", got.Status)
	}
	if n := len(scanAll(t, s, jit.AuditFilter{})); n != 1 {
		t.Errorf("refused UpdateRequests stored audit events: %d, want 1", n)
	}
	assertNothingToRecover(t, s)
}

// testPolicyWritesAudited holds the policy writes to the same promise:
// each change and its events together, a refused one neither.
func testPolicyWritesAudited(t *testing.T, s jit.Store) {
	ctx := context.Background()
	events := func() []string {
		var ids []string
		for _, ev := range scanAll(t, s, jit.AuditFilter{}) {
			ids = append(ids, ev.ID)
		}
		slices.Sort(ids)
		return ids
	}
	p := fullPolicy("audited")
	created, err := s.CreatePolicy(ctx, p, fullEvent("policy-put-1"))
	if err != nil {
		t.Fatalf("CreatePolicy: %v", err)
	}
	if _, err := s.CreatePolicy(ctx, p, fullEvent("policy-put-again")); jit.ErrorCode(err) != jit.ECONFLICT {
		t.Fatalf("CreatePolicy of an existing name: %v, want a conflict", err)
	}
	if _, err := s.CreatePolicy(ctx, fullPolicy("audited-2"), jit.AuditEvent{ID: "no-time"}); jit.ErrorCode(err) != jit.EINVALID {
		t.Errorf("CreatePolicy with an event without time: %v, want invalid", err)
	}
	if _, err := s.GetPolicy(ctx, "audited-2"); jit.ErrorCode(err) != jit.ENOTFOUND {
		t.Errorf("a CreatePolicy with a bad event stored its policy: %v", err)
	}
	updated, err := s.UpdatePolicy(ctx, created, fullEvent("policy-put-2"))
	if err != nil {
		t.Fatalf("UpdatePolicy: %v", err)
	}
	if _, err := s.UpdatePolicy(ctx, created, fullEvent("policy-put-stale")); jit.ErrorCode(err) != jit.ECONFLICT {
		t.Fatalf("UpdatePolicy with a stale etag: %v, want a conflict", err)
	}
	if err := s.DeletePolicy(ctx, p.Name, created.ETag, fullEvent("policy-delete-stale")); jit.ErrorCode(err) != jit.ECONFLICT {
		t.Fatalf("DeletePolicy with a stale etag: %v, want a conflict", err)
	}
	if err := s.DeletePolicy(ctx, p.Name, updated.ETag, fullEvent("policy-delete")); err != nil {
		t.Fatalf("DeletePolicy: %v", err)
	}
	if err := s.DeletePolicy(ctx, p.Name, "", fullEvent("policy-delete-again")); jit.ErrorCode(err) != jit.ENOTFOUND {
		t.Fatalf("DeletePolicy of a missing policy: %v, want not found", err)
	}
	if got, want := events(), []string{"policy-delete", "policy-put-1", "policy-put-2"}; !slices.Equal(got, want) {
		t.Errorf("audit events %v, want %v: only the changes that were stored", got, want)
	}
	if ps, err := s.ListPolicies(ctx); err != nil || len(ps) != 0 {
		t.Errorf("ListPolicies after the delete: %d policies, %v; want none", len(ps), err)
	}
	assertNothingToRecover(t, s)
}

// assertNothingToRecover fails when the store holds events of a change
// that it did not append to the trail, though no write was interrupted.
func assertNothingToRecover(t *testing.T, s jit.Store) {
	t.Helper()
	n, err := s.RecoverAudit(context.Background())
	if err != nil || n != 0 {
		t.Errorf("RecoverAudit after uninterrupted writes: %d completed, %v; want 0, nil", n, err)
	}
}

// testNotices holds the notices to the Store's promise: kept with their
// event or not at all, due from the event's time, earliest first, one per
// event however often it is appended, claimed by one writer at a time, and
// gone once settled.
func testNotices(t *testing.T, s jit.Store) {
	ctx := context.Background()
	withNotice := func(id string, at time.Time) jit.AuditEvent {
		ev := fullEvent(id)
		ev.Time = at
		ev.Notice = &jit.Notification{ID: id, Event: jit.EventPending, Time: at, Request: "req", Detail: "please"}
		return ev
	}
	ids := func(ns []jit.Notice) []string {
		var out []string
		for _, n := range ns {
			out = append(out, n.Notification.ID)
		}
		return out
	}
	due := func(now time.Time) []jit.Notice {
		t.Helper()
		ns, err := s.DueNotices(ctx, now, 10)
		if err != nil {
			t.Fatalf("DueNotices: %v", err)
		}
		return ns
	}
	t0 := base.Add(time.Hour)
	r, err := s.CreateRequest(ctx, fullRequest("noticed"), withNotice("n-created", t0.Add(2*time.Second)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.UpdateRequest(ctx, r, withNotice("n-updated", t0.Add(time.Second))); err != nil {
		t.Fatal(err)
	}
	// A refused write keeps no notice.
	if _, err := s.UpdateRequest(ctx, r, withNotice("n-refused", t0)); jit.ErrorCode(err) != jit.ECONFLICT {
		t.Fatalf("UpdateRequest with a stale etag: %v, want a conflict", err)
	}
	if err := s.AppendAudit(ctx, withNotice("n-appended", t0.Add(3*time.Second))); err != nil {
		t.Fatal(err)
	}
	if err := s.AppendAudit(ctx, withNotice("n-appended", t0.Add(3*time.Second))); err != nil {
		t.Fatal(err)
	}
	if got := due(t0); len(got) != 0 {
		t.Errorf("due before their events' times: %v", ids(got))
	}
	all := due(t0.Add(time.Minute))
	if got, want := ids(all), []string{"n-updated", "n-created", "n-appended"}; !slices.Equal(got, want) {
		t.Fatalf("due notices %v, want %v (earliest first, one per event)", got, want)
	}
	if n := all[1]; n.Notification.Detail != "please" || n.Attempts != 0 || !n.NotBefore.Equal(t0.Add(2*time.Second)) || n.ETag == "" {
		t.Errorf("notice as read: %+v", n)
	}
	if got, err := s.DueNotices(ctx, t0.Add(time.Minute), 2); err != nil || len(got) != 2 {
		t.Errorf("DueNotices with a limit of 2: %d, %v", len(got), err)
	}

	// A claim holds the notice until its lease ends; a second claim from
	// the same read loses.
	n := all[0]
	n.Attempts = 1
	until := t0.Add(10 * time.Minute)
	claimed, err := s.ClaimNotice(ctx, n, until)
	if err != nil {
		t.Fatalf("ClaimNotice: %v", err)
	}
	if claimed.ETag == "" || claimed.ETag == n.ETag || claimed.Attempts != 1 || !claimed.NotBefore.Equal(until) {
		t.Errorf("claimed notice %+v", claimed)
	}
	if _, err := s.ClaimNotice(ctx, n, until); jit.ErrorCode(err) != jit.ECONFLICT {
		t.Errorf("a second claim from the same read: %v, want a conflict", err)
	}
	if got := ids(due(t0.Add(time.Minute))); slices.Contains(got, "n-updated") {
		t.Errorf("a claimed notice is due during its lease: %v", got)
	}
	later := due(until)
	if len(later) != 3 || later[2].Notification.ID != "n-updated" || later[2].Attempts != 1 {
		t.Errorf("after the lease: %v", later)
	}

	// Settled: gone, and settling again or claiming it is harmless.
	if err := s.SettleNotice(ctx, "n-updated"); err != nil {
		t.Fatal(err)
	}
	if err := s.SettleNotice(ctx, "n-updated"); err != nil {
		t.Errorf("settling twice: %v", err)
	}
	if _, err := s.ClaimNotice(ctx, claimed, until); jit.ErrorCode(err) != jit.ENOTFOUND {
		t.Errorf("claiming a settled notice: %v, want not found", err)
	}
	if got := ids(due(until)); !slices.Equal(got, []string{"n-created", "n-appended"}) {
		t.Errorf("due after settling one: %v", got)
	}
}
