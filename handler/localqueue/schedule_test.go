package localqueue

import (
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
	heads := map[string]uint64{}
	s.heads(func(it *item) { heads[it.nsg] = it.seq })
	if heads["a"] != 2 || heads["b"] != 3 {
		t.Fatalf("heads %v", heads)
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
}
