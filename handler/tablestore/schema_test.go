package tablestore

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"

	"jitaccess/handler/jit"
	"jitaccess/handler/storetest"
	"jitaccess/handler/testenv"
)

// The golden files in testdata are the entities this version writes for
// each kind of record (properties and payload, as sent to the table
// service, indented for review), built without Azurite from the pure
// encoding steps the store's writes use. Rewrite them with
//
//	go test ./tablestore -run Golden -update
//
// and read the diff: a stored name that changes or goes away is a record
// that tables written before can no longer give back.
var update = flag.Bool("update", false, "rewrite the golden files in testdata with what this version writes")

// goldenVersion stands for the random version a write stores in Version.
const goldenVersion = "golden-version"

// goldenEntities returns, by golden file, the entities written for each
// kind of record.
func goldenEntities(t *testing.T) map[string][]entity {
	t.Helper()
	for what, v := range map[string]any{
		"policy": storetest.SchemaPolicy(), "request": storetest.SchemaRequest(),
		"event": storetest.SchemaEvent(), "NSG state": storetest.SchemaNSGState(),
	} {
		storetest.CheckPopulated(t, what, v)
	}
	out := map[string][]entity{}

	pol, _, err := policyEntity(storetest.SchemaPolicy())
	if err != nil {
		t.Fatal(err)
	}
	pol["Version"] = goldenVersion
	out["testdata/policy.golden"] = []entity{pol}

	_, rec, idx, err := requestEntities(storetest.SchemaRequest())
	if err != nil {
		t.Fatal(err)
	}
	rec["Version"] = goldenVersion
	out["testdata/request.golden"] = append([]entity{rec}, sortedRows(idx)...)

	ev := storetest.SchemaEvent()
	id, err := checkEvent(&ev)
	if err != nil {
		t.Fatal(err)
	}
	idRow, err := auditIDEntity(ev, id)
	if err != nil {
		t.Fatal(err)
	}
	out["testdata/audit-event.golden"] = append([]entity{idRow}, auditTrailEntities(ev, id, idRow)...)

	ob, err := newOutbox(nil, requestPartition, []jit.AuditEvent{storetest.SchemaEvent()})
	if err != nil {
		t.Fatal(err)
	}
	out["testdata/outbox.golden"] = []entity{ob.row}

	st, err := nsgStateEntity(storetest.SchemaNSGState())
	if err != nil {
		t.Fatal(err)
	}
	out["testdata/nsg-state.golden"] = []entity{st}

	use, err := vmUseEntity(storetest.SchemaVMUse())
	if err != nil {
		t.Fatal(err)
	}
	out["testdata/vm-use.golden"] = []entity{use}
	return out
}

func sortedRows(rows map[string]entity) []entity {
	out := make([]entity, 0, len(rows))
	for _, k := range slices.Sorted(maps.Keys(rows)) {
		out = append(out, rows[k])
	}
	return out
}

// TestGoldenEntitiesWritten compares the entities this version writes for
// each kind of record with its golden file.
func TestGoldenEntitiesWritten(t *testing.T) {
	for file, rows := range goldenEntities(t) {
		t.Run(filepath.Base(file), func(t *testing.T) {
			raw := make([]json.RawMessage, len(rows))
			for i, e := range rows {
				raw[i] = e.marshal()
			}
			data, err := json.Marshal(raw)
			if err != nil {
				t.Fatal(err)
			}
			storetest.GoldenJSON(t, file, data, *update)
		})
	}
}

// readGolden returns the entities of a golden file as a query returns them.
func readGolden(t *testing.T, file string) []entity {
	t.Helper()
	var raw []json.RawMessage
	if err := json.Unmarshal(storetest.ReadGolden(t, file), &raw); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	rows := make([]entity, len(raw))
	for i, r := range raw {
		e, err := parseEntity(r)
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		rows[i] = e
	}
	return rows
}

// TestGoldenEntitiesRead decodes the golden entities as the store's reads
// do: tables already written must keep reading, whatever the code calls
// its fields.
func TestGoldenEntitiesRead(t *testing.T) {
	t.Run("policy", func(t *testing.T) {
		rows := readGolden(t, "testdata/policy.golden")
		got, err := decodePolicy(rows[0])
		want := storetest.SchemaPolicy()
		want.ETag = goldenVersion
		storetest.CheckRead(t, "policy", got, err, want)
	})
	t.Run("request written with a close ticket", func(t *testing.T) {
		// Requests stored before scheduled closes stopped being cancelled
		// carry a CloseTicket per NSG: they read as before, without it.
		rows := readGolden(t, "testdata/request-with-close-ticket.golden")
		got, err := decodeRequest(rows[0])
		want := storetest.SchemaRequest()
		want.ETag = goldenVersion
		storetest.CheckRead(t, "request", got, err, want)
	})
	t.Run("request", func(t *testing.T) {
		rows := readGolden(t, "testdata/request.golden")
		got, err := decodeRequest(rows[0])
		want := storetest.SchemaRequest()
		want.ETag = goldenVersion
		storetest.CheckRead(t, "request", got, err, want)
		// UpdateRequest finds the index rows to replace from the decoded
		// record: they must be the rows it was written with.
		idx, err := indexEntities(got)
		storetest.CheckRead(t, "index rows of the decoded request", sortedRows(idx), err, rows[1:])
		for _, e := range rows[1:] {
			if e.str("Id") != want.ID {
				t.Errorf("index row %s names request %q, want %q", e.str("RowKey"), e.str("Id"), want.ID)
			}
		}
	})
	t.Run("audit-event", func(t *testing.T) {
		rows := readGolden(t, "testdata/audit-event.golden")
		if len(rows) != 3 {
			t.Fatalf("%d audit rows, want the id row and two trail rows", len(rows))
		}
		for _, e := range rows {
			var got jit.AuditEvent
			err := e.payload(&got)
			storetest.CheckRead(t, "audit row "+e.str("PartitionKey"), got, err, storetest.SchemaEvent())
		}
	})
	t.Run("outbox", func(t *testing.T) {
		var got []jit.AuditEvent
		err := readGolden(t, "testdata/outbox.golden")[0].payload(&got)
		storetest.CheckRead(t, "outbox row", got, err, []jit.AuditEvent{storetest.SchemaEvent()})
	})
	t.Run("nsg-state", func(t *testing.T) {
		var got jit.NSGState
		err := readGolden(t, "testdata/nsg-state.golden")[0].payload(&got)
		storetest.CheckRead(t, "NSG state", got, err, storetest.SchemaNSGState())
	})
}

