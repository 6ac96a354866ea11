package jit

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
)

// The sweep: ended grants closed whether or not their close came, on
// every reconcile and at start-up.

// sweepParallel is how many NSGs a sweep works on at once. Within one NSG
// the closes go in one write, as ARM wants one writer per NSG.
const sweepParallel = 8

// Sweep closes every grant that has ended but whose rules are not known to
// be gone. It runs at start-up and periodically, so access ends even when
// a close operation was lost.
func (s *Reconciler) Sweep(ctx context.Context) (closed int, err error) {
	reqs, err := s.sweepList(ctx, nil)
	if err != nil {
		return 0, err
	}
	return s.sweepRequests(ctx, reqs)
}

// sweepList completes the audit trail, expires pending requests that
// waited too long and lists the active ones, paced by pace (nil: not
// paced).
func (s *Reconciler) sweepList(ctx context.Context, pace *pacer) ([]Request, error) {
	if n, err := s.store.RecoverAudit(ctx); err != nil {
		s.cfg.Log.Warn().Err(err).Int("completed", n).Msg("completing the audit trail failed; the next sweep retries")
	} else if n > 0 {
		s.cfg.Log.Warn().Int("changes", n).Msg("audit events of interrupted writes appended to the trail")
	}
	// Notifications that no running delivery took (the instance that
	// stored them stopped, or their receiver failed) go out now.
	s.kickNotices()
	if _, err := s.expirePending(ctx); err != nil {
		s.cfg.Log.Warn().Err(err).Msg("expiring pending requests failed; the next sweep retries")
	}
	var reqs []Request
	err := s.store.ScanRequests(ctx, RequestFilter{Statuses: []string{RequestActive}}, paced(ctx, pace, func(r Request) error {
		reqs = append(reqs, r)
		return nil
	}))
	if err != nil {
		return nil, fmt.Errorf("listing active requests: %w", err)
	}
	return reqs, nil
}

// sweepRequests closes the ended grants of reqs whose rules are not known
// to be gone.
func (s *Reconciler) sweepRequests(ctx context.Context, reqs []Request) (closed int, err error) {
	now := s.now()
	type job struct {
		req string
		i   int
		nsg string
		end time.Time
	}
	byNSG := map[string][]job{}
	for _, r := range reqs {
		for i := range r.Grants {
			g := &r.Grants[i]
			if !g.Ended(now) {
				continue
			}
			for _, n := range g.NSGs {
				if n.State != RuleClosed {
					k := strings.ToLower(n.ID)
					byNSG[k] = append(byNSG[k], job{r.ID, i, n.ID, g.End})
				}
			}
		}
	}
	var (
		mu   sync.Mutex
		wg   sync.WaitGroup
		errs []error
		sem  = make(chan struct{}, sweepParallel)
	)
	for _, jobs := range byNSG {
		// The longest overdue first: they bound the lag.
		slices.SortFunc(jobs, func(a, b job) int { return a.end.Compare(b.end) })
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			// One NSG write removes all of them (ApplyOperations cuts
			// bursts into writes of maxBatch rules).
			ops := make([]Operation, len(jobs))
			for k, j := range jobs {
				ops[k] = Operation{ID: OperationID(OpClose, j.req, j.i, j.nsg, now), Kind: OpClose, RequestID: j.req, Grant: j.i, NSG: j.nsg}
			}
			results := s.worker.ApplyOperations(ctx, ops)
			mu.Lock()
			for _, err := range results {
				if err != nil {
					errs = append(errs, err)
				} else {
					closed++
				}
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	if closed > 0 || len(errs) > 0 {
		s.cfg.Log.Info().Int("closed", closed).Int("failed", len(errs)).Msg("sweep")
	}
	return closed, errors.Join(errs...)
}
