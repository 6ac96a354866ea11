package boltstore

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"time"

	"go.etcd.io/bbolt"

	"jitaccess/handler/jit"
)

// Bucket layout. Records are the jit structs encoded as JSON; times keep
// their nanoseconds and come back in UTC.
//
//	policies           lower-case policy name → Policy
//	requests           request id → Request
//	requests_by_start  timeKey(StartTime) + request id → indexValue: its status,
//	                   requestor, submitter and policy (its status only, or
//	                   nothing, in files written before: such requests are
//	                   decoded to filter)
//	audit              timeKey(Time) + event id → AuditEvent
//	audit_ids          event id → its key in audit
//	nsg_states         lower-case NSG id → NSGState
//	vm_use             lower-case VM id → VMUse
//	notices            event id → storedNotice: notifications to deliver
//
// timeKey sorts newest first, so a forward cursor walks from the newest
// record and ties come in ascending byte order of the id.
var (
	bucketPolicies        = []byte("policies")
	bucketRequests        = []byte("requests")
	bucketRequestsByStart = []byte("requests_by_start")
	bucketAudit           = []byte("audit")
	bucketAuditIDs        = []byte("audit_ids")
	bucketNSGStates       = []byte("nsg_states")
	bucketNotices         = []byte("notices")
)

// scanBatch is how many audit events ScanAudit reads per read transaction.
// fn runs outside any transaction, so it may use the store, and a slow reader
// (a CSV download) never pins the file.
const scanBatch = 64

// Store implements jit.Store on a bbolt file.
//
// Policy names are unique case-insensitively: "Prod" and "prod" are the same
// policy, found under either spelling, and the name keeps the spelling it
// was last written with. A VM is in one policy at most: policy writes check
// the other policies inside their write transaction, which bbolt runs one
// at a time. Request and event ids are compared exactly.
type Store struct {
	db        *bbolt.DB
	listChunk int // requests ScanRequests decodes per read transaction

	// Decoded policies by key, with the bytes they were decoded from:
	// every request reads its policy, and decoding a large one is most of
	// the work. A stale entry is noticed by its bytes.
	mu       sync.Mutex
	policies map[string]cachedPolicy
}

type cachedPolicy struct {
	raw []byte
	p   jit.Policy
}

// decodePolicy decodes v, or copies the cached policy decoded from the same
// bytes. v is only valid inside the transaction, so the cache keeps a copy.
func (s *Store) decodePolicy(key, v []byte) (jit.Policy, error) {
	s.mu.Lock()
	c, ok := s.policies[string(key)]
	s.mu.Unlock()
	if ok && bytes.Equal(c.raw, v) {
		return c.p.Clone(), nil
	}
	var p jit.Policy
	if err := decode(v, &p); err != nil {
		return p, err
	}
	s.mu.Lock()
	if s.policies == nil {
		s.policies = map[string]cachedPolicy{}
	}
	s.policies[string(key)] = cachedPolicy{raw: bytes.Clone(v), p: p.Clone()}
	s.mu.Unlock()
	return p, nil
}

var _ jit.Store = (*Store)(nil)