// TestGoldenEntitiesStored puts the golden entities in tables, as a store of
// this version left them, and uses them through the Store: every read
// finds them, by key and through the index rows' properties, the outbox row
// is recovered into the trail, and a record read can be written again.
func TestGoldenEntitiesStored(t *testing.T) {
	if testing.Short() {
		t.Skip("needs Azurite")
	}
	s := newTestStore(t, testenv.StartAzurite(t), 0)
	ctx := context.Background()
	insert := func(c *aztables.Client, file string) {
		t.Helper()
		for _, e := range readGolden(t, file) {
			if _, err := c.AddEntity(ctx, e.marshal(), nil); err != nil {
				t.Fatalf("insert %s row %s/%s: %v", file, e.str("PartitionKey"), e.str("RowKey"), err)
			}
		}
	}
	insert(s.policies, "testdata/policy.golden")
	insert(s.policies, "testdata/nsg-state.golden")
	insert(s.requests, "testdata/request.golden")
	insert(s.audit, "testdata/audit-event.golden")

	p := storetest.SchemaPolicy()
	p.ETag = goldenVersion
	got, err := s.GetPolicy(ctx, p.Name)
	storetest.CheckRead(t, "GetPolicy", got, err, p)
	ps, err := s.ListPolicies(ctx)
	storetest.CheckRead(t, "ListPolicies", ps, err, []jit.Policy{p})

	sts, err := s.ListNSGStates(ctx)
	storetest.CheckRead(t, "ListNSGStates", sts, err, []jit.NSGState{storetest.SchemaNSGState()})

	r := storetest.SchemaRequest()
	r.ETag = goldenVersion
	gotR, err := s.GetRequest(ctx, r.ID)
	storetest.CheckRead(t, "GetRequest", gotR, err, r)
	for _, f := range []jit.RequestFilter{
		{}, {VM: r.Grants[0].VM}, {Policy: r.Policy, Requestor: r.Requestor, Statuses: []string{r.Status}}, {Party: r.SubmittedBy},
	} {
		rs, err := s.ListRequests(ctx, f)
		storetest.CheckRead(t, fmt.Sprintf("ListRequests(%+v)", f), rs, err, []jit.Request{r})
	}

	ev := storetest.SchemaEvent()
	scan := func(what string, f jit.AuditFilter) {
		t.Helper()
		var evs []jit.AuditEvent
		err := s.ScanAudit(ctx, f, func(e jit.AuditEvent) error {
			evs = append(evs, e)
			return nil
		})
		storetest.CheckRead(t, what, evs, err, []jit.AuditEvent{ev})
	}
	scan("ScanAudit", jit.AuditFilter{})
	scan("ScanAudit of the VM", jit.AuditFilter{VM: ev.VM})

	// The outbox row of a change whose events were already appended: the
	// recovery appends nothing twice and removes the row.
	insert(s.requests, "testdata/outbox.golden")
	if n, err := s.RecoverAudit(ctx); err != nil || n != 1 {
		t.Errorf("RecoverAudit of the golden outbox row = %d, %v; want 1", n, err)
	}
	scan("ScanAudit after recovery", jit.AuditFilter{})

	// Written again, the records keep their place in the indexes.
	p.UpdatedBy = "bob"
	if _, err := s.UpdatePolicy(ctx, p); err != nil {
		t.Errorf("UpdatePolicy of the golden policy with its ETag: %v", err)
	}
	r.Status = jit.RequestClosed
	if _, err := s.UpdateRequest(ctx, r); err != nil {
		t.Fatalf("UpdateRequest of the golden request with its ETag: %v", err)
	}
	for status, want := range map[string]int{jit.RequestActive: 0, jit.RequestClosed: 1} {
		rs, err := s.ListRequests(ctx, jit.RequestFilter{Statuses: []string{status}})
		if err != nil || len(rs) != want {
			t.Errorf("ListRequests of status %s after the update = %d requests, %v; want %d", status, len(rs), err, want)
		}
	}
}
