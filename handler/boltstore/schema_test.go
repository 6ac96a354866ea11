package boltstore

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"go.etcd.io/bbolt"

	"jitaccess/handler/jit"
	"jitaccess/handler/storetest"
)

// The golden files in testdata are the records as this version stores them,
// indented for review (the store keeps them compact). Rewrite them with
//
//	go test ./boltstore -run Golden -update
//
// and read the diff: a stored name that changes or goes away is a record
// that files written before can no longer give back.
var update = flag.Bool("update", false, "rewrite the golden files in testdata with what this version writes")

// goldenRecord is one kind of record: its golden file, its bucket, and a
// value with every field set.
type goldenRecord struct {
	file   string
	bucket []byte
	key    []byte
	value  any
}

func goldenRecords() []goldenRecord {
	p, r, ev, st, u := storetest.SchemaPolicy(), storetest.SchemaRequest(), storetest.SchemaEvent(), storetest.SchemaNSGState(), storetest.SchemaVMUse()
	return []goldenRecord{
		{"testdata/policy.golden", bucketPolicies, policyKey(p.Name), p},
		{"testdata/request.golden", bucketRequests, []byte(r.ID), r},
		{"testdata/audit-event.golden", bucketAudit, indexKey(ev.Time, ev.ID), ev},
		{"testdata/nsg-state.golden", bucketNSGStates, []byte(strings.ToLower(st.ID)), st},
		{"testdata/vm-use.golden", bucketVMUse, []byte(strings.ToLower(u.VM)), u},
	}
}

func tempBolt(t *testing.T) *bbolt.DB {
	t.Helper()
	db, err := bbolt.Open(filepath.Join(t.TempDir(), "golden.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// TestGoldenRecordsWritten compares the bytes this version stores for each
// kind of record with its golden file.
func TestGoldenRecordsWritten(t *testing.T) {
	db := tempBolt(t)
	for _, rec := range goldenRecords() {
		t.Run(filepath.Base(rec.file), func(t *testing.T) {
			storetest.CheckPopulated(t, reflect.TypeOf(rec.value).String(), rec.value)
			storetest.CheckTagged(t, rec.value)
			var stored []byte
			err := db.Update(func(tx *bbolt.Tx) error {
				b, err := tx.CreateBucketIfNotExists(rec.bucket)
				if err != nil {
					return err
				}
				if err := put(b, rec.key, rec.value); err != nil {
					return err
				}
				stored = bytes.Clone(b.Get(rec.key))
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			storetest.GoldenJSON(t, rec.file, stored, *update)
		})
	}
}

// TestGoldenRecordsRead puts the golden records in a file as a store of
// this version wrote them and reads them back through the Store: records
// already on disk must keep reading, whatever the code calls its fields.
func TestGoldenRecordsRead(t *testing.T) {
	db := tempBolt(t)
	s, err := New(db)
	if err != nil {
		t.Fatal(err)
	}
	r, ev := storetest.SchemaRequest(), storetest.SchemaEvent()
	err = db.Update(func(tx *bbolt.Tx) error {
		for _, rec := range goldenRecords() {
			var stored bytes.Buffer
			if err := json.Compact(&stored, storetest.ReadGolden(t, rec.file)); err != nil {
				return err
			}
			if err := tx.Bucket(rec.bucket).Put(rec.key, stored.Bytes()); err != nil {
				return err
			}
		}
		if err := tx.Bucket(bucketRequestsByStart).Put(indexKey(r.StartTime, r.ID), []byte(r.Status)); err != nil {
			return err
		}
		return tx.Bucket(bucketAuditIDs).Put([]byte(ev.ID), indexKey(ev.Time, ev.ID))
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	p, err := s.GetPolicy(ctx, storetest.SchemaPolicy().Name)
	storetest.CheckRead(t, "GetPolicy", p, err, storetest.SchemaPolicy())

	got, err := s.GetRequest(ctx, r.ID)
	storetest.CheckRead(t, "GetRequest", got, err, r)
	rs, err := s.ListRequests(ctx, jit.RequestFilter{Statuses: []string{r.Status}})
	storetest.CheckRead(t, "ListRequests", rs, err, []jit.Request{r})

	var evs []jit.AuditEvent
	err = s.ScanAudit(ctx, jit.AuditFilter{VM: ev.VM}, func(e jit.AuditEvent) error {
		evs = append(evs, e)
		return nil
	})
	storetest.CheckRead(t, "ScanAudit", evs, err, []jit.AuditEvent{ev})

	sts, err := s.ListNSGStates(ctx)
	storetest.CheckRead(t, "ListNSGStates", sts, err, []jit.NSGState{storetest.SchemaNSGState()})
	u := storetest.SchemaVMUse()
	uses, err := s.VMUses(ctx, []string{u.VM})
	storetest.CheckRead(t, "VMUses", uses, err, map[string]jit.VMUse{strings.ToLower(u.VM): u})
}

// Requests stored before scheduled closes stopped being cancelled carry a
// CloseTicket per NSG: they read as before, without it.
func TestOlderRequestReads(t *testing.T) {
	var got jit.Request
	err := decode(storetest.ReadGolden(t, "testdata/request-with-close-ticket.golden"), &got)
	storetest.CheckRead(t, "request with a close ticket", got, err, storetest.SchemaRequest())
}
