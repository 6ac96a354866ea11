package boltstore_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"jitaccess/handler/boltstore"
	"jitaccess/handler/jit"
	"jitaccess/handler/storetest"

	"go.etcd.io/bbolt"
)

func open(t *testing.T, path string) (*boltstore.DB, *boltstore.Store) {
	t.Helper()
	db, err := boltstore.Open(path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	s, err := boltstore.New(db.Bolt())
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return db, s
}

func TestStore(t *testing.T) {
	storetest.Run(t, func(t *testing.T) jit.Store {
		db, s := open(t, filepath.Join(t.TempDir(), "state.db"))
		t.Cleanup(func() { db.Close() })
		// Scans cross chunk boundaries, also between requests that
		// started at the same time.
		s.SetListChunk(2)
		return s
	})
}

// TestScanRequestsChunks: a scan decodes listChunk requests per read
// transaction and calls fn only between transactions; every request comes
// once, in order, also where a chunk ends between equal start times.
func TestScanRequestsChunks(t *testing.T) {
	ctx := context.Background()
	db, s := open(t, filepath.Join(t.TempDir(), "state.db"))
	defer db.Close()
	s.SetListChunk(3)
	at := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	for i := range 10 {
		// Two requests per start time, so chunks end between equal times.
		r := jit.Request{ID: fmt.Sprintf("r%02d", i), Status: jit.RequestActive, StartTime: at.Add(time.Duration(i/2) * time.Minute)}
		if i == 4 {
			r.Status = jit.RequestClosed // skipped by its index entry, not decoded
		}
		if _, err := s.CreateRequest(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	before := db.Bolt().Stats().TxN
	var got []string
	err := s.ScanRequests(ctx, jit.RequestFilter{Statuses: []string{jit.RequestActive}}, func(r jit.Request) error {
		if open := db.Bolt().Stats().OpenTxN; open != 0 {
			t.Errorf("fn called for %s with %d read transactions open", r.ID, open)
		}
		got = append(got, r.ID)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"r08", "r09", "r06", "r07", "r05", "r02", "r03", "r00", "r01"}
	if !slices.Equal(got, want) {
		t.Errorf("scan %v, want %v", got, want)
	}
	if txs := db.Bolt().Stats().TxN - before; txs != 3 { // 9 decoded in chunks of 3
		t.Errorf("%d read transactions, want 3", txs)
	}
}

func TestReopen(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "nested", "dir", "state.db")
	db, s := open(t, path)
	at := time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC)
	p, err := s.CreatePolicy(ctx, jit.Policy{Name: "Prod", UpdatedAt: at})
	if err != nil {
		t.Fatalf("CreatePolicy: %v", err)
	}
	r, err := s.CreateRequest(ctx, jit.Request{ID: "r/1", StartTime: at, Status: jit.RequestActive})
	if err != nil {
		t.Fatalf("CreateRequest: %v", err)
	}
	if err := s.AppendAudit(ctx, jit.AuditEvent{ID: "e1", Time: at, Action: jit.AuditRequest}); err != nil {
		t.Fatalf("AppendAudit: %v", err)
	}
	if err := db.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("state file mode = %v, %v; want 0600", fi.Mode().Perm(), err)
	}

	db, s = open(t, path)
	defer db.Close()
	gotP, err := s.GetPolicy(ctx, "prod")
	if err != nil || gotP.ETag != p.ETag || !gotP.UpdatedAt.Equal(at) || gotP.UpdatedAt.Nanosecond() != 6 {
		t.Errorf("after reopen, GetPolicy = %+v, %v; want %+v to the nanosecond", gotP, err, p)
	}
	gotR, err := s.GetRequest(ctx, "r/1")
	if err != nil || gotR.ETag != r.ETag {
		t.Errorf("after reopen, GetRequest = %+v, %v", gotR, err)
	}
	if rs, _ := s.ListRequests(ctx, jit.RequestFilter{}); len(rs) != 1 {
		t.Errorf("after reopen, ListRequests returned %d requests, want 1", len(rs))
	}
	n := 0
	_ = s.ScanAudit(ctx, jit.AuditFilter{}, func(jit.AuditEvent) error { n++; return nil })
	if n != 1 {
		t.Errorf("after reopen, ScanAudit returned %d events, want 1", n)
	}
	// Idempotency survives a restart too.
	if err := s.AppendAudit(ctx, jit.AuditEvent{ID: "e1", Time: at.Add(time.Hour)}); err != nil {
		t.Errorf("AppendAudit again: %v", err)
	}
	n = 0
	_ = s.ScanAudit(ctx, jit.AuditFilter{}, func(jit.AuditEvent) error { n++; return nil })
	if n != 1 {
		t.Errorf("after re-append, ScanAudit returned %d events, want 1", n)
	}
}

func TestOpenInUse(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	db, err := boltstore.Open(path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer db.Close()
	_, err = boltstore.Open(path)
	if err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("second Open = %v, want an error saying the file is in use", err)
	}
}

// TestLongReadDoesNotHoldUpWrites writes more than the file's first size
// while a read transaction stays open, as a sweep's long list does: the
// writes must not wait for the read to end (a remap of the file would).
func TestLongReadDoesNotHoldUpWrites(t *testing.T) {
	ctx := context.Background()
	db, s := open(t, filepath.Join(t.TempDir(), "state.db"))
	defer db.Close()
	reading, release := make(chan struct{}), make(chan struct{})
	readDone := make(chan error, 1)
	go func() {
		readDone <- db.Bolt().View(func(*bbolt.Tx) error {
			close(reading)
			<-release
			return nil
		})
	}()
	<-reading
	wrote := make(chan error, 1)
	go func() {
		// 64 MB in 64 commits: the file grows well past its first size.
		value := make([]byte, 1<<20)
		for i := 0; i < 64; i++ {
			err := db.Bolt().Update(func(tx *bbolt.Tx) error {
				b, err := tx.CreateBucketIfNotExists([]byte("test_bulk"))
				if err != nil {
					return err
				}
				return b.Put([]byte(fmt.Sprint(i)), value)
			})
			if err != nil {
				wrote <- err
				return
			}
		}
		// And the store's own writes.
		wrote <- s.AppendAudit(ctx, jit.AuditEvent{ID: "after", Time: time.Now(), Action: jit.AuditRequest, Actor: "a", Result: jit.ResultSuccess})
	}()
	select {
	case err := <-wrote:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		close(release)
		t.Fatal("writes waited for an open read transaction (the file was remapped)")
	}
	close(release)
	if err := <-readDone; err != nil {
		t.Fatal(err)
	}
}

// TestStatusIndexOfOlderFiles lists requests by status in a file whose
// index does not carry statuses yet (written before it did): they are
// decoded and filtered, and an update fills the index in.
func TestStatusIndexOfOlderFiles(t *testing.T) {
	ctx := context.Background()
	db, s := open(t, filepath.Join(t.TempDir(), "state.db"))
	defer db.Close()
	now := time.Now().UTC()
	r, err := s.CreateRequest(ctx, jit.Request{ID: "old", Policy: "p", Requestor: "a", StartTime: now, Status: jit.RequestActive})
	if err != nil {
		t.Fatal(err)
	}
	err = db.Bolt().Update(func(tx *bbolt.Tx) error {
		idx := tx.Bucket([]byte("requests_by_start"))
		k, _ := idx.Cursor().First()
		return idx.Put(bytes.Clone(k), nil)
	})
	if err != nil {
		t.Fatal(err)
	}
	count := func(status string) int {
		rs, err := s.ListRequests(ctx, jit.RequestFilter{Statuses: []string{status}})
		if err != nil {
			t.Fatal(err)
		}
		return len(rs)
	}
	if count(jit.RequestActive) != 1 || count(jit.RequestClosed) != 0 {
		t.Fatalf("older file: %d active, %d closed; want 1, 0", count(jit.RequestActive), count(jit.RequestClosed))
	}
	r.Status = jit.RequestClosed
	if _, err := s.UpdateRequest(ctx, r); err != nil {
		t.Fatal(err)
	}
	if count(jit.RequestActive) != 0 || count(jit.RequestClosed) != 1 {
		t.Fatalf("after update: %d active, %d closed; want 0, 1", count(jit.RequestActive), count(jit.RequestClosed))
	}
	var v []byte
	_ = db.Bolt().View(func(tx *bbolt.Tx) error {
		_, v = tx.Bucket([]byte("requests_by_start")).Cursor().First()
		v = bytes.Clone(v)
		return nil
	})
	if want := "Closed\x00a\x00\x00p"; string(v) != want {
		t.Fatalf("index value after update %q, want %q", v, want)
	}
}

// TestListingForOnePersonDecodesTheirsOnly: a requester's listing, or the
// count of their open requests, reads the index and decodes only their
// requests, however many others the file holds. Another person's record,
// made undecodable, shows whether it was decoded.
func TestListingForOnePersonDecodesTheirsOnly(t *testing.T) {
	ctx := context.Background()
	db, s := open(t, filepath.Join(t.TempDir(), "state.db"))
	defer db.Close()
	now := time.Now().UTC()
	for i, who := range []string{"mallory", "alice", "mallory"} {
		r := jit.Request{ID: fmt.Sprintf("r%d", i), Policy: "p", Requestor: who, StartTime: now.Add(time.Duration(i) * time.Second), Status: jit.RequestPending}
		if _, err := s.CreateRequest(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	err := db.Bolt().Update(func(tx *bbolt.Tx) error {
		return tx.Bucket([]byte("requests")).Put([]byte("r2"), []byte("not JSON"))
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []jit.RequestFilter{
		{Requestor: "alice"},
		{Party: "alice", Limit: 100},
		{Requestor: "alice", Statuses: []string{jit.RequestActive, jit.RequestPending}, Limit: 21},
		{Requestor: "nobody"},
	} {
		rs, err := s.ListRequests(ctx, f)
		if err != nil {
			t.Fatalf("ListRequests(%+v) decoded someone else's request: %v", f, err)
		}
		if f.Requestor == "alice" && (len(rs) != 1 || rs[0].ID != "r1") {
			t.Errorf("ListRequests(%+v) = %d requests, want alice's r1", f, len(rs))
		}
	}
}

// TestPolicyBeforeState: a policy record of the version before
// Policy.State (with VMPolicy.Warnings, and the ETag inside, as this store
// wrote it) still reads, updates and holds its VM.
func TestPolicyBeforeState(t *testing.T) {
	db, s := open(t, filepath.Join(t.TempDir(), "state.db"))
	defer db.Close()
	const etag = "0f1e2d3c4b5a6978"
	record := bytes.Replace(storetest.PolicyBeforeState, []byte(`"ETag": ""`), []byte(`"ETag": "`+etag+`"`), 1)
	if bytes.Equal(record, storetest.PolicyBeforeState) {
		t.Fatal("the fixture has no ETag field to fill in")
	}
	err := db.Bolt().Update(func(tx *bbolt.Tx) error {
		return tx.Bucket([]byte("policies")).Put([]byte("legacy"), record)
	})
	if err != nil {
		t.Fatal(err)
	}
	storetest.CheckPolicyBeforeState(t, s, etag)
}