// New returns a Store on db, creating its buckets when missing.
func New(db *bbolt.DB) (*Store, error) {
	err := db.Update(func(tx *bbolt.Tx) error {
		for _, name := range [][]byte{bucketPolicies, bucketRequests, bucketRequestsByStart, bucketAudit, bucketAuditIDs, bucketNSGStates, bucketNotices, bucketVMUse} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return fmt.Errorf("create bucket %s: %w", name, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("prepare store: %w", err)
	}
	return &Store{db: db, listChunk: defaultListChunk}, nil
}

// SetListChunk sets how many requests ScanRequests (and so ListRequests)
// decodes per read transaction; default 500. Tests set it small.
func (s *Store) SetListChunk(n int) {
	if n > 0 {
		s.listChunk = n
	}
}

// GetPolicy returns the policy with the given name, in any case.
func (s *Store) GetPolicy(ctx context.Context, name string) (jit.Policy, error) {
	var p jit.Policy
	if err := ctx.Err(); err != nil {
		return p, err
	}
	if name == "" {
		return p, jit.Errorf(jit.EINVALID, "policy name is required")
	}
	err := s.db.View(func(tx *bbolt.Tx) error {
		k := policyKey(name)
		v := tx.Bucket(bucketPolicies).Get(k)
		if v == nil {
			return policyNotFound(name)
		}
		var err error
		p, err = s.decodePolicy(k, v)
		return err
	})
	return p, err
}

// ListPolicies returns every policy, ordered by lower-case name.
func (s *Store) ListPolicies(ctx context.Context) ([]jit.Policy, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var ps []jit.Policy
	err := s.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketPolicies).ForEach(func(k, v []byte) error {
			p, err := s.decodePolicy(k, v)
			if err != nil {
				return err
			}
			ps = append(ps, p)
			return nil
		})
	})
	return ps, err
}

// CreatePolicy stores a new policy; ECONFLICT when one with the same name
// (in any case) exists.
func (s *Store) CreatePolicy(ctx context.Context, p jit.Policy, events ...jit.AuditEvent) (jit.Policy, error) {
	if err := checkPolicyWrite(ctx, p.Name, events); err != nil {
		return jit.Policy{}, err
	}
	p = utcPolicy(p)
	p.ETag = newETag()
	err := s.db.Batch(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketPolicies)
		key := policyKey(p.Name)
		if old := b.Get(key); old != nil {
			var existing jit.Policy
			if err := decode(old, &existing); err != nil {
				return err
			}
			return jit.Errorf(jit.ECONFLICT, "policy %q already exists", existing.Name)
		}
		if err := s.checkVMsFree(b, key, p); err != nil {
			return err
		}
		if err := appendAudits(tx, events); err != nil {
			return err
		}
		return put(b, key, p)
	})
	if err != nil {
		return jit.Policy{}, err
	}
	return p, nil
}

// UpdatePolicy replaces a policy. A non-empty p.ETag must match the stored one.
func (s *Store) UpdatePolicy(ctx context.Context, p jit.Policy, events ...jit.AuditEvent) (jit.Policy, error) {
	if err := checkPolicyWrite(ctx, p.Name, events); err != nil {
		return jit.Policy{}, err
	}
	p = utcPolicy(p)
	want := p.ETag
	p.ETag = newETag()
	err := s.db.Batch(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketPolicies)
		key := policyKey(p.Name)
		old := b.Get(key)
		if old == nil {
			return policyNotFound(p.Name)
		}
		var existing jit.Policy
		if err := decode(old, &existing); err != nil {
			return err
		}
		if want != "" && want != existing.ETag {
			return jit.Errorf(jit.ECONFLICT, "policy %q was changed by someone else: read it again and retry", existing.Name)
		}
		if err := s.checkVMsFree(b, key, p); err != nil {
			return err
		}
		if err := appendAudits(tx, events); err != nil {
			return err
		}
		return put(b, key, p)
	})
	if err != nil {
		return jit.Policy{}, err
	}
	return p, nil
}

// DeletePolicy removes a policy. A non-empty etag must match the stored one.
func (s *Store) DeletePolicy(ctx context.Context, name, etag string, events ...jit.AuditEvent) error {
	if err := checkPolicyWrite(ctx, name, events); err != nil {
		return err
	}
	return s.db.Batch(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketPolicies)
		key := policyKey(name)
		old := b.Get(key)
		if old == nil {
			return policyNotFound(name)
		}
		if etag != "" {
			var existing jit.Policy
			if err := decode(old, &existing); err != nil {
				return err
			}
			if etag != existing.ETag {
				return jit.Errorf(jit.ECONFLICT, "policy %q was changed by someone else: read it again and retry", existing.Name)
			}
		}
		if err := appendAudits(tx, events); err != nil {
			return err
		}
		return b.Delete(key)
	})
}

