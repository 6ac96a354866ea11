// Package memstore is a jit.Store in memory, for fast tests of the domain.
// It keeps the Store contract as the real stores do (storetest runs on it):
// ETags, one policy per VM, a change and its audit events together, notices.
// Records go through JSON on the way in and out, as they do in bbolt and
// Table Storage, so a caller never shares memory with what is stored and a
// field that does not survive encoding is lost here too. It keeps nothing
// across processes: never use it to run the service.
package memstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"jitaccess/handler/jit"
)

// Store is a jit.Store in memory. The zero value is not usable: use New.
type Store struct {
	mu       sync.Mutex
	policies map[string][]byte // lower-case name → Policy JSON
	requests map[string][]byte // id → Request JSON
	events   []jit.AuditEvent  // newest first, ties in ascending id order
	eventIDs map[string]bool
	states   map[string]jit.NSGState // lower-case NSG id
	notices  map[string]storedNotice
	uses     map[string][]byte // lower-case VM id → VMUse JSON
}

type storedNotice struct {
	n       jit.Notice
	version string
}

var _ jit.Store = (*Store)(nil)

// New returns an empty store.
func New() *Store {
	return &Store{policies: map[string][]byte{}, requests: map[string][]byte{}, eventIDs: map[string]bool{},
		states: map[string]jit.NSGState{}, notices: map[string]storedNotice{}}
}

func newETag() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func encode(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("memstore: encode %T: %v", v, err))
	}
	return b
}

func decode[T any](b []byte) T {
	var v T
	if err := json.Unmarshal(b, &v); err != nil {
		panic(fmt.Sprintf("memstore: decode %T: %v", v, err))
	}
	return v
}

// checkEvents refuses events without id or time, and puts times in UTC.
func checkEvents(events []jit.AuditEvent) ([]jit.AuditEvent, error) {
	out := make([]jit.AuditEvent, len(events))
	for i, ev := range events {
		if ev.ID == "" {
			return nil, jit.Errorf(jit.EINVALID, "audit event id is required")
		}
		if ev.Time.IsZero() {
			return nil, jit.Errorf(jit.EINVALID, "audit event %q has no time", ev.ID)
		}
		ev.Time = ev.Time.UTC()
		out[i] = decode[jit.AuditEvent](encode(ev))
	}
	return out, nil
}

// appendLocked appends events not stored yet, and their notices.
func (s *Store) appendLocked(events []jit.AuditEvent) {
	for _, ev := range events {
		if s.eventIDs[ev.ID] {
			continue
		}
		s.eventIDs[ev.ID] = true
		i, _ := slices.BinarySearchFunc(s.events, ev, newestFirst)
		s.events = slices.Insert(s.events, i, ev)
		if ev.Notice != nil {
			s.notices[ev.ID] = storedNotice{n: jit.Notice{Notification: *ev.Notice, NotBefore: ev.Time}, version: newETag()}
		}
	}
}

func newestFirst(a, b jit.AuditEvent) int {
	if c := b.Time.Compare(a.Time); c != 0 {
		return c
	}
	return strings.Compare(a.ID, b.ID)
}

func utcPolicy(p jit.Policy) jit.Policy {
	p.CreatedAt, p.UpdatedAt = p.CreatedAt.UTC(), p.UpdatedAt.UTC()
	return p
}

