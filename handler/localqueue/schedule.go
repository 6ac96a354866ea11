package localqueue

import "container/heap"

// schedule holds the waiting operations: by sequence number, for Cancel,
// and per NSG in due order. The NSGs that may run (none of their
// operations is running) are kept in a heap by their first operation, so a
// dispatch looks only at the NSGs whose turn it is, not at every NSG (tens
// of thousands of closes wait for their end times on thousands of NSGs).
type schedule struct {
	bySeq map[uint64]*item
	byNSG map[string]*nsgQueue
	ready readyHeap
}

// nsgQueue is one NSG's waiting operations.
type nsgQueue struct {
	name  string
	ops   nsgHeap
	held  bool // one of its operations runs: the others wait for it
	index int  // position in ready; -1 when not there
}

func newSchedule() schedule {
	return schedule{bySeq: map[uint64]*item{}, byNSG: map[string]*nsgQueue{}}
}

func (s *schedule) len() int { return len(s.bySeq) }

// add schedules it; its due time must not change while it waits.
func (s *schedule) add(it *item) {
	if _, ok := s.bySeq[it.seq]; ok {
		return
	}
	s.bySeq[it.seq] = it
	n := s.byNSG[it.nsg]
	if n == nil {
		n = &nsgQueue{name: it.nsg, index: -1}
		s.byNSG[it.nsg] = n
	}
	heap.Push(&n.ops, it)
	s.place(n)
}

// remove takes the operation with sequence number seq off the schedule.
func (s *schedule) remove(seq uint64) (*item, bool) {
	it, ok := s.bySeq[seq]
	if !ok {
		return nil, false
	}
	delete(s.bySeq, seq)
	n := s.byNSG[it.nsg]
	heap.Remove(&n.ops, it.index)
	s.place(n)
	return it, true
}

// place puts n where it belongs after a change: in ready by its first
// operation when it has one and is not held, out of ready otherwise, and
// forgotten when it is empty and not held.
func (s *schedule) place(n *nsgQueue) {
	switch {
	case len(n.ops) > 0 && !n.held && n.index < 0:
		heap.Push(&s.ready, n)
	case len(n.ops) > 0 && !n.held:
		heap.Fix(&s.ready, n.index)
	case n.index >= 0:
		heap.Remove(&s.ready, n.index)
	}
	if len(n.ops) == 0 && !n.held {
		delete(s.byNSG, n.name)
	}
}

// first is the earliest operation of the NSGs that are not held, or nil.
func (s *schedule) first() *item {
	if len(s.ready) == 0 {
		return nil
	}
	return s.ready[0].ops[0]
}

// hold keeps nsg's operations from first and takeDue's callers while one
// of them runs; release lets them go again.
func (s *schedule) hold(nsg string) {
	n := s.byNSG[nsg]
	if n == nil {
		n = &nsgQueue{name: nsg, index: -1}
		s.byNSG[nsg] = n
	}
	n.held = true
	s.place(n)
}

func (s *schedule) release(nsg string) {
	if n := s.byNSG[nsg]; n != nil {
		n.held = false
		s.place(n)
	}
}

// takeDue removes and returns the NSG's operations due at or before now,
// in due order, at most max.
func (s *schedule) takeDue(nsg string, due func(*item) bool, max int) []*item {
	var out []*item
	for len(out) < max {
		n := s.byNSG[nsg]
		if n == nil || len(n.ops) == 0 || !due(n.ops[0]) {
			break
		}
		it := n.ops[0]
		s.remove(it.seq)
		out = append(out, it)
	}
	return out
}

// nsgHeap orders one NSG's waiting operations by due time, then by
// sequence number.
type nsgHeap []*item

func (h nsgHeap) Len() int           { return len(h) }
func (h nsgHeap) Less(i, j int) bool { return h[i].before(h[j]) }
func (h nsgHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *nsgHeap) Push(x any) {
	it := x.(*item)
	it.index = len(*h)
	*h = append(*h, it)
}
func (h *nsgHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	it.index = -1
	return it
}

// readyHeap orders NSGs by their first operation.
type readyHeap []*nsgQueue

func (h readyHeap) Len() int           { return len(h) }
func (h readyHeap) Less(i, j int) bool { return h[i].ops[0].before(h[j].ops[0]) }
func (h readyHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *readyHeap) Push(x any) {
	n := x.(*nsgQueue)
	n.index = len(*h)
	*h = append(*h, n)
}
func (h *readyHeap) Pop() any {
	old := *h
	n := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	n.index = -1
	return n
}
