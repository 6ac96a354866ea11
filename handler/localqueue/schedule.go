package localqueue

import "container/heap"

// schedule holds the waiting operations: by sequence number, for Cancel,
// and per NSG in due order, so that a dispatch looks at one head per NSG
// instead of every scheduled operation (tens of thousands of closes wait
// for their end times).
type schedule struct {
	bySeq map[uint64]*item
	byNSG map[string]*nsgHeap
}

func newSchedule() schedule {
	return schedule{bySeq: map[uint64]*item{}, byNSG: map[string]*nsgHeap{}}
}

func (s *schedule) len() int { return len(s.bySeq) }

// add schedules it; its due time must not change while it waits.
func (s *schedule) add(it *item) {
	if _, ok := s.bySeq[it.seq]; ok {
		return
	}
	s.bySeq[it.seq] = it
	h := s.byNSG[it.nsg]
	if h == nil {
		h = &nsgHeap{}
		s.byNSG[it.nsg] = h
	}
	heap.Push(h, it)
}

// remove takes the operation with sequence number seq off the schedule.
func (s *schedule) remove(seq uint64) (*item, bool) {
	it, ok := s.bySeq[seq]
	if !ok {
		return nil, false
	}
	delete(s.bySeq, seq)
	h := s.byNSG[it.nsg]
	heap.Remove(h, it.index)
	if h.Len() == 0 {
		delete(s.byNSG, it.nsg)
	}
	return it, true
}

// heads calls fn with the first waiting operation of every NSG.
func (s *schedule) heads(fn func(*item)) {
	for _, h := range s.byNSG {
		fn((*h)[0])
	}
}

// takeDue removes and returns the NSG's operations due at or before now,
// in due order, at most max.
func (s *schedule) takeDue(nsg string, due func(*item) bool, max int) []*item {
	h := s.byNSG[nsg]
	var out []*item
	for h != nil && h.Len() > 0 && len(out) < max && due((*h)[0]) {
		it := (*h)[0]
		s.remove(it.seq)
		out = append(out, it)
		h = s.byNSG[nsg]
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
