package jit

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// openMargin is how long before its end a grant is no longer opened (a
// quarter of its length for grants shorter than 8 s): an NSG write takes
// seconds in Azure, so a later open would land after the end (and be
// removed again by its close).
const openMargin = 2 * time.Second

// closeEarly lets a scheduled close that arrives a moment before the end
// time (clock skew between queue and worker) still close.
const closeEarly = time.Second

// ruleAction is what an operation needs done to its rule.
type ruleAction int

const (
	ruleNothing ruleAction = iota
	ruleOpen
	ruleClose
)

// planOperation reads op's request and decides what op needs: an open of a
// grant that has ended closes, an open of an open rule, a close of a live
// grant and a close of a closed rule need nothing. nsg is the NSG's id as
// the grant spells it.
func (s *Applier) planOperation(ctx context.Context, op Operation) (req Request, act ruleAction, nsg string, err error) {
	req, err = s.store.GetRequest(ctx, op.RequestID)
	if ErrorCode(err) == ENOTFOUND {
		s.cfg.Log.Warn().Str("request", op.RequestID).Str("op", op.Kind).Msg("operation for an unknown request dropped")
		return req, ruleNothing, "", nil
	} else if err != nil {
		return req, ruleNothing, "", fmt.Errorf("reading request: %w", err)
	}
	if op.Grant < 0 || op.Grant >= len(req.Grants) {
		s.cfg.Log.Warn().Str("request", op.RequestID).Int("grant", op.Grant).Msg("operation for an unknown grant dropped")
		return req, ruleNothing, "", nil
	}
	g := &req.Grants[op.Grant]
	n, ok := g.NSG(op.NSG)
	if !ok {
		s.cfg.Log.Warn().Str("request", op.RequestID).Str("nsg", op.NSG).Msg("operation for an unknown NSG dropped")
		return req, ruleNothing, "", nil
	}
	now := s.now()
	closeUnlessClosed := ruleClose
	if n.State == RuleClosed {
		closeUnlessClosed = ruleNothing
	}
	switch op.Kind {
	case OpOpen:
		switch req.Status {
		case RequestPending, RequestDenied, RequestExpired:
			// Nothing was approved, so nothing opens, whoever queued this.
			s.cfg.Log.Warn().Str("request", req.ID).Str("status", req.Status).Msg("open of a request that is not approved dropped")
			return req, ruleNothing, n.ID, nil
		}
		if g.Ended(now.Add(min(openMargin, g.End.Sub(req.StartTime)/4))) {
			// Ended, or ending before an NSG write would be in force: an
			// open now would land after the end.
			return req, closeUnlessClosed, n.ID, nil
		}
		if n.State == RuleOpen {
			return req, ruleNothing, n.ID, nil
		}
		return req, ruleOpen, n.ID, nil
	case OpClose:
		if !g.Ended(now.Add(closeEarly)) {
			return req, ruleNothing, n.ID, nil // extended, or an old schedule: a newer close is queued
		}
		return req, closeUnlessClosed, n.ID, nil
	}
	s.cfg.Log.Warn().Str("op", op.Kind).Msg("operation of unknown kind dropped")
	return req, ruleNothing, "", nil
}

// maxBatch bounds how many grants one NSG write opens or closes, so that a
// burst is cut into NSG writes of a reasonable size.
const maxBatch = 200

// ApplyOperations applies ops, which must all name the same NSG, with one
// ARM write for all of them (and the NSG's lockdown, which every write
// brings in line): each op is decided as planOperation decides it, the
// rules to open and to remove go to one RuleChange, and then each op is
// recorded. It returns one error per op; when the write fails, every op
// that needed it fails.
func (s *Applier) ApplyOperations(ctx context.Context, ops []Operation) []error {
	errs := make([]error, len(ops))
	if len(ops) == 0 {
		return errs
	}
	type step struct {
		op  int
		req Request
		act ruleAction
		nsg string
	}
	var steps []step
	nsg := ops[0].NSG
	var syncs []int // the sync operations: done when a write carried the lockdown
	for k, op := range ops {
		if !SameID(op.NSG, nsg) {
			errs[k] = Errorf(EINTERNAL, "operation %s is for NSG %s, not %s like the rest of its batch", op.ID, op.NSG, nsg)
			continue
		}
		if op.Kind == OpSync {
			syncs = append(syncs, k)
			continue
		}
		req, act, n, err := s.planOperation(ctx, op)
		if err != nil {
			errs[k] = err
			continue
		}
		if act != ruleNothing {
			steps = append(steps, step{k, req, act, n})
		}
	}
	// failSyncs fails the sync operations when the lockdown was not
	// written: they come again.
	failSyncs := func(lockErr error) {
		if lockErr == nil {
			return
		}
		err := fmt.Errorf("bringing the deny rules of NSG %s in line: %w", nsg, lockErr)
		for _, k := range syncs {
			errs[k] = err
		}
	}
	if len(steps) == 0 {
		if len(syncs) > 0 {
			_, lockErr, _ := s.applyNSG(ctx, nsg, nsgWrite{})
			failSyncs(lockErr)
		}
		return errs
	}
	for start := 0; start < len(steps); start += maxBatch {
		batch := steps[start:min(start+maxBatch, len(steps))]
		var w nsgWrite
		removed := map[string]bool{}
		for _, st := range batch {
			if st.act == ruleClose {
				removed[RuleName(st.req.ID, ops[st.op].Grant)] = true
				w.del = append(w.del, allowRuleNames(st.req.ID, ops[st.op].Grant)...)
			}
		}
		for i, st := range batch {
			if st.act != ruleOpen {
				continue
			}
			if removed[RuleName(st.req.ID, ops[st.op].Grant)] {
				// The same batch also closes it: the grant is ending.
				batch[i].act = ruleClose
				continue
			}
			w.put = append(w.put, s.allowRules(st.req, ops[st.op].Grant)...)
		}
		ap, lockErr, err := s.applyNSG(ctx, batch[0].nsg, w)
		failSyncs(lockErr)
		if err != nil {
			for _, st := range batch {
				errs[st.op] = s.ruleFailed(ctx, st.req, ops[st.op].Grant, st.nsg, st.act, err)
			}
			continue
		}
		// Record the outcomes of different requests at once, so their writes
		// share commits; one request's grants one after the other.
		byReq := map[string][]step{}
		var order []string
		for _, st := range batch {
			if _, ok := byReq[st.req.ID]; !ok {
				order = append(order, st.req.ID)
			}
			byReq[st.req.ID] = append(byReq[st.req.ID], st)
		}
		var wg sync.WaitGroup
		sem := make(chan struct{}, recordParallel)
		for _, id := range order {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				for _, st := range byReq[id] {
					if st.act == ruleOpen {
						errs[st.op] = s.recordOpen(ctx, st.req, ops[st.op].Grant, st.nsg)
					} else {
						errs[st.op] = s.recordClose(ctx, st.req, ops[st.op].Grant, st.nsg, removedAny(ap, st.req.ID, ops[st.op].Grant))
					}
				}
			})
		}
		wg.Wait()
	}
	return errs
}

// recordParallel is how many requests one NSG write's outcomes are recorded
// on at once.
const recordParallel = 16
