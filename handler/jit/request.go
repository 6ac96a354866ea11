package jit

import (
	"time"
)

// Request statuses.
const (
	// RequestActive: accepted; some grant is not yet closed everywhere.
	RequestActive = "Active"
	// RequestClosed: every grant's rules are gone from every NSG.
	RequestClosed = "Closed"
	// RequestPending: waiting for approval; nothing is open.
	RequestPending = "Pending"
	// RequestDenied: an approver refused it; nothing was opened.
	RequestDenied = "Denied"
	// RequestExpired: it waited too long for approval; nothing was opened.
	RequestExpired = "Expired"
)

// Grant statuses, as Defender names a requested port's status, plus Closed.
const (
	GrantInitiating = "Initiating" // accepted, rules not yet open in every NSG
	GrantInitiated  = "Initiated"  // open in every NSG
	GrantRevoked    = "Revoked"    // ended early; see StatusReason
	GrantClosed     = "Closed"     // ended at its end time (StatusReason Expired)
	GrantFailed     = "Failed"     // could not be opened; see Detail
)

// Reasons a grant ended, as Defender names them, plus ours.
const (
	ReasonExpired         = "Expired"
	ReasonUserRequested   = "UserRequested"
	ReasonPolicyChanged   = "PolicyChanged"
	ReasonDenied          = "Denied"
	ReasonApprovalExpired = "ApprovalExpired"
)

// States of a grant's allow rule in one NSG.
const (
	RulePending = "pending" // not yet written
	RuleOpen    = "open"    // present
	RuleClosed  = "closed"  // removed (or never written because the grant ended first)
)

// Request is one ask for access: some ports of some VMs, from some sources,
// until some time. Its grants are the units that open and close together.
type Request struct {
	ID            string           `json:"ID"`
	Policy        string           `json:"Policy"`
	Requestor     string           `json:"Requestor"`     // principal id of the person access is for
	RequestorName string           `json:"RequestorName"` // display name, for people
	SubmittedBy   string           `json:"SubmittedBy"`   // principal id of a delegate (bot) that asked on the requestor's behalf
	Approval      *RequestApproval `json:"Approval"`
	Justification string           `json:"Justification"`
	StartTime     time.Time        `json:"StartTime"`
	Status        string           `json:"Status"`
	Grants        []Grant          `json:"Grants"`
	ETag          string           `json:"ETag"`
}

// Grant is the part of a request that one allow rule per NSG carries: one VM,
// one protocol, the ports and sources asked for, one end time.
type Grant struct {
	VM           string        `json:"VM"`       // canonical VM id
	Protocol     string        `json:"Protocol"` // ProtocolTCP, ProtocolUDP or ProtocolAny
	Ports        []int         `json:"Ports"`
	Sources      []string      `json:"Sources"`      // canonical prefixes
	Destinations []string      `json:"Destinations"` // the VM's private IPs when the request was made
	End          time.Time     `json:"End"`
	Duration     time.Duration `json:"Duration"` // asked as a duration: a pending grant's clock starts at approval
	// ApprovedEnd is the end the approvers agreed to, set by the last
	// approval a request needed; zero for requests that needed none.
	// Extend may not move End past it.
	ApprovedEnd  time.Time  `json:"ApprovedEnd"`
	Status       string     `json:"Status"`
	StatusReason string     `json:"StatusReason"`
	ClosedAt     time.Time  `json:"ClosedAt"`
	NSGs         []GrantNSG `json:"NSGs"`
}

// GrantNSG is the state of a grant's allow rule in one NSG.
type GrantNSG struct {
	ID       string    `json:"ID"`    // ARM id of the NSG
	State    string    `json:"State"` // RulePending, RuleOpen or RuleClosed
	OpenedAt time.Time `json:"OpenedAt"`
	ClosedAt time.Time `json:"ClosedAt"`
	Error    string    `json:"Error"` // last failure, for people
}

// Ended reports whether the grant should no longer be open at now: revoked,
// failed, closed, or past its end time.
func (g *Grant) Ended(now time.Time) bool {
	switch g.Status {
	case GrantRevoked, GrantClosed, GrantFailed:
		return true
	}
	return !now.Before(g.End)
}

// Done reports whether the grant's rule is gone from every NSG.
func (g *Grant) Done() bool {
	for _, n := range g.NSGs {
		if n.State != RuleClosed {
			return false
		}
	}
	return true
}

// NSG returns the grant's state for the NSG with the given id.
func (g *Grant) NSG(id string) (*GrantNSG, bool) {
	for i := range g.NSGs {
		if SameID(g.NSGs[i].ID, id) {
			return &g.NSGs[i], true
		}
	}
	return nil, false
}

// RuleName is the name of the allow rule of grant index i of request id.
func RuleName(requestID string, i int) string {
	return RulePrefix + "allow-" + requestID + "-" + itoa(i)
}

// updateStatus recomputes the request's status from its grants. Requests
// that never opened keep their status.
func (r *Request) updateStatus() {
	switch r.Status {
	case RequestPending, RequestDenied, RequestExpired:
		return
	}
	for i := range r.Grants {
		if !r.Grants[i].Done() {
			r.Status = RequestActive
			return
		}
	}
	r.Status = RequestClosed
}

// HasVM reports whether the request asks for access to the VM.
func (r *Request) HasVM(vmID string) bool {
	for _, g := range r.Grants {
		if SameID(g.VM, vmID) {
			return true
		}
	}
	return false
}

// InUTC returns r with every time in UTC, sharing nothing with r that the
// conversion changes: the stores keep times in UTC.
func (r Request) InUTC() Request {
	r.StartTime = r.StartTime.UTC()
	if r.Approval != nil {
		a := *r.Approval
		a.PendingUntil = a.PendingUntil.UTC()
		if a.Decisions != nil {
			ds := make([]Decision, len(a.Decisions))
			for i, d := range a.Decisions {
				d.At = d.At.UTC()
				ds[i] = d
			}
			a.Decisions = ds
		}
		r.Approval = &a
	}
	if r.Grants == nil {
		return r
	}
	grants := make([]Grant, len(r.Grants))
	for i, g := range r.Grants {
		g.End = g.End.UTC()
		g.ApprovedEnd = g.ApprovedEnd.UTC()
		g.ClosedAt = g.ClosedAt.UTC()
		if g.NSGs != nil {
			nsgs := make([]GrantNSG, len(g.NSGs))
			for j, n := range g.NSGs {
				n.OpenedAt = n.OpenedAt.UTC()
				n.ClosedAt = n.ClosedAt.UTC()
				nsgs[j] = n
			}
			g.NSGs = nsgs
		}
		grants[i] = g
	}
	r.Grants = grants
	return r
}
