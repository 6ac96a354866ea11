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
type Store interface {
	GetPolicy(ctx context.Context, name string) (Policy, error)
	ListPolicies(ctx context.Context) ([]Policy, error)
	CreatePolicy(ctx context.Context, p Policy) (Policy, error)
	UpdatePolicy(ctx context.Context, p Policy) (Policy, error)
	DeletePolicy(ctx context.Context, name, etag string) error

	GetRequest(ctx context.Context, id string) (Request, error)
	CreateRequest(ctx context.Context, r Request) (Request, error)
	UpdateRequest(ctx context.Context, r Request) (Request, error)
	// ListRequests returns the requests that match f, newest first. Under
	// a paced context (WithPauses) it may read in chunks with Pause in
	// between: the answer is then not one snapshot, and a request created
	// meanwhile may be missing.
	ListRequests(ctx context.Context, f RequestFilter) ([]Request, error)

	// AppendAudit stores ev. Appending an event whose ID is already stored
	// changes nothing and succeeds, so redelivered work can audit again.
	AppendAudit(ctx context.Context, ev AuditEvent) error
	// ScanAudit calls fn for each event that matches f, newest first, until
	// fn returns an error (which ScanAudit returns) or the events run out.
	ScanAudit(ctx context.Context, f AuditFilter, fn func(AuditEvent) error) error
}

// RequestRecorder is implemented by stores that can store a new request and
// its audit events in one transaction: both are kept or neither, in one
// write instead of one each.
type RequestRecorder interface {
	CreateRequestAudited(ctx context.Context, r Request, events []AuditEvent) (Request, error)
}

// AuditedUpdater is implemented by stores that can update a request and
// store audit events in one transaction: both are kept or neither, in one
// write instead of two. A conflict (ECONFLICT) keeps neither.
type AuditedUpdater interface {
	UpdateRequestAudited(ctx context.Context, r Request, events []AuditEvent) (Request, error)
}

// RequestQueuer is implemented by stores that keep the queue in the same
// file (local mode): a new request, its audit events and its operations are
// stored in one transaction, so the request is never kept without the
// operations that open and close its access, nor the other way round. The
// queue's tickets must be known beforehand (TicketNamer).
type RequestQueuer interface {
	CreateRequestQueued(ctx context.Context, r Request, events []AuditEvent, ops []Operation) (Request, error)
}

// RequestFilter selects requests. Zero fields match everything.
type RequestFilter struct {
	VM        string    // VM id, compared case-insensitively
	Policy    string    // policy name
	Requestor string    // principal id
	Party     string    // principal id of the requestor or of the delegate that submitted it
	Statuses  []string  // any of these request statuses
	Since     time.Time // StartTime at or after
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
	return f.Since.IsZero() || !r.StartTime.Before(f.Since)
}

// AuditFilter selects audit events. Zero fields match everything.
type AuditFilter struct {
	VM    string    // VM id, compared case-insensitively
	From  time.Time // at or after
	To    time.Time // before
	Limit int       // at most this many; 0 = no limit
}
