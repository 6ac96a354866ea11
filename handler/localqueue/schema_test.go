package localqueue

import (
	"bytes"
	"encoding/json"
	"flag"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"jitaccess/handler/storetest"
)

// The golden files in testdata are the records this version keeps in the
// queue's buckets, indented for review (the buckets keep them compact).
// Queued operations outlive a release (a close is due hours later), so an
// upgraded queue must read them. Rewrite the files with
//
//	go test ./localqueue -run Golden -update
//
// and read the diff: a stored name that changes or goes away is an
// operation that an upgrade loses.
var update = flag.Bool("update", false, "rewrite the golden files in testdata with what this version writes")

func goldenRecord() record {
	op := storetest.SchemaOperation()
	return record{Op: op, Due: op.Due.Add(time.Minute), Attempts: 2, LastError: "ARM answered 429"}
}

func goldenDeadLetter() DeadLetter {
	op := storetest.SchemaOperation()
	return DeadLetter{Ticket: "7", Op: op, Attempts: 10, LastError: "ARM answered 429", DeadAt: op.Due.Add(time.Hour)}
}

// TestGoldenRecordsWritten compares the queue's records as this version
// writes them with their golden files.
func TestGoldenRecordsWritten(t *testing.T) {
	rec, dl := goldenRecord(), goldenDeadLetter()
	storetest.CheckPopulated(t, "record", rec)
	storetest.CheckPopulated(t, "DeadLetter", dl)
	storetest.CheckTagged(t, rec)
	storetest.CheckTagged(t, dl)

	db, err := bbolt.Open(filepath.Join(t.TempDir(), "queue.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var stored []byte
	err = db.Update(func(tx *bbolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketOps)
		if err != nil {
			return err
		}
		if err := putRecord(b, 7, rec); err != nil {
			return err
		}
		stored = bytes.Clone(b.Get(seqKey(7)))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	storetest.GoldenJSON(t, "testdata/record.golden", stored, *update)

	// As settle writes a dead letter.
	data, err := json.Marshal(dl)
	if err != nil {
		t.Fatal(err)
	}
	storetest.GoldenJSON(t, "testdata/dead-letter.golden", data, *update)
}

// TestGoldenRecordsRead decodes the golden records as New and DeadLetters
// do.
func TestGoldenRecordsRead(t *testing.T) {
	var rec record
	err := json.Unmarshal(storetest.ReadGolden(t, "testdata/record.golden"), &rec)
	storetest.CheckRead(t, "queue record", rec, err, goldenRecord())
	var dl DeadLetter
	err = json.Unmarshal(storetest.ReadGolden(t, "testdata/dead-letter.golden"), &dl)
	storetest.CheckRead(t, "dead letter", dl, err, goldenDeadLetter())
}
