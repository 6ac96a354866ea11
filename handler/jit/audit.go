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
	ID       string // unique; the same work audited twice has the same ID
	Time     time.Time
	Action   string
	Actor    string // principal id, or "jitaccess" for the service itself
	Policy   string
	Request  string
	VM       string
	NSG      string
	Protocol string
	Ports    []int
	Sources  []string
	Result   string
	Detail   string
}
