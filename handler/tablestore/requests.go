package tablestore

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"

	"jitaccess/handler/jit"
)

// Requests live in one partition of the requests table, so that a request
// and its index rows change together in one entity group transaction:
//
//	i_<id>                        the record: JSON payload and Version
//	t_<timeKey(start)><id>        index: every request, newest first
//	v_<vmKey(vm)>_<timeKey><id>   index: the requests for one VM, newest first
//
// (<id> is escapeKey(id).) Index rows carry the fields ListRequests filters
// on (Status, lower-case Policy, Requestor, SubmittedBy) so that the service filters
// them; the records of the rows that pass are then read by key.
const requestPartition = "r"

const (
	recordPrefix  = "i_"
	timeIdxPrefix = "t_"
	vmIdxPrefix   = "v_"
)

// maxRequestVMs bounds the distinct VMs of one request, so that the index
// change of any update fits in one transaction; the service refuses longer
// requests first (jit.MaxRequestVMs).
const maxRequestVMs = jit.MaxRequestVMs

// fetchParallel bounds the concurrent record reads of ScanRequests.
const fetchParallel = 8

func requestRow(id string) (string, error) {
	if id == "" {
		return "", jit.Errorf(jit.EINVALID, "request id is required")
	}
	k := recordPrefix + escapeKey(id)
	if len(k) > maxKeyLen-timeKeyLen-vmKeyMax-1 {
		return "", jit.Errorf(jit.EINVALID, "request id is too long to store")
	}
	return k, nil
}

func requestNotFound(id string) error {
	return jit.Errorf(jit.ENOTFOUND, "request %q not found", id)
}

func requestChanged(id string) error {
	return jit.Errorf(jit.ECONFLICT, "request %q was changed by someone else: read it again and retry", id)
}

// GetRequest returns the request with the given id.
func (s *Store) GetRequest(ctx context.Context, id string) (jit.Request, error) {
	row, err := requestRow(id)
	if err != nil {
		return jit.Request{}, err
	}
	e, _, ok, err := get(ctx, s.requests, requestPartition, row)
	if err != nil {
		return jit.Request{}, storeError(err, "read request")
	}
	if !ok {
		return jit.Request{}, requestNotFound(id)
	}
	return decodeRequest(e)
}

func decodeRequest(e entity) (jit.Request, error) {
	var r jit.Request
	if err := e.payload(&r); err != nil {
		return r, err
	}
	r.ETag = e.str("Version")
	return r, nil
}

// CreateRequest stores a new request, its index rows and the outbox row of
// its events in one transaction, then appends the events to the trail;
// ECONFLICT when its id exists.
func (s *Store) CreateRequest(ctx context.Context, r jit.Request, events ...jit.AuditEvent) (jit.Request, error) {
	r, rec, idx, err := requestEntities(r)
	if err != nil {
		return jit.Request{}, err
	}
	ob, err := newOutbox(s.requests, requestPartition, events)
	if err != nil {
		return jit.Request{}, err
	}
	actions := []aztables.TransactionAction{{ActionType: aztables.TransactionTypeAdd, Entity: rec.marshal()}}
	for _, e := range idx {
		actions = append(actions, aztables.TransactionAction{ActionType: aztables.TransactionTypeInsertReplace, Entity: e.marshal()})
	}
	if ob != nil {
		actions = append(actions, ob.action())
	}
	if _, err := s.requests.SubmitTransaction(ctx, actions, nil); err != nil {
		// A failed transaction's error does not say which operation failed.
		if _, _, exists, gerr := get(ctx, s.requests, requestPartition, rec.str("RowKey")); gerr == nil && exists {
			return jit.Request{}, jit.Errorf(jit.ECONFLICT, "request %q already exists", r.ID)
		}
		return jit.Request{}, storeError(err, "create request")
	}
	s.deliver(ctx, ob)
	return r, nil
}

