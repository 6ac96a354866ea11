package tablestore

import (
	"encoding/json"
	"flag"
	"maps"
	"path/filepath"
	"slices"
	"testing"

	"jitaccess/handler/jit"
	"jitaccess/handler/storetest"
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
