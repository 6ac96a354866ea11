package jit

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/rs/zerolog"
)

// Config holds the service's settings.
type Config struct {
	// MinDuration is the shortest maximum a policy port may have and the
	// shortest request; DefaultMinDuration when zero.
	MinDuration time.Duration
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// Subscriptions is the scope: VMs in other subscriptions are refused.
	// Empty means any subscription.
	Subscriptions []string
	// PendingExpiry is how long a request waits for approval;
	// DefaultPendingExpiry when zero.
	PendingExpiry time.Duration
	// Notifier, when set, hears about requests, opens, closes and failures.
	Notifier Notifier
	// StuckAfter is how long an open may stay pending before the grant is
	// marked failed; DefaultStuckAfter when zero.
	StuckAfter time.Duration
	// InventoryTTL is how long the VM list read from Azure serves
	// GET /vms before it is read again; resource events drop it at once.
	// DefaultInventoryTTL when zero.
	InventoryTTL time.Duration
	// ReconcileShare is the share of wall time Reconcile may be busy: it
	// pauses (at most 1 s at a time) between chunks of its listings and
	// of its comparison, so that a large estate does not take the CPU from
	// requests. Ended grants are closed before the drift repair; the closes
	// themselves are not paced. 0 or 1 means no pauses.
	ReconcileShare float64
	Log            zerolog.Logger
}

// Service holds the use cases. Its methods are safe for concurrent use.
type Service struct {
	store Store
	queue Queue
	net   Network
	cfg   Config

	invMu sync.Mutex
	inv   []VMInfo
	invAt time.Time
}

// DefaultInventoryTTL is how long a VM inventory is reused.
const DefaultInventoryTTL = time.Minute

