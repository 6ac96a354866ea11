package jit

import (
	"context"
	"slices"
	"strings"
	"time"
)

// Store keeps policies, requests and the audit trail.
//
// Policies and requests carry an ETag. Create fails with ECONFLICT when the
// key exists; Update and Delete with a non-empty ETag fail with ECONFLICT when
// the stored ETag differs, so a lost update is impossible. Every successful
// write sets a new ETag on the returned value. Missing keys are ENOTFOUND.
//
// Audit: the events given to a write (CreatePolicy, UpdatePolicy,
// DeletePolicy, CreateRequest, UpdateRequest) are kept with the change or
// not at all: every event must have an ID and a time, or the write fails
// with EINVALID and stores nothing; a write that fails (ECONFLICT,
// ENOTFOUND, any error) stores none of them. A store that keeps the trail
// in the same transaction as the change (bbolt) shows the events in
// ScanAudit when the write returns. One that cannot (Table Storage: the
// trail is another table) stores them in an outbox row in the change's own
// transaction and appends them to the trail before the write returns; when
// that append is interrupted, the change still stands and RecoverAudit
// appends them later, so the trail may lag a change but never miss it.
// Events keep their IDs: appending one twice keeps one.
//
// A VM is in one policy at most, under concurrency too: CreatePolicy and
// UpdatePolicy fail with ECONFLICT, naming the VM and the other policy,
// when another stored policy names one of p's VMs (ids compared
// case-insensitively), and store nothing.
type Store interface {
	GetPolicy(ctx context.Context, name string) (Policy, error)
	ListPolicies(ctx context.Context) ([]Policy, error)
	CreatePolicy(ctx context.Context, p Policy, events ...AuditEvent) (Policy, error)
	UpdatePolicy(ctx context.Context, p Policy, events ...AuditEvent) (Policy, error)
	DeletePolicy(ctx context.Context, name, etag string, events ...AuditEvent) error

	// PutNSGState merges st into the stored state of NSG st.ID (compared
	// case-insensitively): the seen part (SeenAt, Missing, Deny, Ahead)
	// and the failure part (Error, ErrorAt) each keep the later of the
	// stored and the given one (the given one on a tie), so writers that
	// race never make the state older. It returns the state stored
	// before (zero when there was none), which the merge started from.
	PutNSGState(ctx context.Context, st NSGState) (NSGState, error)
	// ListNSGStates returns the state of every NSG the service has seen.
	ListNSGStates(ctx context.Context) ([]NSGState, error)

	GetRequest(ctx context.Context, id string) (Request, error)
	CreateRequest(ctx context.Context, r Request, events ...AuditEvent) (Request, error)
	UpdateRequest(ctx context.Context, r Request, events ...AuditEvent) (Request, error)
	// ScanRequests calls fn for each request that matches f, newest
	// StartTime first (ties in ascending id order), until fn returns an
	// error (which ScanRequests returns), ctx ends (ctx.Err()) or the
	// requests run out; f.Limit bounds the calls. It reads in chunks or
	// pages of a bounded size, whoever calls it, and calls fn between
	// reads, holding no transaction or lock: fn may take its time and use
	// the store. The scan is not one snapshot: a request that matches
	// throughout and does not change is seen exactly once, in order; one
	// created or changed during the scan may be missing, and one whose
	// StartTime changed may come again at its new place.
	ScanRequests(ctx context.Context, f RequestFilter, fn func(Request) error) error
	// ListRequests returns what ScanRequests would hand fn, as a list.
	ListRequests(ctx context.Context, f RequestFilter) ([]Request, error)

	// AppendAudit stores ev. Appending an event whose ID is already stored
	// changes nothing and succeeds, so redelivered work can audit again.
	// It is for events that record no change of the store (refusals,
	// failures, drift seen in ARM); a change's events go with the change.
	AppendAudit(ctx context.Context, ev AuditEvent) error
	// RecoverAudit completes the trail: it appends the events of changes
	// that were stored with them but whose append to the trail a crash or
	// an outage interrupted (see "Audit" above), and returns how many
	// changes it completed. The sweep calls it in both modes.
	RecoverAudit(ctx context.Context) (int, error)
	// ScanAudit calls fn for each event that matches f, newest first, until
	// fn returns an error (which ScanAudit returns) or the events run out.
	ScanAudit(ctx context.Context, f AuditFilter, fn func(AuditEvent) error) error

	// Notices: an event with a Notice, when it is stored (with its change,
	// or by AppendAudit), also keeps its notice due for delivery from the
	// event's time, in the same transaction or, where the trail is appended
	// after the change (Table Storage), when it is appended. Appending the
	// same event again keeps one notice; a notice may come back after it was
	// settled only when an interrupted append is completed twice, so
	// delivery is at least once.
	//
	// DueNotices returns up to limit notices whose NotBefore is at or
	// before now, earliest first.
	DueNotices(ctx context.Context, now time.Time, limit int) ([]Notice, error)
	// ClaimNotice stores n's Attempts and a NotBefore of until, if the
	// notice is still as read (n.ETag); ECONFLICT when another claim or a
	// settle came first, ENOTFOUND when it is gone.
	ClaimNotice(ctx context.Context, n Notice, until time.Time) (Notice, error)
	// SettleNotice removes the notice with that id (delivered, or given
	// up); a missing one is no error.
	SettleNotice(ctx context.Context, id string) error

	VMUseStore
}

