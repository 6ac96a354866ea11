package jit

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
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
	// NoticeBackoff is the wait after a notification's first failed
	// delivery, doubling after each further one up to 20 times it;
	// DefaultNoticeBackoff when zero.
	NoticeBackoff time.Duration
	// Go runs background work of the service (delivering notifications)
	// in the caller's lifecycle; default: a goroutine that lives as long
	// as the process.
	Go func(func(context.Context))
	// StuckAfter is how long an open may stay pending before the grant is
	// marked failed; DefaultStuckAfter when zero.
	StuckAfter time.Duration
	// InventoryTTL is how long the VM list read from Azure serves
	// GET /vms before it is read again; resource events drop it at once.
	// DefaultInventoryTTL when zero.
	InventoryTTL time.Duration
	// ReconcileShare is the share of the time Reconcile may keep the
	// process busy: it counts the process's CPU time (not the time it
	// waits on Azure) while it lists active requests and NSGs and works on
	// each NSG, and pauses between items (at most 1 s at a time), so that
	// a large estate does not take the CPU from requests. Ended grants are
	// closed between the listing and the drift repair; the closes
	// themselves are not paced. 0 or 1 means no pauses.
	ReconcileShare float64
	// Deployment names this deployment in the marker of every rule it
	// writes (see Owner); DefaultDeployment when empty.
	Deployment string
	// AllowBand and DenyBand are the priority bands of allow and deny
	// rules, as the Network is configured; the defaults when zero.
	AllowBand, DenyBand Band
	// Self are the client ids this service writes to ARM as (its managed
	// identity): resource events about NSG changes they made are its own
	// writes echoed back.
	Self []string
	// Limits bound what one principal may ask (see Limits).
	Limits Limits
	Log    zerolog.Logger
}

// DefaultDeployment is the deployment name when none is configured.
const DefaultDeployment = "jitaccess"

// The service has three roles, each its own type, built in this order:
//
//   - API: the use cases behind the HTTP API (policies, requests,
//     approvals, extensions, revocations and the views). It stores changes
//     and queues their operations.
//   - Applier: the worker the queue delivers operations to. It writes the
//     NSGs and records what it did; it queues nothing, so the queue can be
//     built before it and handed it when it starts.
//   - Reconciler: the sweeper and the resource events. It closes ended
//     grants through the Applier, revokes and re-locks through the API, and
//     repairs drift.
//
// Core is what they share: the store, the network, the settings, the VM
// inventory cache and the delivery of notifications.
type Core struct {
	store Store
	net   Network
	cfg   Config

	invMu sync.Mutex
	inv   []VMInfo
	invAt time.Time

	delivering, redeliver atomic.Bool // kickNotices' single flight
}

// API holds the use cases of the HTTP API. Its methods are safe for
// concurrent use.
type API struct {
	*Core
	queue Queue

	writes writeLimiter // per-principal change budgets of this instance
	asking asking       // new requests in flight per requestor, to count them
}

// Applier applies operations to the NSGs: it is the Worker a Queue
// delivers to. Its methods are safe for concurrent use.
type Applier struct {
	*Core
}

// Reconciler sweeps ended grants, repairs drift and handles resource
// events. Its methods are safe for concurrent use.
type Reconciler struct {
	*Core
	api    *API   // revokes grants of deleted VMs and queues lockdowns
	worker Worker // closes ended grants
}

// DefaultInventoryTTL is how long a VM inventory is reused.
const DefaultInventoryTTL = time.Minute

// NewCore returns what the roles share, over the given adapters, with the
// defaults filled into cfg.
func NewCore(store Store, net Network, cfg Config) *Core {
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
	if cfg.Deployment == "" {
		cfg.Deployment = DefaultDeployment
	}
	if cfg.AllowBand == (Band{}) {
		cfg.AllowBand = DefaultAllowBand
	}
	if cfg.DenyBand == (Band{}) {
		cfg.DenyBand = DefaultDenyBand
	}
	if cfg.NoticeBackoff == 0 {
		cfg.NoticeBackoff = DefaultNoticeBackoff
	}
	if cfg.Go == nil {
		cfg.Go = func(fn func(context.Context)) { go fn(context.Background()) }
	}
	return &Core{store: store, net: net, cfg: cfg}
}

// NewAPI returns the use cases over c, queueing operations on q.
func NewAPI(c *Core, q Queue) *API { return &API{Core: c, queue: q} }

// NewApplier returns the worker over c.
func NewApplier(c *Core) *Applier { return &Applier{Core: c} }

// NewReconciler returns the sweeper and event handler: it revokes and
// queues lockdowns through api and closes ended grants through worker
// (the Applier, or what the queue delivers to in tests).
func NewReconciler(api *API, worker Worker) *Reconciler {
	return &Reconciler{Core: api.Core, api: api, worker: worker}
}