// NewService returns a Service over the given adapters.
func NewService(store Store, queue Queue, net Network, cfg Config) *Service {
	if cfg.MinDuration == 0 {
		cfg.MinDuration = DefaultMinDuration
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.PendingExpiry == 0 {
		cfg.PendingExpiry = DefaultPendingExpiry
	}
	if cfg.StuckAfter == 0 {
		cfg.StuckAfter = DefaultStuckAfter
	}
	if cfg.InventoryTTL == 0 {
		cfg.InventoryTTL = DefaultInventoryTTL
	}
	return &Service{store: store, queue: queue, net: net, cfg: cfg}
}

func (s *Service) now() time.Time { return s.cfg.Now().UTC() }

// MinDuration is the shortest maximum a policy port may have.
func (s *Service) MinDuration() time.Duration { return s.cfg.MinDuration }

// GetPolicy returns the named policy.
func (s *Service) GetPolicy(ctx context.Context, p Principal, name string) (Policy, error) {
	if err := requireAnyRole(p, "reading policies", anyRole...); err != nil {
		return Policy{}, err
	}
	if err := ValidatePolicyName(name); err != nil {
		return Policy{}, err
	}
	return s.getPolicy(ctx, name)
}

// inScope refuses a VM outside the configured subscriptions.
func (s *Service) inScope(vmID string) error {
	if len(s.cfg.Subscriptions) == 0 {
		return nil
	}
	id, err := ParseVMID(vmID)
	if err != nil {
		return err
	}
	for _, sub := range s.cfg.Subscriptions {
		if strings.EqualFold(sub, id.Subscription) {
			return nil
		}
	}
	return Errorf(EINVALID, "VM %s is in subscription %s, which is not in this service's scope (JIT_SUBSCRIPTIONS)", id.Name, id.Subscription)
}

// getPolicy reads a policy, saying in words when it does not exist.
func (s *Service) getPolicy(ctx context.Context, name string) (Policy, error) {
	pol, err := s.store.GetPolicy(ctx, name)
	if ErrorCode(err) == ENOTFOUND {
		return Policy{}, Errorf(ENOTFOUND, "policy %s does not exist", name)
	}
	return pol, err
}

// getRequest reads a request, saying in words when it does not exist.
func (s *Service) getRequest(ctx context.Context, id string) (Request, error) {
	if !ValidRequestID(id) {
		return Request{}, Errorf(ENOTFOUND, "request %q does not exist", shorten(id))
	}
	r, err := s.store.GetRequest(ctx, id)
	if ErrorCode(err) == ENOTFOUND {
		return Request{}, Errorf(ENOTFOUND, "request %s does not exist", id)
	}
	return r, err
}

// ListPolicies returns every policy.
func (s *Service) ListPolicies(ctx context.Context, p Principal) ([]Policy, error) {
	if err := requireAnyRole(p, "listing policies", anyRole...); err != nil {
		return nil, err
	}
	return s.store.ListPolicies(ctx)
}

// PutPolicy creates or replaces a policy and locks its VMs' ports down with
// deny rules in every NSG that guards them. ifMatch, when not empty, must be
// the stored policy's ETag ("*" matches any existing policy). Nothing is
// stored unless every deny rule was written.
func (s *Service) PutPolicy(ctx context.Context, p Principal, pol Policy, ifMatch string) (Policy, error) {
	if err := requireRole(p, RoleAdmin, "changing policies"); err != nil {
		return Policy{}, err
	}
	if err := pol.Normalise(s.cfg.MinDuration); err != nil {
		return Policy{}, err
	}
	old, err := s.store.GetPolicy(ctx, pol.Name)
	exists := err == nil
	if err != nil && ErrorCode(err) != ENOTFOUND {
		return Policy{}, fmt.Errorf("reading policy: %w", err)
	}
	if ifMatch != "" && (!exists || ifMatch != "*" && ifMatch != old.ETag) {
		return Policy{}, Errorf(ECONFLICT, "policy %s has changed since it was read (If-Match does not match its etag)", pol.Name)
	}
	for i, vm := range pol.VMs {
		if err := s.inScope(vm.ID); err != nil {
			return Policy{}, Errorf(EINVALID, "properties.virtualMachines[%d].id: %s", i, ErrorMessage(err))
		}
	}
	if err := s.checkVMsFree(ctx, pol); err != nil {
		return Policy{}, err
	}
	for i := range pol.VMs {
		vm := &pol.VMs[i]
		info, err := s.net.ResolveVM(ctx, vm.ID)
		if err != nil {
			if ErrorCode(err) == ENOTFOUND {
				return Policy{}, Errorf(EINVALID, "properties.virtualMachines[%d].id: VM %s does not exist", i, vm.ID)
			}
			return Policy{}, fmt.Errorf("resolving VM %s: %w", vm.ID, err)
		}
		if info.Unsupported != "" {
			return Policy{}, Errorf(EINVALID, "properties.virtualMachines[%d].id: VM %s cannot be protected: %s", i, vm.ID, info.Unsupported)
		}
		vm.Name, vm.PrivateIPs, vm.NSGs = info.Name, info.PrivateIPs, info.NSGs
	}

	// Lock down first; undo on failure what this call added.
	var written []denyTarget
	for _, vm := range pol.VMs {
		for _, n := range vm.NSGs {
			if err := s.putRule(ctx, n.ID, denyRule(pol.Name, vm)); err != nil {
				s.undoLockdown(ctx, old, exists, written)
				s.auditFailure(ctx, p, AuditLockdown, pol.Name, "", vm.ID, n.ID, err)
				return Policy{}, Wrap(EUNAVAILABLE, err, fmt.Sprintf("writing the deny rule for VM %s in NSG %s failed; nothing was changed, try again", vm.Name, ResourceName(n.ID)))
			}
			written = append(written, denyTarget{vm: vm.ID, nsg: n.ID})
		}
	}

	now := s.now()
	pol.UpdatedAt, pol.UpdatedBy = now, p.ID
	var saved Policy
	if exists {
		pol.CreatedAt = old.CreatedAt
		pol.ETag = old.ETag
		saved, err = s.store.UpdatePolicy(ctx, pol)
	} else {
		pol.CreatedAt = now
		saved, err = s.store.CreatePolicy(ctx, pol)
	}
	if err != nil {
		s.undoLockdown(ctx, old, exists, written)
		if ErrorCode(err) == ECONFLICT {
			return Policy{}, Errorf(ECONFLICT, "policy %s was changed by someone else at the same time; read it and try again", pol.Name)
		}
		return Policy{}, fmt.Errorf("storing policy: %w", err)
	}
	if err := s.audit(ctx, AuditEvent{Action: AuditPolicyPut, Actor: p.ID, Policy: pol.Name, Result: ResultSuccess,
		Detail: fmt.Sprintf("%d VMs", len(pol.VMs))}); err != nil {
		return Policy{}, err
	}
	for _, w := range written {
		vm, _ := saved.VM(w.vm)
		if err := s.audit(ctx, AuditEvent{Action: AuditLockdown, Actor: p.ID, Policy: pol.Name, VM: w.vm, NSG: w.nsg,
			Ports: vm.PortNumbers(), Sources: []string{AnySource}, Result: ResultSuccess}); err != nil {
			return Policy{}, err
		}
	}
	if exists {
		for _, vm := range old.VMs {
			if _, still := saved.VM(vm.ID); !still {
				if err := s.releaseVM(ctx, p, old.Name, vm); err != nil {
					return saved, err
				}
			}
		}
	}
	s.cfg.Log.Info().Str("policy", pol.Name).Int("vms", len(pol.VMs)).Str("actor", p.ID).Msg("policy written")
	return saved, nil
}

type denyTarget struct{ vm, nsg string }

// undoLockdown removes deny rules written by a failed PutPolicy for VMs that
// were not already locked down by the previous version of the policy.
func (s *Service) undoLockdown(ctx context.Context, old Policy, existed bool, written []denyTarget) {
	for _, w := range written {
		if existed {
			if _, was := old.VM(w.vm); was {
				continue
			}
		}
		if err := s.deleteRule(ctx, w.nsg, DenyRuleName(w.vm)); err != nil {
			s.cfg.Log.Error().Err(err).Str("vm", w.vm).Str("nsg", w.nsg).Msg("undoing deny rule failed")
		}
	}
}

// checkVMsFree refuses a VM that another policy already protects.
func (s *Service) checkVMsFree(ctx context.Context, pol Policy) error {
	all, err := s.store.ListPolicies(ctx)
	if err != nil {
		return fmt.Errorf("listing policies: %w", err)
	}
	for _, other := range all {
		if strings.EqualFold(other.Name, pol.Name) {
			continue
		}
		for _, vm := range pol.VMs {
			if _, ok := other.VM(vm.ID); ok {
				return Errorf(ECONFLICT, "VM %s is already in policy %s; a VM can be in one policy only", vm.ID, other.Name)
			}
		}
	}
	return nil
}

// DeletePolicy revokes the policy's live grants, removes its deny rules and
// deletes it.
func (s *Service) DeletePolicy(ctx context.Context, p Principal, name, ifMatch string) error {
	if err := requireRole(p, RoleAdmin, "deleting policies"); err != nil {
		return err
	}
	if err := ValidatePolicyName(name); err != nil {
		return err
	}
	pol, err := s.getPolicy(ctx, name)
	if err != nil {
		return err
	}
	if ifMatch != "" && ifMatch != "*" && ifMatch != pol.ETag {
		return Errorf(ECONFLICT, "policy %s has changed since it was read (If-Match does not match its etag)", name)
	}
	for _, vm := range pol.VMs {
		if err := s.releaseVM(ctx, p, pol.Name, vm); err != nil {
			return err
		}
	}
	if err := s.store.DeletePolicy(ctx, pol.Name, pol.ETag); err != nil {
		if ErrorCode(err) == ECONFLICT {
			return Errorf(ECONFLICT, "policy %s was changed by someone else at the same time; try again", name)
		}
		return fmt.Errorf("deleting policy: %w", err)
	}
	s.cfg.Log.Info().Str("policy", pol.Name).Str("actor", p.ID).Msg("policy deleted")
	return s.audit(ctx, AuditEvent{Action: AuditPolicyDelete, Actor: p.ID, Policy: pol.Name, Result: ResultSuccess})
}

// releaseVM ends a VM's protection by a policy: its live grants are revoked
// and its deny rules removed.
func (s *Service) releaseVM(ctx context.Context, p Principal, policy string, vm VMPolicy) error {
	reqs, err := s.store.ListRequests(ctx, RequestFilter{VM: vm.ID, Statuses: []string{RequestActive}})
	if err != nil {
		return fmt.Errorf("listing requests of VM %s: %w", vm.ID, err)
	}
	for _, r := range reqs {
		if _, err := s.revoke(ctx, p, r.ID, vm.ID, ReasonPolicyChanged); err != nil && ErrorCode(err) != ECONFLICT {
			return err
		}
	}
	for _, n := range vm.NSGs {
		if err := s.deleteRule(ctx, n.ID, DenyRuleName(vm.ID)); err != nil {
			s.auditFailure(ctx, p, AuditUnlock, policy, "", vm.ID, n.ID, err)
			return Wrap(EUNAVAILABLE, err, fmt.Sprintf("removing the deny rule of VM %s from NSG %s failed; try again", vm.Name, ResourceName(n.ID)))
		}
		if err := s.audit(ctx, AuditEvent{Action: AuditUnlock, Actor: p.ID, Policy: policy, VM: vm.ID, NSG: n.ID,
			Ports: vm.PortNumbers(), Result: ResultSuccess}); err != nil {
			return err
		}
	}
	return nil
}

// denyRule is the lockdown rule of a VM in each NSG that guards it.
func denyRule(policy string, vm VMPolicy) SecurityRule {
	proto := vm.Ports[0].Protocol
	for _, r := range vm.Ports {
		if r.Protocol != proto {
			proto = ProtocolAny
		}
	}
	return SecurityRule{
		Name:         DenyRuleName(vm.ID),
		Description:  clip(fmt.Sprintf("Managed by jitaccess: lockdown of VM %s (policy %s). Do not edit.", vm.Name, policy), 140),
		Access:       AccessDeny,
		Protocol:     armProtocol(proto),
		Ports:        portStrings(vm.PortNumbers()),
		Sources:      []string{AnySource},
		Destinations: vm.PrivateIPs,
	}
}

// allowRule is the rule that opens grant i of request r.
func allowRule(r Request, i int) SecurityRule {
	g := r.Grants[i]
	return SecurityRule{
		Name: RuleName(r.ID, i),
		// No end time here: extend moves it without a write, and the sweeper
		// compares descriptions to find rules edited by hand.
		Description: clip(fmt.Sprintf("Managed by jitaccess: grant %s-%d for VM %s. Do not edit.",
			r.ID, i, ResourceName(g.VM)), 140),
		Access:       AccessAllow,
		Protocol:     armProtocol(g.Protocol),
		Ports:        portStrings(g.Ports),
		Sources:      g.Sources,
		Destinations: g.Destinations,
	}
}

func armProtocol(p string) string {
	switch p {
	case ProtocolTCP:
		return "Tcp"
	case ProtocolUDP:
		return "Udp"
	}
	return "*"
}

func portStrings(ns []int) []string {
	out := make([]string, len(ns))
	for i, n := range ns {
		out[i] = strconv.Itoa(n)
	}
	return out
}

// clip returns at most n bytes of s, cut at a character boundary.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// audit appends ev, filling in its ID and time when unset.
func (s *Service) audit(ctx context.Context, ev AuditEvent) error {
	if ev.Time.IsZero() {
		ev.Time = s.now()
	}
	if ev.ID == "" {
		ev.ID = ev.Time.Format("20060102T150405.000000000") + "-" + ev.Action + "-" + NewRequestID()[:10]
	}
	if err := s.store.AppendAudit(ctx, ev); err != nil {
		s.cfg.Log.Error().Err(err).Str("action", ev.Action).Str("request", ev.Request).Msg("audit write failed")
		return fmt.Errorf("writing audit event: %w", err)
	}
	return nil
}

// auditFailure records a failed step. A failure to audit is logged only: the
// caller is already returning an error.
func (s *Service) auditFailure(ctx context.Context, p Principal, action, policy, request, vm, nsg string, cause error) {
	s.cfg.Log.Warn().Err(cause).Str("action", action).Str("vm", vm).Str("nsg", nsg).Str("request", request).Msg("step failed")
	detail := clip(action+": "+ErrorMessage(cause)+": "+errorText(cause), 500)
	_ = s.audit(ctx, AuditEvent{Action: AuditFailure, Actor: p.ID, Policy: policy, Request: request, VM: vm, NSG: nsg,
		Result: ResultFailure, Detail: detail})
	if s.cfg.Notifier != nil {
		n := Notification{Event: EventFailed, Time: s.now(), Request: request, Policy: policy, Actor: p.ID, Detail: detail}
		if vm != "" {
			n.VMs = []string{vm}
		}
		s.cfg.Notifier.Notify(n)
	}
}

func errorText(err error) string {
	var e *Error
	msg := err.Error()
	if errors.As(err, &e) && e.Err != nil {
		msg = e.Err.Error()
	}
	// Keep the first line only: SDK errors carry whole response dumps.
	if i := strings.IndexByte(msg, '\n'); i >= 0 {
		msg = msg[:i]
	}
	return msg
}

func sortedCopy(ns []int) []int {
	out := slices.Clone(ns)
	slices.Sort(out)
	return slices.Compact(out)
}