// checkPolicyWrite refuses a policy write before anything is stored: a
// done context, a policy without name, an event without id or time
// (events' times are put in UTC).
func checkPolicyWrite(ctx context.Context, name string, events []jit.AuditEvent) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if name == "" {
		return jit.Errorf(jit.EINVALID, "policy name is required")
	}
	return checkAudits(events)
}

// checkVMsFree refuses p, to be stored under key, when another policy in b
// names one of its VMs. It runs inside the write transaction, so no
// concurrent write can slip a VM in between the check and the write.
func (s *Store) checkVMsFree(b *bbolt.Bucket, key []byte, p jit.Policy) error {
	mine := make(map[string]string, len(p.VMs))
	for _, vm := range p.VMs {
		mine[strings.ToLower(vm.ID)] = vm.ID
	}
	if len(mine) == 0 {
		return nil
	}
	return b.ForEach(func(k, v []byte) error {
		if bytes.Equal(k, key) {
			return nil
		}
		other, err := s.decodePolicy(k, v)
		if err != nil {
			return err
		}
		for _, vm := range other.VMs {
			if id, ok := mine[strings.ToLower(vm.ID)]; ok {
				return vmTaken(id, other.Name)
			}
		}
		return nil
	})
}

func vmTaken(vm, policy string) error {
	return jit.VMTaken(vm, policy)
}

// PutNSGState merges st into the stored state of its NSG (jit.NSGState.Merge)
// in one write transaction, so concurrent writers never make it older. The
// state keeps the id as its first writer spelled it.
func (s *Store) PutNSGState(ctx context.Context, st jit.NSGState) (jit.NSGState, error) {
	if err := ctx.Err(); err != nil {
		return jit.NSGState{}, err
	}
	if st.ID == "" {
		return jit.NSGState{}, jit.Errorf(jit.EINVALID, "NSG id is required")
	}
	st = utcNSGState(st)
	key := []byte(strings.ToLower(st.ID))
	var prev jit.NSGState
	err := s.db.Batch(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketNSGStates)
		prev = jit.NSGState{} // Batch may run this again
		if old := b.Get(key); old != nil {
			if err := decode(old, &prev); err != nil {
				return err
			}
		}
		return put(b, key, prev.Merge(st))
	})
	if err != nil {
		return jit.NSGState{}, err
	}
	return prev, nil
}

// ListNSGStates returns every NSG state, ordered by lower-case id.
func (s *Store) ListNSGStates(ctx context.Context) ([]jit.NSGState, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var sts []jit.NSGState
	err := s.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketNSGStates).ForEach(func(_, v []byte) error {
			var st jit.NSGState
			if err := decode(v, &st); err != nil {
				return err
			}
			sts = append(sts, st)
			return nil
		})
	})
	return sts, err
}

// GetRequest returns the request with the given id.
func (s *Store) GetRequest(ctx context.Context, id string) (jit.Request, error) {
	var r jit.Request
	if err := ctx.Err(); err != nil {
		return r, err
	}
	if id == "" {
		return r, jit.Errorf(jit.EINVALID, "request id is required")
	}
	err := s.db.View(func(tx *bbolt.Tx) error {
		v := tx.Bucket(bucketRequests).Get([]byte(id))
		if v == nil {
			return requestNotFound(id)
		}
		return decode(v, &r)
	})
	return r, err
}

// CreateRequest stores a new request and its audit events in one
// transaction: all of them, or none. ECONFLICT when its id exists.
func (s *Store) CreateRequest(ctx context.Context, r jit.Request, events ...jit.AuditEvent) (jit.Request, error) {
	if err := checkRequestWrite(ctx, r, events); err != nil {
		return jit.Request{}, err
	}
	r = utcRequest(r)
	r.ETag = newETag()
	err := s.db.Batch(func(tx *bbolt.Tx) error {
		if err := createRequest(tx, r); err != nil {
			return err
		}
		return appendAudits(tx, events)
	})
	if err != nil {
		return jit.Request{}, err
	}
	return r, nil
}