func (s *Core) now() time.Time { return s.cfg.Now().UTC() }

// MinDuration is the shortest maximum a policy port may have.
func (s *Core) MinDuration() time.Duration { return s.cfg.MinDuration }

// GetPolicy returns the named policy.
func (s *API) GetPolicy(ctx context.Context, p Principal, name string) (Policy, error) {
	if err := requireAnyRole(p, "reading policies", anyRole...); err != nil {
		return Policy{}, err
	}
	if err := ValidatePolicyName(name); err != nil {
		return Policy{}, err
	}
	return s.getPolicy(ctx, name)
}

// inScope refuses a VM outside the configured subscriptions.
func (s *Core) inScope(vmID string) error {
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
func (s *Core) getPolicy(ctx context.Context, name string) (Policy, error) {
	pol, err := s.store.GetPolicy(ctx, name)
	if ErrorCode(err) == ENOTFOUND {
		return Policy{}, Errorf(ENOTFOUND, "policy %s does not exist", name)
	}
	return pol, err
}

// getRequest reads a request, saying in words when it does not exist.
func (s *Core) getRequest(ctx context.Context, id string) (Request, error) {
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
func (s *API) ListPolicies(ctx context.Context, p Principal) ([]Policy, error) {
	if err := requireAnyRole(p, "listing policies", anyRole...); err != nil {
		return nil, err
	}
	return s.store.ListPolicies(ctx)
}

// PutPolicy creates or replaces a policy. It validates it, resolves its
// VMs from the inventory, checks the NSG limits, stores it, and queues the
// lockdown of every NSG it touches: it answers at once, and the policy's
// state (PolicyStatus) shows the lockdown's progress as seen in ARM.
// ifMatch, when not empty, must be the stored policy's ETag ("*" matches
// any existing policy). A VM is in one policy at most: the store refuses
// a policy naming a VM of another one, under concurrency too.
func (s *API) PutPolicy(ctx context.Context, p Principal, pol Policy, ifMatch string) (Policy, error) {
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
	if exists && old.State == PolicyDeleting {
		return Policy{}, Errorf(ECONFLICT, "policy %s is being deleted; put it again once it is gone", pol.Name)
	}
	for i, vm := range pol.VMs {
		if err := s.inScope(vm.ID); err != nil {
			return Policy{}, Errorf(EINVALID, "properties.virtualMachines[%d].id: %s", i, ErrorMessage(err))
		}
	}
	all, err := s.store.ListPolicies(ctx)
	if err != nil {
		return Policy{}, fmt.Errorf("listing policies: %w", err)
	}
	if err := checkVMsFree(all, pol); err != nil {
		return Policy{}, err
	}
	if err := s.resolveVMs(ctx, &pol); err != nil {
		return Policy{}, err
	}
	next := []Policy{pol}
	for _, other := range all {
		if !strings.EqualFold(other.Name, pol.Name) {
			next = append(next, other)
		}
	}
	if err := s.checkLimits(next, nsgsOf(pol)); err != nil {
		return Policy{}, err
	}

	now := s.now()
	pol.UpdatedAt, pol.UpdatedBy, pol.State = now, p.ID, ""
	var saved Policy
	ev := s.stamp([]AuditEvent{{Action: AuditPolicyPut, Actor: p.ID, Policy: pol.Name, Result: ResultSuccess,
		Detail: fmt.Sprintf("%d VMs; lockdown queued", len(pol.VMs))}})
	if exists {
		pol.CreatedAt = old.CreatedAt
		pol.ETag = old.ETag
		saved, err = s.store.UpdatePolicy(ctx, pol, ev...)
	} else {
		pol.CreatedAt = now
		saved, err = s.store.CreatePolicy(ctx, pol, ev...)
	}
	if err != nil {
		if ErrorCode(err) == ECONFLICT {
			if errors.Is(err, ErrVMTaken) {
				return Policy{}, err
			}
			return Policy{}, Errorf(ECONFLICT, "policy %s was changed by someone else at the same time; read it and try again", pol.Name)
		}
		return Policy{}, fmt.Errorf("storing policy: %w", err)
	}
	// Queued before anything else can fail: a stored policy's lockdown must
	// not wait for the sweeper.
	s.queueSync(ctx, nsgsOf(old, saved))
	if exists {
		for _, vm := range old.VMs {
			if _, still := saved.VM(vm.ID); !still {
				if err := s.revokeVM(ctx, p, vm); err != nil {
					return saved, err
				}
			}
		}
	}
	s.cfg.Log.Info().Str("policy", pol.Name).Int("vms", len(pol.VMs)).Str("actor", p.ID).Msg("policy written; lockdown queued")
	return saved, nil
}

// resolveVMs fills in each VM's name, IPs and NSGs from the inventory (list
// calls, read again once when a VM is not in it), never one read per VM.
func (s *API) resolveVMs(ctx context.Context, pol *Policy) error {
	inv, err := s.inventory(ctx)
	if err != nil {
		return Wrap(EUNAVAILABLE, err, "listing VMs from Azure failed; try again")
	}
	byID := func(vms []VMInfo) map[string]VMInfo {
		m := make(map[string]VMInfo, len(vms))
		for _, v := range vms {
			m[strings.ToLower(v.ID)] = v
		}
		return m
	}
	known := byID(inv)
	for _, vm := range pol.VMs {
		if _, ok := known[strings.ToLower(vm.ID)]; !ok {
			if inv, err = s.readInventory(ctx); err != nil {
				return Wrap(EUNAVAILABLE, err, "listing VMs from Azure failed; try again")
			}
			known = byID(inv)
			break
		}
	}
	for i := range pol.VMs {
		vm := &pol.VMs[i]
		info, ok := known[strings.ToLower(vm.ID)]
		if !ok {
			return Errorf(EINVALID, "properties.virtualMachines[%d].id: VM %s does not exist", i, vm.ID)
		}
		if info.Unsupported != "" {
			return Errorf(EINVALID, "properties.virtualMachines[%d].id: VM %s cannot be protected: %s", i, vm.ID, info.Unsupported)
		}
		vm.Name, vm.PrivateIPs, vm.NSGs = info.Name, info.PrivateIPs, info.NSGs
	}
	return nil
}

// queueSync queues the lockdown of the NSGs. When the queue fails, the
// sweeper brings them in line (every sweep compares each NSG's deny rules
// with the policies and writes what differs).
func (s *API) queueSync(ctx context.Context, nsgs []string) {
	if len(nsgs) == 0 {
		return
	}
	if err := s.queue.Enqueue(ctx, syncOps(nsgs, s.now())); err != nil {
		s.cfg.Log.Warn().Err(err).Int("nsgs", len(nsgs)).Msg("queueing the lockdown failed; the next sweep does it")
	}
}

// checkVMsFree refuses a VM that another policy already protects. The
// store checks it again as it writes, under concurrency.
func checkVMsFree(all []Policy, pol Policy) error {
	for _, other := range all {
		if strings.EqualFold(other.Name, pol.Name) {
			continue
		}
		for _, vm := range pol.VMs {
			if _, ok := other.VM(vm.ID); ok {
				return VMTaken(vm.ID, other.Name)
			}
		}
	}
	return nil
}

// DeletePolicy revokes the policy's live grants, marks it Deleting and
// queues the removal of its deny rules; the policy is gone once every NSG
// was seen without them.
func (s *API) DeletePolicy(ctx context.Context, p Principal, name, ifMatch string) (Policy, error) {
	if err := requireRole(p, RoleAdmin, "deleting policies"); err != nil {
		return Policy{}, err
	}
	if err := ValidatePolicyName(name); err != nil {
		return Policy{}, err
	}
	pol, err := s.getPolicy(ctx, name)
	if err != nil {
		return Policy{}, err
	}
	if ifMatch != "" && ifMatch != "*" && ifMatch != pol.ETag {
		return Policy{}, Errorf(ECONFLICT, "policy %s has changed since it was read (If-Match does not match its etag)", name)
	}
	if pol.State != PolicyDeleting {
		pol.State, pol.UpdatedAt, pol.UpdatedBy = PolicyDeleting, s.now(), p.ID
		ev := s.stamp([]AuditEvent{{Action: AuditPolicyDelete, Actor: p.ID, Policy: pol.Name, Result: ResultSuccess,
			Detail: "deletion accepted: grants revoked, deny rules being removed"}})
		if pol, err = s.store.UpdatePolicy(ctx, pol, ev...); err != nil {
			if ErrorCode(err) == ECONFLICT {
				return Policy{}, Errorf(ECONFLICT, "policy %s was changed by someone else at the same time; try again", name)
			}
			return Policy{}, fmt.Errorf("marking policy %s for deletion: %w", name, err)
		}
		s.queueSync(ctx, nsgsOf(pol))
	} else {
		s.queueSync(ctx, nsgsOf(pol)) // a repeated DELETE queues the removal again
	}
	for _, vm := range pol.VMs {
		if err := s.revokeVM(ctx, p, vm); err != nil {
			return pol, err
		}
	}
	s.cfg.Log.Info().Str("policy", pol.Name).Str("actor", p.ID).Msg("policy deletion accepted")
	return pol, nil
}

// revokeVM revokes the live grants of a VM that leaves its policy.
func (s *API) revokeVM(ctx context.Context, p Principal, vm VMPolicy) error {
	reqs, err := s.store.ListRequests(ctx, RequestFilter{VM: vm.ID, Statuses: []string{RequestActive}})
	if err != nil {
		return fmt.Errorf("listing requests of VM %s: %w", vm.ID, err)
	}
	for _, r := range reqs {
		if _, err := s.revoke(ctx, p, r.ID, vm.ID, ReasonPolicyChanged); err != nil && ErrorCode(err) != ECONFLICT {
			return err
		}
	}
	return nil
}

// allowRules are the rules that open grant i of request r: one per
// address family that both its sources and the VM's addresses have (a
// rule mixing IPv4 and IPv6 is refused by ARM). Sources with no family
// ("*", service tags) go in each.
func (s *Core) allowRules(r Request, i int) []SecurityRule {
	g := r.Grants[i]
	var out []SecurityRule
	for _, fam := range []string{familyV4, familyV6} {
		srcs, dsts := byFamily(g.Sources, fam), byFamily(g.Destinations, fam)
		if len(srcs) == 0 || len(dsts) == 0 {
			continue
		}
		name := RuleName(r.ID, i)
		if fam == familyV6 {
			name += "-" + familyV6
		}
		out = append(out, SecurityRule{
			Name: name,
			// No end time here: extend moves it without a write, and the
			// sweeper compares descriptions to find rules edited by hand.
			Description: s.owner().describe(fmt.Sprintf("grant %s-%d for VM %s (jitaccess; do not edit)",
				r.ID, i, ResourceName(g.VM))),
			Access:       AccessAllow,
			Protocol:     armProtocol(g.Protocol),
			SourcePorts:  []string{"*"},
			Ports:        portStrings(g.Ports),
			Sources:      srcs,
			Destinations: dsts,
		})
	}
	return out
}

// byFamily returns the prefixes of the family, and those of none ("*",
// service tags).
func byFamily(prefixes []string, fam string) []string {
	var out []string
	for _, p := range prefixes {
		if f := family(p); f == "" || f == fam {
			out = append(out, p)
		}
	}
	return out
}

// allowRuleNames are the names grant i's rules may have, one per family.
func allowRuleNames(requestID string, i int) []string {
	return []string{RuleName(requestID, i), RuleName(requestID, i) + "-" + familyV6}
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

// stamp fills in each event's ID and time where unset, in place, and
// returns events.
func (s *Core) stamp(events []AuditEvent) []AuditEvent {
	for i := range events {
		ev := &events[i]
		if ev.Time.IsZero() {
			ev.Time = s.now()
		}
		if ev.ID == "" {
			ev.ID = ev.Time.Format("20060102T150405.000000000") + "-" + ev.Action + "-" + NewRequestID()[:10]
		}
		if n := ev.Notice; n != nil {
			n.ID = ev.ID // the delivery's idempotency key
			if n.Time.IsZero() {
				n.Time = ev.Time
			}
		}
	}
	return events
}

// audit appends ev, an event that records no change of the store (a
// change's events go with it: mutateAudited), filling in its ID and time
// when unset.
func (s *Core) audit(ctx context.Context, ev AuditEvent) error {
	ev = s.stamp([]AuditEvent{ev})[0]
	if err := s.store.AppendAudit(ctx, ev); err != nil {
		s.cfg.Log.Error().Err(err).Str("action", ev.Action).Str("request", ev.Request).Msg("audit write failed")
		return fmt.Errorf("writing audit event: %w", err)
	}
	if ev.Notice != nil {
		s.kickNotices()
	}
	return nil
}

// auditFailure records a failed step. A failure to audit is logged only: the
// caller is already returning an error.
func (s *Core) auditFailure(ctx context.Context, p Principal, action, policy, request, vm, nsg string, cause error) {
	s.cfg.Log.Warn().Err(cause).Str("action", action).Str("vm", vm).Str("nsg", nsg).Str("request", request).Msg("step failed")
	detail := clip(action+": "+ErrorMessage(cause)+": "+errorText(cause), 500)
	_ = s.audit(ctx, AuditEvent{Action: AuditFailure, Actor: p.ID, Policy: policy, Request: request, VM: vm, NSG: nsg,
		Result: ResultFailure, Detail: detail, Notice: s.eventNotice(EventFailed, policy, request, p.ID, vm, detail)})
}

// eventNotice is the notification about a failure or a drift, which is
// not about a whole request; nil when no Notifier is set.
func (s *Core) eventNotice(event, policy, request, actor, vm, detail string) *Notification {
	if s.cfg.Notifier == nil {
		return nil
	}
	n := &Notification{Event: event, Request: request, Policy: policy, Actor: actor, Detail: clip(detail, 500)}
	if vm != "" {
		n.VMs = []string{vm}
	}
	return n
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
