package boltstore

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"jitaccess/handler/jit"
)

// BenchmarkIndexKey encodes and decodes the newest-first time keys of the
// request and audit indexes.
func BenchmarkIndexKey(b *testing.B) {
	t := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		k := indexKey(t, "k5c3hdq2x4mv7n8p9rwb6tyz1a")
		if _, _, err := splitKey(k); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAppendAudit is one audit write, fsync included (the state file
// lives in the test's temporary directory).
func BenchmarkAppendAudit(b *testing.B) {
	db, err := Open(filepath.Join(b.TempDir(), "bench.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	s, err := New(db.Bolt())
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		ev := jit.AuditEvent{ID: fmt.Sprintf("bench-%d", i), Time: time.Now(), Action: jit.AuditOpen, Actor: "bench",
			VM: "/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/virtualMachines/vm", Ports: []int{22}, Result: jit.ResultSuccess}
		if err := s.AppendAudit(ctx, ev); err != nil {
			b.Fatal(err)
		}
	}
}