// checkRequestWrite refuses a write of r with events before anything is
// stored: a done context, a request without id, an event without id or
// time (events' times are put in UTC).
func checkRequestWrite(ctx context.Context, r jit.Request, events []jit.AuditEvent) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if r.ID == "" {
		return jit.Errorf(jit.EINVALID, "request id is required")
	}
	return checkAudits(events)
}

func createRequest(tx *bbolt.Tx, r jit.Request) error {
	b := tx.Bucket(bucketRequests)
	if b.Get([]byte(r.ID)) != nil {
		return jit.Errorf(jit.ECONFLICT, "request %q already exists", r.ID)
	}
	if err := put(b, []byte(r.ID), r); err != nil {
		return err
	}
	return tx.Bucket(bucketRequestsByStart).Put(indexKey(r.StartTime, r.ID), indexValue(r))
}

// UpdateRequest replaces a request and stores its audit events in the same
// transaction: all of it, or, on a conflict or any other error, none. A
// non-empty r.ETag must match the stored one.
func (s *Store) UpdateRequest(ctx context.Context, r jit.Request, events ...jit.AuditEvent) (jit.Request, error) {
	if err := checkRequestWrite(ctx, r, events); err != nil {
		return jit.Request{}, err
	}
	r = utcRequest(r)
	want := r.ETag
	r.ETag = newETag()
	err := s.db.Batch(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketRequests)
		old := b.Get([]byte(r.ID))
		if old == nil {
			return requestNotFound(r.ID)
		}
		var existing jit.Request
		if err := decode(old, &existing); err != nil {
			return err
		}
		if want != "" && want != existing.ETag {
			return jit.Errorf(jit.ECONFLICT, "request %q was changed by someone else: read it again and retry", r.ID)
		}
		if err := put(b, []byte(r.ID), r); err != nil {
			return err
		}
		if err := appendAudits(tx, events); err != nil {
			return err
		}
		idx := tx.Bucket(bucketRequestsByStart)
		if !existing.StartTime.Equal(r.StartTime) {
			if err := idx.Delete(indexKey(existing.StartTime, r.ID)); err != nil {
				return err
			}
			return idx.Put(indexKey(r.StartTime, r.ID), indexValue(r))
		}
		if !bytes.Equal(idx.Get(indexKey(r.StartTime, r.ID)), indexValue(r)) {
			return idx.Put(indexKey(r.StartTime, r.ID), indexValue(r))
		}
		return nil
	})
	if err != nil {
		return jit.Request{}, err
	}
	return r, nil
}

// ListRequests returns the requests that match f, newest StartTime first,
// ties in ascending id order: what ScanRequests hands out.
func (s *Store) ListRequests(ctx context.Context, f jit.RequestFilter) ([]jit.Request, error) {
	return jit.Collect(func(fn func(jit.Request) error) error { return s.ScanRequests(ctx, f, fn) })
}