// NSGState is what the service last saw in ARM of one NSG: its own deny
// rules and the foreign rules that could bypass them, and its last failure
// to change the NSG. VM states ("Configured" or what is true instead) are
// judged from it and never from what the service meant to write.
type NSGState struct {
	ID string `json:"ID"` // ARM id of the NSG
	// SeenAt is when Deny and Ahead were read or written; zero if never.
	SeenAt time.Time `json:"SeenAt"`
	// Missing: the NSG did not exist at SeenAt.
	Missing bool `json:"Missing"`
	// Deny are the deployment's deny rules in the NSG.
	Deny []SecurityRule `json:"Deny"`
	// Ahead are the foreign inbound Allow rules whose priority comes before
	// the last of Deny (at most MaxAhead of them), which may bypass them.
	Ahead []SecurityRule `json:"Ahead"`
	// Error is the last failure to change the NSG, at ErrorAt. It is
	// current only when ErrorAt is after SeenAt.
	Error   string    `json:"Error"`
	ErrorAt time.Time `json:"ErrorAt"`
}

// MaxAhead bounds NSGState.Ahead.
const MaxAhead = 100

// Failing reports whether the last attempt to change the NSG failed.
func (st NSGState) Failing() bool { return st.Error != "" && st.ErrorAt.After(st.SeenAt) }

// Merge returns st merged with newer as PutNSGState merges: each part
// keeps the later one (newer's on a tie).
func (st NSGState) Merge(newer NSGState) NSGState {
	out := st
	if out.ID == "" {
		out.ID = newer.ID
	}
	if !newer.SeenAt.IsZero() && !newer.SeenAt.Before(st.SeenAt) {
		out.SeenAt, out.Missing, out.Deny, out.Ahead = newer.SeenAt, newer.Missing, newer.Deny, newer.Ahead
	}
	if !newer.ErrorAt.IsZero() && !newer.ErrorAt.Before(st.ErrorAt) {
		out.Error, out.ErrorAt = newer.Error, newer.ErrorAt
	}
	return out
}

// RequestFilter selects requests. Zero fields match everything.
type RequestFilter struct {
	VM        string    // VM id, compared case-insensitively
	Policy    string    // policy name
	Requestor string    // principal id
	Party     string    // principal id of the requestor or of the delegate that submitted it
	Statuses  []string  // any of these request statuses
	Since     time.Time // StartTime at or after
	After     Position  // only those after this one (a continuation)
	Limit     int       // at most this many; 0 = no limit
}

// Matches reports whether r passes every filter of f but Limit.
func (f RequestFilter) Matches(r *Request) bool {
	switch {
	case f.VM != "" && !r.HasVM(f.VM):
		return false
	case f.Policy != "" && !strings.EqualFold(r.Policy, f.Policy):
		return false
	case f.Requestor != "" && r.Requestor != f.Requestor:
		return false
	case f.Party != "" && r.Requestor != f.Party && r.SubmittedBy != f.Party:
		return false
	case len(f.Statuses) > 0 && !slices.Contains(f.Statuses, r.Status):
		return false
	}
	return (f.Since.IsZero() || !r.StartTime.Before(f.Since)) && f.After.Follows(r.StartTime, r.ID)
}

// AuditFilter selects audit events. Zero fields match everything.
type AuditFilter struct {
	VM    string    // VM id, compared case-insensitively
	From  time.Time // at or after
	To    time.Time // before
	After Position  // only those after this one (a continuation)
	Limit int       // at most this many; 0 = no limit
}

// Collect returns in order what scan hands its function: a store's list
// built on its scan (ListRequests on ScanRequests).
func Collect[T any](scan func(fn func(T) error) error) ([]T, error) {
	var out []T
	if err := scan(func(x T) error { out = append(out, x); return nil }); err != nil {
		return nil, err
	}
	return out, nil
}
