package jit

import "time"

// Audit actions.
const (
	AuditPolicyPut    = "policy.put"
	AuditPolicyDelete = "policy.delete"
	AuditLockdown     = "lockdown" // deny rules written
	AuditUnlock       = "unlock"   // deny rules removed
	AuditRequest      = "request"  // access requested and accepted
	AuditRefused      = "refused"  // access request refused
	AuditOpen         = "open"     // allow rule written
	AuditClose        = "close"    // allow rule removed
	AuditRevoke       = "revoke"   // request revoked
	AuditExtend       = "extend"   // request extended
	AuditFailure      = "failure"  // an operation failed
	AuditPending      = "pending"  // request waits for approval
	AuditApprove      = "approve"  // an approver approved
	AuditDeny         = "deny"     // an approver denied
	AuditExpire       = "expire"   // a pending request expired
	AuditWithdraw     = "withdraw" // a pending request no longer fit its policy when approved, and was closed
	AuditDrift        = "drift"    // the NSGs differed from the store; repaired or reported
)

// Audit results.
const (
	ResultSuccess = "success"
	ResultFailure = "failure"
)

// AuditEvent is one line of the audit trail. Events are never changed.
type AuditEvent struct {
	ID       string    `json:"ID"` // unique; the same work audited twice has the same ID
	Time     time.Time `json:"Time"`
	Action   string    `json:"Action"`
	Actor    string    `json:"Actor"` // principal id, or "jitaccess" for the service itself
	Policy   string    `json:"Policy"`
	Request  string    `json:"Request"`
	VM       string    `json:"VM"`
	NSG      string    `json:"NSG"`
	Protocol string    `json:"Protocol"`
	Ports    []int     `json:"Ports"`
	Sources  []string  `json:"Sources"`
	Result   string    `json:"Result"`
	Detail   string    `json:"Detail"`
	// Notice, when set, is the notification about this event: the store
	// keeps it due for delivery, with the event (see Store).
	Notice *Notification `json:"Notice,omitempty"`
}