// ScanRequests calls fn for each request that matches f, newest StartTime
// first, ties in ascending id order. It walks the start-time index, so a
// Since or Limit filter reads only the records it needs, and it decodes at
// most listChunk requests per read transaction: fn runs between
// transactions, so it may use the store, and however long it takes it
// never keeps a transaction open (which would stop the file from growing).
func (s *Store) ScanRequests(ctx context.Context, f jit.RequestFilter, fn func(jit.Request) error) error {
	var resume []byte // the last index key read, to go on after
	if !f.After.IsZero() {
		resume = indexKey(f.After.Time, f.After.ID)
	}
	seen := 0
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		var chunk []jit.Request
		more := false
		err := s.db.View(func(tx *bbolt.Tx) error {
			records := tx.Bucket(bucketRequests)
			c := tx.Bucket(bucketRequestsByStart).Cursor()
			k, status := c.First()
			if resume != nil {
				if k, status = c.Seek(resume); k != nil && bytes.Equal(k, resume) {
					k, status = c.Next()
				}
			}
			for decoded := 0; k != nil; k, status = c.Next() {
				if decoded >= s.listChunk || f.Limit > 0 && seen+len(chunk) >= f.Limit {
					more = true
					return nil
				}
				resume = append(resume[:0], k...) // k lives only as long as tx
				start, id, err := splitKey(k)
				if err != nil {
					return err
				}
				if !f.Since.IsZero() && start.Before(f.Since) {
					return nil // the rest are older still
				}
				if !indexPasses(status, f) {
					continue // the index tells: no need to decode it
				}
				v := records.Get(id)
				if v == nil {
					return fmt.Errorf("request index names missing request %q", id)
				}
				var r jit.Request
				if err := decode(v, &r); err != nil {
					return err
				}
				decoded++
				if f.Matches(&r) {
					chunk = append(chunk, r)
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, r := range chunk {
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := fn(r); err != nil {
				return err
			}
			seen++
		}
		if !more || f.Limit > 0 && seen >= f.Limit {
			return nil
		}
	}
}

// defaultListChunk is how many requests ScanRequests decodes per read
// transaction: about 5 ms of work.
const defaultListChunk = 500

// AppendAudit stores ev once: an event whose ID is stored already is left as
// it is, even if ev differs.
func (s *Store) AppendAudit(ctx context.Context, ev jit.AuditEvent) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := checkAudit(&ev); err != nil {
		return err
	}
	return s.db.Batch(func(tx *bbolt.Tx) error { return appendAudit(tx, ev) })
}

// checkAudit refuses an event without id or time and puts its time in UTC.
func checkAudit(ev *jit.AuditEvent) error {
	if ev.ID == "" {
		return jit.Errorf(jit.EINVALID, "audit event id is required")
	}
	if ev.Time.IsZero() {
		return jit.Errorf(jit.EINVALID, "audit event %q has no time", ev.ID)
	}
	ev.Time = ev.Time.UTC()
	return nil
}

// checkAudits checks each of events as checkAudit does.
func checkAudits(events []jit.AuditEvent) error {
	for i := range events {
		if err := checkAudit(&events[i]); err != nil {
			return err
		}
	}
	return nil
}

// appendAudits appends events in tx, each once.
func appendAudits(tx *bbolt.Tx, events []jit.AuditEvent) error {
	for _, ev := range events {
		if err := appendAudit(tx, ev); err != nil {
			return err
		}
	}
	return nil
}

// RecoverAudit finds nothing to complete: a change and its events are
// stored in one transaction.
func (s *Store) RecoverAudit(ctx context.Context) (int, error) { return 0, ctx.Err() }

func appendAudit(tx *bbolt.Tx, ev jit.AuditEvent) error {
	ids := tx.Bucket(bucketAuditIDs)
	if ids.Get([]byte(ev.ID)) != nil {
		return nil
	}
	key := indexKey(ev.Time, ev.ID)
	if err := put(tx.Bucket(bucketAudit), key, ev); err != nil {
		return err
	}
	if ev.Notice != nil {
		n := storedNotice{Notice: jit.Notice{Notification: *ev.Notice, NotBefore: ev.Time}, Version: newETag()}
		if err := put(tx.Bucket(bucketNotices), []byte(ev.ID), n); err != nil {
			return err
		}
	}
	return ids.Put([]byte(ev.ID), key)
}

// ScanAudit calls fn for each event that matches f, newest first, ties in
// ascending id order. It reads the events in small batches, so memory use
// does not grow with the trail, and calls fn outside any transaction.
func (s *Store) ScanAudit(ctx context.Context, f jit.AuditFilter, fn func(jit.AuditEvent) error) error {
	// Newest first means starting at the newest time before To: timeKey
	// inverts time, so that is the first key at or after timeKey(To-1ns).
	var start []byte
	if !f.To.IsZero() {
		start = timeKey(f.To.Add(-time.Nanosecond))
	}
	var after []byte // the last key read; nil before the first batch
	if !f.After.IsZero() {
		if k := indexKey(f.After.Time, f.After.ID); start == nil || bytes.Compare(k, start) >= 0 {
			after = k
		}
	}
	seen := 0
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		size := scanBatch
		if f.Limit > 0 {
			size = min(size, f.Limit-seen)
		}
		batch := make([]jit.AuditEvent, 0, size)
		done := true
		err := s.db.View(func(tx *bbolt.Tx) error {
			c := tx.Bucket(bucketAudit).Cursor()
			var k, v []byte
			switch {
			case after != nil:
				if k, v = c.Seek(after); bytes.Equal(k, after) {
					k, v = c.Next()
				}
			case start != nil:
				k, v = c.Seek(start)
			default:
				k, v = c.First()
			}
			for ; k != nil; k, v = c.Next() {
				if len(batch) == size {
					done = false
					return nil
				}
				at, _, err := splitKey(k)
				if err != nil {
					return err
				}
				if !f.From.IsZero() && at.Before(f.From) {
					return nil
				}
				after = bytes.Clone(k) // k lives only as long as tx
				var ev jit.AuditEvent
				if err := decode(v, &ev); err != nil {
					return err
				}
				if f.VM != "" && !strings.EqualFold(ev.VM, f.VM) {
					continue
				}
				batch = append(batch, ev)
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, ev := range batch {
			if err := fn(ev); err != nil {
				return err
			}
			seen++
			if f.Limit > 0 && seen >= f.Limit {
				return nil
			}
		}
		if done {
			return nil
		}
	}
}

// timeKey encodes t so that byte order is newest first: the seconds with
// the sign bit flipped (so negative times sort too) and the nanoseconds,
// both inverted.
func timeKey(t time.Time) []byte {
	k := make([]byte, 12)
	binary.BigEndian.PutUint64(k, ^(uint64(t.Unix()) ^ 1<<63))
	binary.BigEndian.PutUint32(k[8:], ^uint32(t.Nanosecond()))
	return k
}

func indexKey(t time.Time, id string) []byte {
	return append(timeKey(t), id...)
}

func splitKey(k []byte) (time.Time, []byte, error) {
	if len(k) < 12 {
		return time.Time{}, nil, fmt.Errorf("malformed index key %x", k)
	}
	sec := int64(^binary.BigEndian.Uint64(k) ^ 1<<63)
	nsec := int64(^binary.BigEndian.Uint32(k[8:]))
	return time.Unix(sec, nsec).UTC(), k[12:], nil
}

func policyKey(name string) []byte { return []byte(strings.ToLower(name)) }

func policyNotFound(name string) error {
	return jit.Errorf(jit.ENOTFOUND, "policy %q not found", name)
}

func requestNotFound(id string) error {
	return jit.Errorf(jit.ENOTFOUND, "request %q not found", id)
}

// newETag returns a random tag. Random rather than a counter so that a
// policy deleted and created again never matches a tag read before.
func newETag() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func put(b *bbolt.Bucket, key []byte, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode record: %w", err)
	}
	return b.Put(key, data)
}

func decode(data []byte, v any) error {
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("decode stored record: %w", err)
	}
	return nil
}

// utcPolicy and utcRequest store every time in UTC, so that records read
// back compare equal whatever zone the caller used.
func utcPolicy(p jit.Policy) jit.Policy {
	p.CreatedAt = p.CreatedAt.UTC()
	p.UpdatedAt = p.UpdatedAt.UTC()
	return p
}

func utcNSGState(st jit.NSGState) jit.NSGState {
	st.SeenAt = st.SeenAt.UTC()
	st.ErrorAt = st.ErrorAt.UTC()
	return st
}

func utcRequest(r jit.Request) jit.Request { return r.InUTC() }
