package tablestore

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"

	"jitaccess/handler/jit"
	"jitaccess/handler/storetest"
	"jitaccess/handler/testenv"
)

func parseForTest(connStr string) (*aztables.ServiceClient, error) {
	return aztables.NewServiceClientFromConnectionString(connStr, nil)
}

// newTestStore returns a store on tables of its own, deleted when t ends.
func newTestStore(t *testing.T, az *testenv.Azurite, pageSize int) *Store {
	t.Helper()
	var b [6]byte
	_, _ = rand.Read(b[:])
	prefix := "t" + hex.EncodeToString(b[:])
	s, err := NewFromConnectionString(az.ConnectionString(), Config{TablePrefix: prefix, PageSize: pageSize})
	if err != nil {
		t.Fatalf("NewFromConnectionString: %v", err)
	}
	t.Cleanup(func() {
		svc, err := parseForTest(az.ConnectionString())
		if err != nil {
			return
		}
		for _, name := range []string{"policies", "requests", "audit"} {
			_, _ = svc.DeleteTable(context.Background(), prefix+name, nil)
		}
	})
	return s
}

// TestStore runs everything that needs Azurite against one instance.
func TestStore(t *testing.T) {
	az := testenv.StartAzurite(t)

	// Pages of 7 entities, so that the suite crosses page boundaries.
	t.Run("Suite", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) jit.Store { return newTestStore(t, az, 7) })
	})
	t.Run("DefaultPageSize", func(t *testing.T) { testDefaultPageSize(t, newTestStore(t, az, 0)) })
	t.Run("FilterInjection", func(t *testing.T) { testFilterInjection(t, newTestStore(t, az, 3)) })
	t.Run("LargePolicy", func(t *testing.T) { testLargePolicy(t, newTestStore(t, az, 0)) })
	t.Run("IndexedUpdatesNoLostUpdate", func(t *testing.T) { testIndexedUpdates(t, newTestStore(t, az, 0)) })
	t.Run("TooManyVMs", func(t *testing.T) { testTooManyVMs(t, newTestStore(t, az, 0)) })
	t.Run("PolicyBeforeState", func(t *testing.T) { testPolicyBeforeState(t, newTestStore(t, az, 0)) })
	t.Run("AuditOutbox", func(t *testing.T) { testAuditOutbox(t, newTestStore(t, az, 0), az) })
	t.Run("ExistingTables", func(t *testing.T) {
		// A second store on the same tables sees the first one's data.
		s1, err := NewFromConnectionString(az.ConnectionString(), Config{TablePrefix: "shared"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s1.CreatePolicy(context.Background(), jit.Policy{Name: "p"}); err != nil {
			t.Fatal(err)
		}
		s2, err := NewFromConnectionString(az.ConnectionString(), Config{TablePrefix: "shared"})
		if err != nil {
			t.Fatalf("second store on existing tables: %v", err)
		}
		if _, err := s2.GetPolicy(context.Background(), "P"); err != nil {
			t.Errorf("second store: %v", err)
		}
	})
}

func TestConfigRejected(t *testing.T) {
	for _, cfg := range []Config{{TablePrefix: "1abc"}, {TablePrefix: "a-b"}, {PageSize: 1001}, {PageSize: -1}} {
		if _, err := NewFromConnectionString("UseDevelopmentStorage=true", cfg); err == nil {
			t.Errorf("config %+v accepted", cfg)
		}
	}
}

func testDefaultPageSize(t *testing.T, s *Store) {
	ctx := context.Background()
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range 30 {
		if err := s.AppendAudit(ctx, jit.AuditEvent{ID: fmt.Sprint(i), Time: t0.Add(time.Duration(i) * time.Second)}); err != nil {
			t.Fatal(err)
		}
	}
	n := 0
	if err := s.ScanAudit(ctx, jit.AuditFilter{}, func(jit.AuditEvent) error { n++; return nil }); err != nil || n != 30 {
		t.Errorf("ScanAudit = %d events, %v; want 30", n, err)
	}
}

// testFilterInjection shows that values in OData filters stay values: a
// quote cannot close the literal and add a clause.
func testFilterInjection(t *testing.T, s *Store) {
	ctx := context.Background()
	t0 := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	evil := "x' or RowKey ne 'x"
	for i, r := range []jit.Request{
		{ID: "plain", Policy: "prod", Requestor: "alice", Status: jit.RequestActive},
		{ID: "quoted", Policy: "o'brien", Requestor: evil, Status: "it's"},
	} {
		r.StartTime = t0.Add(time.Duration(i) * time.Hour)
		if _, err := s.CreateRequest(ctx, r); err != nil {
			t.Fatalf("CreateRequest(%s): %v", r.ID, err)
		}
	}
	cases := []struct {
		f    jit.RequestFilter
		want []string
	}{
		{jit.RequestFilter{Requestor: "nobody' or Requestor ne 'nobody"}, nil},
		{jit.RequestFilter{Requestor: "alice' or '1' eq '1"}, nil},
		{jit.RequestFilter{Policy: "x' or Policy ne 'x"}, nil},
		{jit.RequestFilter{Statuses: []string{"Nope') or (Status ne 'Nope"}}, nil},
		{jit.RequestFilter{VM: "vm' or PartitionKey ne '"}, nil},
		{jit.RequestFilter{Requestor: evil}, []string{"quoted"}},
		{jit.RequestFilter{Policy: "O'Brien"}, []string{"quoted"}},
		{jit.RequestFilter{Statuses: []string{"it's"}}, []string{"quoted"}},
		{jit.RequestFilter{}, []string{"quoted", "plain"}},
	}
	for _, c := range cases {
		rs, err := s.ListRequests(ctx, c.f)
		if err != nil {
			t.Errorf("ListRequests(%+v): %v", c.f, err)
			continue
		}
		var ids []string
		for _, r := range rs {
			ids = append(ids, r.ID)
		}
		if !slices.Equal(ids, c.want) {
			t.Errorf("ListRequests(%+v) = %q, want %q", c.f, ids, c.want)
		}
	}
	if err := s.AppendAudit(ctx, jit.AuditEvent{ID: "e'1", Time: t0, VM: "vm"}); err != nil {
		t.Fatal(err)
	}
	n := 0
	err := s.ScanAudit(ctx, jit.AuditFilter{VM: "x' or PartitionKey ne 'x"}, func(jit.AuditEvent) error { n++; return nil })
	if err != nil || n != 0 {
		t.Errorf("ScanAudit with a quote in the VM = %d events, %v; want none", n, err)
	}
}

func bigPolicy(name string, vms int) jit.Policy {
	p := jit.Policy{Name: name, CreatedAt: time.Date(2025, 1, 2, 3, 4, 5, 6000, time.UTC), UpdatedBy: "ünïcödé ✓"}
	for i := range vms {
		id := fmt.Sprintf("/subscriptions/00000000-0000-0000-0000-00000000000a/resourceGroups/rg-%d/providers/Microsoft.Compute/virtualMachines/vm-%d", i%7, i)
		p.VMs = append(p.VMs, jit.VMPolicy{
			ID:         id,
			Name:       fmt.Sprintf("vm-%d", i),
			Ports:      []jit.PortRule{{Number: 22, Protocol: jit.ProtocolTCP, AllowedSources: []string{"*"}, MaxDuration: 3 * time.Hour}},
			PrivateIPs: []string{fmt.Sprintf("10.0.%d.%d", i/250, i%250)},
			NSGs:       []jit.NSGRef{{ID: strings.Replace(id, "Microsoft.Compute/virtualMachines/vm", "Microsoft.Network/networkSecurityGroups/nsg-ünï", 1), Scope: "nic"}},
		})
	}
	return p
}

func testLargePolicy(t *testing.T, s *Store) {
	ctx := context.Background()
	p := bigPolicy("large", 600)
	data, _ := json.Marshal(p)
	if len(data) < 4*chunkSize {
		t.Fatalf("fixture is only %d bytes; want several chunks", len(data))
	}
	created, err := s.CreatePolicy(ctx, p)
	if err != nil {
		t.Fatalf("CreatePolicy of %d bytes: %v", len(data), err)
	}
	check := func(what string, got jit.Policy, want jit.Policy) {
		t.Helper()
		g, w := storetest.Comparable(got), storetest.Comparable(want)
		g.ETag, w.ETag = "", ""
		gj, _ := json.Marshal(g)
		wj, _ := json.Marshal(w)
		if string(gj) != string(wj) {
			t.Errorf("%s differs from what was stored (%d vs %d bytes)", what, len(gj), len(wj))
		}
	}
	got, err := s.GetPolicy(ctx, "large")
	if err != nil {
		t.Fatalf("GetPolicy: %v", err)
	}
	check("GetPolicy", got, p)
	// Shrinking must drop the chunks it no longer needs.
	small := bigPolicy("large", 3)
	small.ETag = created.ETag
	if _, err := s.UpdatePolicy(ctx, small); err != nil {
		t.Fatalf("UpdatePolicy: %v", err)
	}
	ps, err := s.ListPolicies(ctx)
	if err != nil || len(ps) != 1 {
		t.Fatalf("ListPolicies = %d, %v", len(ps), err)
	}
	check("listed policy after shrinking", ps[0], small)

	// Records above 16 KB are stored gzipped: 600 VMs take few chunks,
	// and only a record beyond what even that holds is refused.
	if err := s.DeletePolicy(ctx, "large", ""); err != nil {
		t.Fatal(err)
	}
	huge := bigPolicy("huge", 40000)
	_, err = s.CreatePolicy(ctx, huge)
	if jit.ErrorCode(err) != jit.EINVALID || !strings.Contains(jit.ErrorMessage(err), "too large") {
		t.Errorf("CreatePolicy of a huge policy = %v, want EINVALID saying it is too large", err)
	}
}

// testIndexedUpdates races updates that move index rows (status and start
// time change), which go through a transaction, and checks none is lost
// and the indexes stay exact.
func testIndexedUpdates(t *testing.T, s *Store) {
	ctx := context.Background()
	vm := "/subscriptions/00000000-0000-0000-0000-00000000000a/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm"
	t0 := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	r := jit.Request{ID: "flip", StartTime: t0, Status: jit.RequestActive, Justification: "0",
		Grants: []jit.Grant{{VM: vm, Protocol: jit.ProtocolTCP, Ports: []int{22}}}}
	if _, err := s.CreateRequest(ctx, r); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conflicts := 0
	for range 4 {
		wg.Go(func() {
			for range 10 {
				for {
					r, err := s.GetRequest(ctx, "flip")
					if err != nil {
						t.Error(err)
						return
					}
					var n int
					fmt.Sscan(r.Justification, &n)
					r.Justification = fmt.Sprint(n + 1)
					r.StartTime = t0.Add(time.Duration(n+1) * time.Minute)
					r.Status = []string{jit.RequestActive, jit.RequestClosed}[(n+1)%2]
					_, err = s.UpdateRequest(ctx, r)
					if jit.ErrorCode(err) == jit.ECONFLICT {
						mu.Lock()
						conflicts++
						mu.Unlock()
						continue
					}
					if err != nil {
						t.Error(err)
						return
					}
					break
				}
			}
		})
	}
	wg.Wait()
	got, err := s.GetRequest(ctx, "flip")
	if err != nil || got.Justification != "40" {
		t.Fatalf("after 40 increments: %q, %v (an update was lost)", got.Justification, err)
	}
	t.Logf("%d conflicts", conflicts)
	for _, f := range []jit.RequestFilter{{}, {VM: vm}, {Statuses: []string{jit.RequestActive}}, {Since: t0.Add(40 * time.Minute)}} {
		rs, err := s.ListRequests(ctx, f)
		if err != nil || len(rs) != 1 || rs[0].Justification != "40" {
			t.Errorf("ListRequests(%+v) = %d requests, %v; want just the latest", f, len(rs), err)
		}
	}
	for _, f := range []jit.RequestFilter{{Statuses: []string{jit.RequestClosed}}, {Since: t0.Add(41 * time.Minute)}} {
		if rs, err := s.ListRequests(ctx, f); err != nil || len(rs) != 0 {
			t.Errorf("ListRequests(%+v) = %d requests, %v; want none (stale index rows?)", f, len(rs), err)
		}
	}
	// Exactly two index rows remain: the time index and the VM's.
	n := 0
	err = s.scan(ctx, s.requests, "PartitionKey eq 'r' and RowKey ge 't_' and RowKey lt 't`'", 0, func(entity) (bool, error) { n++; return true, nil })
	if err != nil || n != 1 {
		t.Errorf("time index has %d rows, %v; want 1", n, err)
	}
	n = 0
	err = s.scan(ctx, s.requests, "PartitionKey eq 'r' and RowKey ge 'v_' and RowKey lt 'v`'", 0, func(entity) (bool, error) { n++; return true, nil })
	if err != nil || n != 1 {
		t.Errorf("VM index has %d rows, %v; want 1", n, err)
	}
}

func testTooManyVMs(t *testing.T, s *Store) {
	r := jit.Request{ID: "wide", StartTime: time.Now(), Status: jit.RequestActive}
	for i := range maxRequestVMs + 1 {
		r.Grants = append(r.Grants, jit.Grant{VM: fmt.Sprintf("/subscriptions/x/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm%d", i)})
	}
	_, err := s.CreateRequest(context.Background(), r)
	if jit.ErrorCode(err) != jit.EINVALID {
		t.Errorf("CreateRequest with %d VMs = %v, want EINVALID", len(r.Grants), err)
	}
	r.Grants = r.Grants[:maxRequestVMs]
	if _, err := s.CreateRequest(context.Background(), r); err != nil {
		t.Errorf("CreateRequest with %d VMs: %v", len(r.Grants), err)
	}
	// The worst update: every index row moves (new start, all VMs
	// replaced), 99 operations in one transaction.
	for i := range r.Grants {
		r.Grants[i].VM += "-moved"
	}
	r.StartTime = r.StartTime.Add(time.Minute)
	r.Status = jit.RequestClosed
	if _, err := s.UpdateRequest(context.Background(), r); err != nil {
		t.Errorf("UpdateRequest with %d VMs: %v", len(r.Grants), err)
	}
	rs, err := s.ListRequests(context.Background(), jit.RequestFilter{VM: r.Grants[0].VM})
	if err != nil || len(rs) != 1 {
		t.Errorf("ListRequests of a moved VM = %d, %v; want the request", len(rs), err)
	}
	rs, err = s.ListRequests(context.Background(), jit.RequestFilter{VM: strings.TrimSuffix(r.Grants[0].VM, "-moved")})
	if err != nil || len(rs) != 0 {
		t.Errorf("ListRequests of a VM no longer named = %d, %v; want none", len(rs), err)
	}
}

// testPolicyBeforeState: a policy row of the version before Policy.State
// (VMPolicy.Warnings in its JSON, no Version: its ETag was the Table ETag)
// still reads, updates with the tag handed out then, and holds its VM.
func testPolicyBeforeState(t *testing.T, s *Store) {
	var compact bytes.Buffer
	if err := json.Compact(&compact, storetest.PolicyBeforeState); err != nil {
		t.Fatal(err)
	}
	e := newEntity(policyPartition, "legacy")
	e["Name"] = "Legacy"
	e["D0"] = compact.String()
	resp, err := s.policies.AddEntity(context.Background(), e.marshal(), nil)
	if err != nil {
		t.Fatal(err)
	}
	storetest.CheckPolicyBeforeState(t, s, string(resp.ETag))
}

// testAuditOutbox cuts the way to the audit table after each change has
// committed: every change stands, its events wait in outbox rows that no
// listing mistakes for a policy or a request, and RecoverAudit appends
// each once and clears the rows.
func testAuditOutbox(t *testing.T, s *Store, az *testenv.Azurite) {
	ctx := context.Background()
	svc, err := parseForTest(az.ConnectionString())
	if err != nil {
		t.Fatal(err)
	}
	trail := s.audit
	s.audit = svc.NewClient("nosuchtable") // every append fails
	ev := func(id string) jit.AuditEvent {
		return jit.AuditEvent{ID: id, Time: time.Now(), Action: jit.AuditPolicyPut, Actor: "a", Result: jit.ResultSuccess}
	}
	p, err := s.CreatePolicy(ctx, jit.Policy{Name: "outbox"}, ev("put-1"))
	if err != nil {
		t.Fatalf("CreatePolicy with the trail out: %v (the change must stand)", err)
	}
	if p, err = s.UpdatePolicy(ctx, p, ev("put-2"), ev("put-2b")); err != nil {
		t.Fatalf("UpdatePolicy with the trail out: %v", err)
	}
	if _, err := s.CreatePolicy(ctx, jit.Policy{Name: "other"}); err != nil {
		t.Fatal(err)
	}
	if err := s.DeletePolicy(ctx, "other", "", ev("delete-1")); err != nil {
		t.Fatalf("DeletePolicy with the trail out: %v", err)
	}
	r, err := s.CreateRequest(ctx, jit.Request{ID: "req-1", Policy: "outbox", Status: jit.RequestActive, StartTime: time.Now()}, ev("request-1"))
	if err != nil {
		t.Fatalf("CreateRequest with the trail out: %v", err)
	}
	r.Status = jit.RequestClosed
	if _, err := s.UpdateRequest(ctx, r, ev("close-1")); err != nil {
		t.Fatalf("UpdateRequest with the trail out: %v", err)
	}
	// A refused change leaves no outbox row behind.
	if _, err := s.UpdateRequest(ctx, r, ev("stale-1")); jit.ErrorCode(err) != jit.ECONFLICT {
		t.Fatalf("UpdateRequest with a stale etag: %v, want a conflict", err)
	}
	ps, err := s.ListPolicies(ctx)
	if err != nil || len(ps) != 1 || ps[0].Name != "outbox" {
		t.Fatalf("ListPolicies with outbox rows waiting: %v, %v; want the one policy", ps, err)
	}
	rs, err := s.ListRequests(ctx, jit.RequestFilter{})
	if err != nil || len(rs) != 1 {
		t.Fatalf("ListRequests with outbox rows waiting: %d, %v; want the one request", len(rs), err)
	}
	if n, err := s.RecoverAudit(ctx); err == nil {
		t.Fatalf("RecoverAudit with the trail still out: %d, nil; want an error", n)
	}
	s.audit = trail
	var ids []string
	scan := func() {
		ids = nil
		if err := s.ScanAudit(ctx, jit.AuditFilter{}, func(ev jit.AuditEvent) error { ids = append(ids, ev.ID); return nil }); err != nil {
			t.Fatal(err)
		}
		slices.Sort(ids)
	}
	if scan(); len(ids) != 0 {
		t.Fatalf("events in the trail while it was out: %v", ids)
	}
	n, err := s.RecoverAudit(ctx)
	if err != nil || n != 5 {
		t.Fatalf("RecoverAudit: %d, %v; want the 5 changes", n, err)
	}
	want := []string{"close-1", "delete-1", "put-1", "put-2", "put-2b", "request-1"}
	if scan(); !slices.Equal(ids, want) {
		t.Fatalf("trail after RecoverAudit: %v, want %v", ids, want)
	}
	if n, err := s.RecoverAudit(ctx); err != nil || n != 0 {
		t.Errorf("RecoverAudit again: %d, %v; want nothing left", n, err)
	}
}