// UpdateRequest replaces a request; its events go in an outbox row in the
// same write and then to the trail. A non-empty r.ETag must match the
// stored one.
//
// It reads the record first (to compare versions and find the index rows
// to replace), then writes on condition of the Table ETag it read: a
// concurrent writer in between makes the write fail with ECONFLICT, so a
// lost update is impossible. When no indexed field changed (the common
// case: an NSG's rule opened or closed) and there are no events, the
// write is one replace of the record; otherwise one transaction also swaps
// the index rows and writes the outbox row.
func (s *Store) UpdateRequest(ctx context.Context, r jit.Request, events ...jit.AuditEvent) (jit.Request, error) {
	want := r.ETag
	r, rec, idx, err := requestEntities(r)
	if err != nil {
		return jit.Request{}, err
	}
	ob, err := newOutbox(s.requests, requestPartition, events)
	if err != nil {
		return jit.Request{}, err
	}
	row := rec.str("RowKey")
	old, tableETag, ok, err := get(ctx, s.requests, requestPartition, row)
	if err != nil {
		return jit.Request{}, storeError(err, "read request")
	}
	if !ok {
		return jit.Request{}, requestNotFound(r.ID)
	}
	if want != "" && want != old.str("Version") {
		return jit.Request{}, requestChanged(r.ID)
	}
	oldReq, err := decodeRequest(old)
	if err != nil {
		return jit.Request{}, err
	}
	oldIdx, err := indexEntities(oldReq)
	if err != nil {
		return jit.Request{}, err
	}
	match := azcore.ETag(tableETag)

	var actions []aztables.TransactionAction
	for rk, e := range idx {
		if o, ok := oldIdx[rk]; !ok || !sameIndexRow(o, e) {
			actions = append(actions, aztables.TransactionAction{ActionType: aztables.TransactionTypeInsertReplace, Entity: e.marshal()})
		}
	}
	for rk, e := range oldIdx {
		if _, ok := idx[rk]; !ok {
			actions = append(actions, aztables.TransactionAction{ActionType: aztables.TransactionTypeDelete, Entity: e.marshal()})
		}
	}
	if ob != nil {
		actions = append(actions, ob.action())
	}
	if len(actions) == 0 {
		_, err := s.requests.UpdateEntity(ctx, rec.marshal(), &aztables.UpdateEntityOptions{UpdateMode: aztables.UpdateModeReplace, IfMatch: &match})
		switch {
		case isNotFound(err):
			return jit.Request{}, requestNotFound(r.ID)
		case isPreconditionFailed(err):
			return jit.Request{}, requestChanged(r.ID)
		case err != nil:
			return jit.Request{}, storeError(err, "update request")
		}
		return r, nil
	}
	actions = append(actions, aztables.TransactionAction{ActionType: aztables.TransactionTypeUpdateReplace, Entity: rec.marshal(), IfMatch: &match})
	if _, err := s.requests.SubmitTransaction(ctx, actions, nil); err != nil {
		// Find out which condition failed: the record gone, or changed.
		_, now, exists, gerr := get(ctx, s.requests, requestPartition, row)
		switch {
		case gerr == nil && !exists:
			return jit.Request{}, requestNotFound(r.ID)
		case gerr == nil && now != tableETag:
			return jit.Request{}, requestChanged(r.ID)
		}
		return jit.Request{}, storeError(err, "update request")
	}
	s.deliver(ctx, ob)
	return r, nil
}

// requestEntities returns r as it will read back (times in UTC, a new
// version as its ETag), its record entity and its index rows by row key.
func requestEntities(r jit.Request) (jit.Request, entity, map[string]entity, error) {
	row, err := requestRow(r.ID)
	if err != nil {
		return r, nil, nil, err
	}
	r = utcRequest(r)
	r.ETag = ""
	rec := newEntity(requestPartition, row)
	if err := rec.setPayload(r, fmt.Sprintf("request %q", r.ID)); err != nil {
		return r, nil, nil, err
	}
	r.ETag = newVersion()
	rec["Version"] = r.ETag
	idx, err := indexEntities(r)
	if err != nil {
		return r, nil, nil, err
	}
	return r, rec, idx, nil
}

// indexEntities returns the index rows of r by row key.
func indexEntities(r jit.Request) (map[string]entity, error) {
	suffix := timeKey(r.StartTime) + escapeKey(r.ID)
	var vms []string
	for _, g := range r.Grants {
		if k := vmKey(g.VM); !slices.Contains(vms, k) {
			vms = append(vms, k)
		}
	}
	if len(vms) > maxRequestVMs {
		return nil, jit.Errorf(jit.EINVALID, "request %q names %d VMs: at most %d can be stored in one request", r.ID, len(vms), maxRequestVMs)
	}
	rows := map[string]entity{}
	add := func(rk string) {
		e := newEntity(requestPartition, rk)
		e["Id"] = r.ID
		e["Status"] = r.Status
		e["Policy"] = strings.ToLower(r.Policy)
		e["Requestor"] = r.Requestor
		e["SubmittedBy"] = r.SubmittedBy
		rows[rk] = e
	}
	add(timeIdxPrefix + suffix)
	for _, vm := range vms {
		add(vmIdxPrefix + vm + "_" + suffix)
	}
	return rows, nil
}

func sameIndexRow(a, b entity) bool {
	for _, p := range []string{"Id", "Status", "Policy", "Requestor", "SubmittedBy"} {
		if a.str(p) != b.str(p) {
			return false
		}
	}
	return true
}

