package localqueue

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

func TestScheduleKeepsDueOrderPerNSG(t *testing.T) {
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s := newSchedule()
	add := func(seq uint64, nsg string, due int) {
		s.add(&item{seq: seq, nsg: nsg, rec: record{Due: base.Add(time.Duration(due) * time.Second)}})
	}
	add(1, "a", 5)
	add(2, "a", 1)
	add(3, "b", 2)
	add(4, "a", 3)
	add(5, "a", 1) // same due as 2: enqueue order decides
	add(2, "a", 9) // already scheduled: ignored
	if s.len() != 5 {
		t.Fatalf("len %d", s.len())
	}
	if f := s.first(); f == nil || f.seq != 2 {
		t.Fatalf("first = %v, want seq 2 (a, due 1)", f)
	}
	// A held NSG's operations wait: b's is first until a is released.
	s.hold("a")
	if f := s.first(); f == nil || f.seq != 3 {
		t.Fatalf("first with a held = %v, want seq 3", f)
	}
	s.release("a")
	if f := s.first(); f == nil || f.seq != 2 {
		t.Fatalf("first after release = %v, want seq 2", f)
	}
	if _, ok := s.remove(4); !ok {
		t.Fatal("remove of a waiting item failed")
	}
	if _, ok := s.remove(4); ok {
		t.Fatal("second remove succeeded")
	}
	dueBy := func(sec int) func(*item) bool {
		return func(it *item) bool { return !it.rec.Due.After(base.Add(time.Duration(sec) * time.Second)) }
	}
	got := s.takeDue("a", dueBy(10), 2)
	if len(got) != 2 || got[0].seq != 2 || got[1].seq != 5 {
		t.Fatalf("takeDue = %v", got)
	}
	if got := s.takeDue("a", dueBy(4), 10); len(got) != 0 {
		t.Fatalf("took %d not yet due", len(got))
	}
	if got := s.takeDue("a", dueBy(5), 10); len(got) != 1 || got[0].seq != 1 {
		t.Fatalf("takeDue = %v", got)
	}
	if _, ok := s.byNSG["a"]; ok || s.len() != 1 {
		t.Fatalf("emptied NSG still indexed, len %d", s.len())
	}
	if f := s.first(); f == nil || f.seq != 3 {
		t.Fatalf("first after a emptied = %v, want seq 3", f)
	}
	// Held while empty, it keeps its place; released, it is forgotten.
	s.hold("c")
	add(6, "c", 0)
	if f := s.first(); f == nil || f.seq != 3 {
		t.Fatalf("first with c held = %v, want seq 3", f)
	}
	s.takeDue("c", dueBy(10), 10)
	s.release("c")
	if _, ok := s.byNSG["c"]; ok {
		t.Fatal("released empty NSG still indexed")
	}
}

// TestScheduleFirstIsEarliest checks first against a scan of every
// operation after a random mix of adds, removes, holds and releases.
func TestScheduleFirstIsEarliest(t *testing.T) {
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	rng := rand.New(rand.NewPCG(1, 2))
	s := newSchedule()
	held := map[string]bool{}
	var seq uint64
	for step := 0; step < 5000; step++ {
		nsg := fmt.Sprintf("n%d", rng.IntN(20))
		switch r := rng.IntN(10); {
		case r < 5:
			seq++
			s.add(&item{seq: seq, nsg: nsg, rec: record{Due: base.Add(time.Duration(rng.IntN(100)) * time.Second)}})
		case r < 7 && seq > 0:
			s.remove(uint64(rng.IntN(int(seq))) + 1)
		case r < 8:
			s.hold(nsg)
			held[nsg] = true
		case r < 9:
			s.release(nsg)
			delete(held, nsg)
		default:
			s.takeDue(nsg, func(*item) bool { return true }, 3)
		}
		var want *item
		for _, it := range s.bySeq {
			if !held[it.nsg] && (want == nil || it.before(want)) {
				want = it
			}
		}
		if got := s.first(); got != want {
			t.Fatalf("step %d: first = %+v, want %+v", step, got, want)
		}
	}
}