// GetPolicy returns the policy with the given name, in any case.
func (s *Store) GetPolicy(ctx context.Context, name string) (jit.Policy, error) {
	if err := ctx.Err(); err != nil {
		return jit.Policy{}, err
	}
	if name == "" {
		return jit.Policy{}, jit.Errorf(jit.EINVALID, "policy name is required")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.policies[strings.ToLower(name)]
	if !ok {
		return jit.Policy{}, jit.Errorf(jit.ENOTFOUND, "policy %q not found", name)
	}
	return decode[jit.Policy](b), nil
}

// ListPolicies returns every policy, by lower-case name.
func (s *Store) ListPolicies(ctx context.Context) ([]jit.Policy, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	keys := make([]string, 0, len(s.policies))
	for k := range s.policies {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	out := make([]jit.Policy, len(keys))
	for i, k := range keys {
		out[i] = decode[jit.Policy](s.policies[k])
	}
	return out, nil
}

// checkVMsFree refuses p when another policy names one of its VMs.
func (s *Store) checkVMsFree(key string, p jit.Policy) error {
	mine := map[string]string{}
	for _, vm := range p.VMs {
		mine[strings.ToLower(vm.ID)] = vm.ID
	}
	for k, b := range s.policies {
		if k == key {
			continue
		}
		other := decode[jit.Policy](b)
		for _, vm := range other.VMs {
			if id, ok := mine[strings.ToLower(vm.ID)]; ok {
				return jit.VMTaken(id, other.Name)
			}
		}
	}
	return nil
}

// CreatePolicy stores a new policy and its events.
func (s *Store) CreatePolicy(ctx context.Context, p jit.Policy, events ...jit.AuditEvent) (jit.Policy, error) {
	return s.writePolicy(ctx, p, events, true)
}

// UpdatePolicy replaces a policy; a non-empty p.ETag must match.
func (s *Store) UpdatePolicy(ctx context.Context, p jit.Policy, events ...jit.AuditEvent) (jit.Policy, error) {
	return s.writePolicy(ctx, p, events, false)
}

func (s *Store) writePolicy(ctx context.Context, p jit.Policy, events []jit.AuditEvent, create bool) (jit.Policy, error) {
	if err := ctx.Err(); err != nil {
		return jit.Policy{}, err
	}
	if p.Name == "" {
		return jit.Policy{}, jit.Errorf(jit.EINVALID, "policy name is required")
	}
	evs, err := checkEvents(events)
	if err != nil {
		return jit.Policy{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	key := strings.ToLower(p.Name)
	old, exists := s.policies[key]
	switch {
	case create && exists:
		return jit.Policy{}, jit.Errorf(jit.ECONFLICT, "policy %q already exists", decode[jit.Policy](old).Name)
	case !create && !exists:
		return jit.Policy{}, jit.Errorf(jit.ENOTFOUND, "policy %q not found", p.Name)
	case !create && p.ETag != "" && p.ETag != decode[jit.Policy](old).ETag:
		return jit.Policy{}, jit.Errorf(jit.ECONFLICT, "policy %q was changed by someone else: read it again and retry", p.Name)
	}
	if err := s.checkVMsFree(key, p); err != nil {
		return jit.Policy{}, err
	}
	p = utcPolicy(p)
	p.ETag = newETag()
	s.policies[key] = encode(p)
	s.appendLocked(evs)
	return decode[jit.Policy](s.policies[key]), nil
}

// DeletePolicy removes a policy; a non-empty etag must match.
func (s *Store) DeletePolicy(ctx context.Context, name, etag string, events ...jit.AuditEvent) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if name == "" {
		return jit.Errorf(jit.EINVALID, "policy name is required")
	}
	evs, err := checkEvents(events)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	key := strings.ToLower(name)
	old, ok := s.policies[key]
	if !ok {
		return jit.Errorf(jit.ENOTFOUND, "policy %q not found", name)
	}
	if p := decode[jit.Policy](old); etag != "" && etag != p.ETag {
		return jit.Errorf(jit.ECONFLICT, "policy %q was changed by someone else: read it again and retry", p.Name)
	}
	delete(s.policies, key)
	s.appendLocked(evs)
	return nil
}

// PutNSGState merges st into the stored state of its NSG.
func (s *Store) PutNSGState(ctx context.Context, st jit.NSGState) (jit.NSGState, error) {
	if err := ctx.Err(); err != nil {
		return jit.NSGState{}, err
	}
	if st.ID == "" {
		return jit.NSGState{}, jit.Errorf(jit.EINVALID, "NSG id is required")
	}
	st.SeenAt, st.ErrorAt = st.SeenAt.UTC(), st.ErrorAt.UTC()
	st = decode[jit.NSGState](encode(st))
	s.mu.Lock()
	defer s.mu.Unlock()
	key := strings.ToLower(st.ID)
	prev := s.states[key]
	s.states[key] = prev.Merge(st)
	return prev, nil
}

// ListNSGStates returns every NSG's state, by lower-case id.
func (s *Store) ListNSGStates(ctx context.Context) ([]jit.NSGState, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	keys := make([]string, 0, len(s.states))
	for k := range s.states {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	out := make([]jit.NSGState, len(keys))
	for i, k := range keys {
		out[i] = decode[jit.NSGState](encode(s.states[k]))
	}
	return out, nil
}

// GetRequest returns the request with that id.
func (s *Store) GetRequest(ctx context.Context, id string) (jit.Request, error) {
	if err := ctx.Err(); err != nil {
		return jit.Request{}, err
	}
	if id == "" {
		return jit.Request{}, jit.Errorf(jit.EINVALID, "request id is required")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.requests[id]
	if !ok {
		return jit.Request{}, jit.Errorf(jit.ENOTFOUND, "request %q not found", id)
	}
	return decode[jit.Request](b), nil
}

// CreateRequest stores a new request and its events.
func (s *Store) CreateRequest(ctx context.Context, r jit.Request, events ...jit.AuditEvent) (jit.Request, error) {
	return s.writeRequest(ctx, r, events, true)
}

// UpdateRequest replaces a request and stores its events; a non-empty
// r.ETag must match.
func (s *Store) UpdateRequest(ctx context.Context, r jit.Request, events ...jit.AuditEvent) (jit.Request, error) {
	return s.writeRequest(ctx, r, events, false)
}

func (s *Store) writeRequest(ctx context.Context, r jit.Request, events []jit.AuditEvent, create bool) (jit.Request, error) {
	if err := ctx.Err(); err != nil {
		return jit.Request{}, err
	}
	if r.ID == "" {
		return jit.Request{}, jit.Errorf(jit.EINVALID, "request id is required")
	}
	if n := distinctVMs(r); n > jit.MaxRequestVMs {
		return jit.Request{}, jit.Errorf(jit.EINVALID, "request names %d VMs: at most %d", n, jit.MaxRequestVMs)
	}
	evs, err := checkEvents(events)
	if err != nil {
		return jit.Request{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	old, exists := s.requests[r.ID]
	switch {
	case create && exists:
		return jit.Request{}, jit.Errorf(jit.ECONFLICT, "request %q already exists", r.ID)
	case !create && !exists:
		return jit.Request{}, jit.Errorf(jit.ENOTFOUND, "request %q not found", r.ID)
	case !create && r.ETag != "" && r.ETag != decode[jit.Request](old).ETag:
		return jit.Request{}, jit.Errorf(jit.ECONFLICT, "request %q was changed by someone else: read it again and retry", r.ID)
	}
	r = r.InUTC()
	r.ETag = newETag()
	s.requests[r.ID] = encode(r)
	s.appendLocked(evs)
	return decode[jit.Request](s.requests[r.ID]), nil
}

func distinctVMs(r jit.Request) int {
	seen := map[string]bool{}
	for _, g := range r.Grants {
		seen[strings.ToLower(g.VM)] = true
	}
	return len(seen)
}

// ListRequests returns the requests that match f, newest first (ties in
// ascending id order): what ScanRequests hands out.
func (s *Store) ListRequests(ctx context.Context, f jit.RequestFilter) ([]jit.Request, error) {
	return jit.Collect(func(fn func(jit.Request) error) error { return s.ScanRequests(ctx, f, fn) })
}

// ScanRequests calls fn for each request that matches f, newest first
// (ties in ascending id order), outside the lock: it reads the requests
// all at once, which a store in memory can afford.
func (s *Store) ScanRequests(ctx context.Context, f jit.RequestFilter, fn func(jit.Request) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	all := make([]jit.Request, 0, len(s.requests))
	for _, b := range s.requests {
		all = append(all, decode[jit.Request](b))
	}
	s.mu.Unlock()
	slices.SortFunc(all, func(a, b jit.Request) int {
		if c := b.StartTime.Compare(a.StartTime); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	n := 0
	for i := range all {
		r := &all[i]
		if !f.Since.IsZero() && r.StartTime.Before(f.Since) {
			break
		}
		if !f.Matches(r) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(*r); err != nil {
			return err
		}
		if n++; f.Limit > 0 && n >= f.Limit {
			break
		}
	}
	return nil
}

// AppendAudit stores ev once.
func (s *Store) AppendAudit(ctx context.Context, ev jit.AuditEvent) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	evs, err := checkEvents([]jit.AuditEvent{ev})
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.appendLocked(evs)
	return nil
}

// RecoverAudit has nothing to complete: a change and its events are kept
// under one lock.
func (s *Store) RecoverAudit(ctx context.Context) (int, error) { return 0, ctx.Err() }

// ScanAudit calls fn for each event that matches f, newest first, outside
// the lock.
func (s *Store) ScanAudit(ctx context.Context, f jit.AuditFilter, fn func(jit.AuditEvent) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	events := slices.Clone(s.events)
	s.mu.Unlock()
	n := 0
	for _, ev := range events {
		switch {
		case !f.To.IsZero() && !ev.Time.Before(f.To):
			continue
		case !f.From.IsZero() && ev.Time.Before(f.From):
			return nil
		case f.VM != "" && !strings.EqualFold(ev.VM, f.VM), !f.After.Follows(ev.Time, ev.ID):
			continue
		}
		if err := fn(decode[jit.AuditEvent](encode(ev))); err != nil {
			return err
		}
		if n++; f.Limit > 0 && n >= f.Limit {
			return nil
		}
	}
	return nil
}

// DueNotices returns up to limit notices due at now, earliest first.
func (s *Store) DueNotices(ctx context.Context, now time.Time, limit int) ([]jit.Notice, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var due []jit.Notice
	for _, sn := range s.notices {
		if !sn.n.NotBefore.After(now) {
			n := decode[jit.Notice](encode(sn.n))
			n.ETag = sn.version
			due = append(due, n)
		}
	}
	slices.SortFunc(due, func(a, b jit.Notice) int {
		if c := a.NotBefore.Compare(b.NotBefore); c != 0 {
			return c
		}
		return strings.Compare(a.Notification.ID, b.Notification.ID)
	})
	if len(due) > limit {
		due = due[:limit]
	}
	return due, nil
}

// ClaimNotice stores n's attempts and a NotBefore of until, if unchanged.
func (s *Store) ClaimNotice(ctx context.Context, n jit.Notice, until time.Time) (jit.Notice, error) {
	if err := ctx.Err(); err != nil {
		return jit.Notice{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	id := n.Notification.ID
	sn, ok := s.notices[id]
	switch {
	case !ok:
		return jit.Notice{}, jit.Errorf(jit.ENOTFOUND, "notification %q is not waiting", id)
	case sn.version != n.ETag:
		return jit.Notice{}, jit.Errorf(jit.ECONFLICT, "notification %q was claimed meanwhile", id)
	}
	n.NotBefore, n.ETag = until.UTC(), ""
	stored := storedNotice{n: decode[jit.Notice](encode(n)), version: newETag()}
	s.notices[id] = stored
	n.ETag = stored.version
	return n, nil
}

// SettleNotice removes a notice.
func (s *Store) SettleNotice(ctx context.Context, id string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.notices, id)
	return nil
}