// ListRequests returns the requests that match f, newest StartTime first,
// ties in ascending id order: what ScanRequests hands out.
func (s *Store) ListRequests(ctx context.Context, f jit.RequestFilter) ([]jit.Request, error) {
	return jit.Collect(func(fn func(jit.Request) error) error { return s.ScanRequests(ctx, f, fn) })
}

// ScanRequests calls fn for each request that matches f, newest StartTime
// first, ties in ascending id order.
//
// It walks one index by key range, a page at a time: the VM's rows when
// f.VM is set, else the time index, from the newest down to f.Since. The
// service filters the rows on status, policy and requestor; the store then
// reads the records of a few rows that passed (in parallel), hands them to
// fn, and stops reading once fn has had f.Limit requests.
func (s *Store) ScanRequests(ctx context.Context, f jit.RequestFilter, fn func(jit.Request) error) error {
	prefix := timeIdxPrefix
	if f.VM != "" {
		prefix = vmIdxPrefix + vmKey(f.VM) + "_"
	}
	end := prefixEnd(prefix)
	if !f.Since.IsZero() {
		end = prefix + timeKey(f.Since.Add(-time.Nanosecond))
	}
	clauses := []string{
		"PartitionKey eq " + odataString(requestPartition),
		"RowKey ge " + odataString(prefix),
		"RowKey lt " + odataString(end),
	}
	if !f.After.IsZero() {
		clauses = append(clauses, "RowKey gt "+odataString(prefix+positionKey(f.After)))
	}
	if f.Policy != "" {
		clauses = append(clauses, "Policy eq "+odataString(strings.ToLower(f.Policy)))
	}
	if f.Requestor != "" {
		clauses = append(clauses, "Requestor eq "+odataString(f.Requestor))
	}
	if f.Party != "" {
		clauses = append(clauses, "(Requestor eq "+odataString(f.Party)+" or SubmittedBy eq "+odataString(f.Party)+")")
	}
	if len(f.Statuses) > 0 {
		var ors []string
		for _, st := range f.Statuses {
			ors = append(ors, "Status eq "+odataString(st))
		}
		clauses = append(clauses, "("+strings.Join(ors, " or ")+")")
	}
	filter := strings.Join(clauses, " and ")

	seen := 0
	var batch []indexHit
	full := func() bool { return f.Limit > 0 && seen >= f.Limit }
	flush := func() error {
		rs, err := s.fetchRequests(ctx, batch)
		batch = batch[:0]
		if err != nil {
			return err
		}
		for _, r := range rs {
			if r == nil || !f.Matches(r) || full() {
				continue
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := fn(*r); err != nil {
				return err
			}
			seen++
		}
		return nil
	}
	err := s.scan(ctx, s.requests, filter, f.Limit, func(e entity) (bool, error) {
		rk := e.str("RowKey")
		if !strings.HasPrefix(rk, prefix) || len(rk) < len(prefix)+timeKeyLen {
			return false, fmt.Errorf("request index query returned row %q outside %q", rk, prefix)
		}
		batch = append(batch, indexHit{id: e.str("Id"), timeKey: rk[len(prefix):][:timeKeyLen]})
		need := fetchParallel * 4
		if f.Limit > 0 {
			need = min(need, f.Limit-seen)
		}
		if len(batch) >= need {
			if err := flush(); err != nil {
				return false, err
			}
		}
		return !full(), nil
	})
	if err == nil && len(batch) > 0 {
		err = flush()
	}
	return err
}

// indexHit is an index row that passed the service's filter.
type indexHit struct {
	id      string
	timeKey string
}

// fetchRequests reads the records of hits, in order. A record that is gone,
// or whose start time no longer matches its row (it was updated since the
// row was read), comes back nil: it is listed at its new place, if at all.
func (s *Store) fetchRequests(ctx context.Context, hits []indexHit) ([]*jit.Request, error) {
	out := make([]*jit.Request, len(hits))
	errs := make([]error, len(hits))
	sem := make(chan struct{}, fetchParallel)
	var wg sync.WaitGroup
	for i, h := range hits {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			row, err := requestRow(h.id)
			if err != nil {
				errs[i] = fmt.Errorf("request index row names bad id %q: %w", h.id, err)
				return
			}
			e, _, ok, err := get(ctx, s.requests, requestPartition, row)
			if err != nil {
				errs[i] = storeError(err, "read request")
				return
			}
			if !ok {
				return
			}
			r, err := decodeRequest(e)
			if err != nil {
				errs[i] = err
				return
			}
			if timeKey(r.StartTime) == h.timeKey {
				out[i] = &r
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// utcRequest returns r with every time in UTC, so that records read back
// compare equal whatever zone the caller used.
func utcRequest(r jit.Request) jit.Request { return r.InUTC() }
