package jit_test

// Table tests of what the worker and the reconciler decide to do, on the
// domain's fakes and the clock the test moves.

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"jitaccess/handler/jit"
	"jitaccess/handler/memstore"
)

// forged is an operation on the request's only grant and NSG.
func forged(kind string, r jit.Request) jit.Operation {
	return jit.Operation{ID: "test-" + kind, Kind: kind, RequestID: r.ID, Grant: 0, NSG: dnsg}
}

// TestWorkerPlan: each operation as the queue may deliver it (late, twice,
// stale, forged) and what the worker does with it: the rule after, the
// NSG writes it cost and the grant's recorded state.
func TestWorkerPlan(t *testing.T) {
	open := func(d *domain) jit.Request {
		r := d.request(30 * time.Minute)
		d.deliver(jit.OpOpen)
		return r
	}
	for _, tc := range []struct {
		name     string
		approval *jit.Approval
		// given sets the scene and returns the operation to deliver.
		given  func(d *domain) jit.Operation
		rule   bool   // an allow rule in the NSG after
		writes int    // NSG writes the operation cost
		status string // request/grant after
	}{
		{"open of a live grant", nil, func(d *domain) jit.Operation {
			d.request(30 * time.Minute)
			return d.q.take(jit.OpOpen)[0] // not delivered yet
		}, true, 1, jit.RequestActive + "/" + jit.GrantInitiated},
		{"open delivered again", nil, func(d *domain) jit.Operation {
			return forged(jit.OpOpen, open(d))
		}, true, 0, jit.RequestActive + "/" + jit.GrantInitiated},
		{"open of a request not approved", approval, func(d *domain) jit.Operation {
			r := d.request(30 * time.Minute)
			return forged(jit.OpOpen, r)
		}, false, 0, jit.RequestPending + "/" + jit.GrantInitiating},
		{"open after the grant was revoked", nil, func(d *domain) jit.Operation {
			r := d.request(30 * time.Minute)
			op := d.q.take(jit.OpOpen)[0]
			if _, err := d.api.Revoke(d.t.Context(), alice, r.ID); err != nil {
				d.t.Fatal(err)
			}
			d.deliver(jit.OpClose)
			return op
		}, false, 0, jit.RequestClosed + "/" + jit.GrantRevoked},
		{"open delivered after the end", nil, func(d *domain) jit.Operation {
			d.request(5 * time.Minute)
			d.clock.Add(5 * time.Minute)
			return d.q.take(jit.OpOpen)[0]
		}, false, 0, jit.RequestClosed + "/" + jit.GrantClosed},
		{"close before the end of an extended grant", nil, func(d *domain) jit.Operation {
			r := open(d)
			old := d.q.take(jit.OpClose)[0]
			if _, err := d.api.Extend(d.t.Context(), alice, r.ID, jit.ExtendInput{Duration: time.Hour}); err != nil {
				d.t.Fatal(err)
			}
			d.clock.Add(30 * time.Minute)
			return old
		}, true, 0, jit.RequestActive + "/" + jit.GrantInitiated},
		{"close at the end", nil, func(d *domain) jit.Operation {
			open(d)
			d.clock.Add(30 * time.Minute)
			return d.q.take(jit.OpClose)[0]
		}, false, 1, jit.RequestClosed + "/" + jit.GrantClosed},
		{"close delivered again", nil, func(d *domain) jit.Operation {
			open(d)
			d.clock.Add(30 * time.Minute)
			op := d.q.take(jit.OpClose)[0]
			if err := d.worker.ApplyOperations(d.t.Context(), []jit.Operation{op})[0]; err != nil {
				d.t.Fatal(err)
			}
			return op
		}, false, 0, jit.RequestClosed + "/" + jit.GrantClosed},
		{"close of a rule removed by hand", nil, func(d *domain) jit.Operation {
			open(d)
			d.net.mu.Lock()
			d.net.rules = slicesDeleteAllows(d.net.rules, d.net.owner)
			d.net.mu.Unlock()
			d.clock.Add(30 * time.Minute)
			return d.q.take(jit.OpClose)[0]
		}, false, 0, jit.RequestClosed + "/" + jit.GrantClosed},
		{"operation of an unknown request", nil, func(d *domain) jit.Operation {
			r := open(d)
			r.ID = "r-doesnotexist"
			return forged(jit.OpClose, r)
		}, true, 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newDomain(t, tc.approval)
			op := tc.given(d)
			before := d.net.writeCount()
			if err := d.worker.ApplyOperations(t.Context(), []jit.Operation{op})[0]; err != nil {
				t.Fatalf("%s: %v", op.ID, err)
			}
			if got := d.net.writeCount() - before; got != tc.writes {
				t.Errorf("%d NSG writes, want %d", got, tc.writes)
			}
			d.expect(tc.rule, op.RequestID, tc.status)
		})
	}
}

// TestReconcilePlan: what a sweep finds in the NSG against what the store
// says, and what it does: the report's counts, the rules after, and the
// grant's recorded state.
func TestReconcilePlan(t *testing.T) {
	foreign := jit.SecurityRule{Name: "ops-ssh", Description: "the ops team's", Access: jit.AccessAllow, Protocol: "Tcp", Priority: 100,
		Ports: []string{"22"}, Sources: []string{"*"}, Destinations: []string{"*"}}
	for _, tc := range []struct {
		name   string
		given  func(d *domain) jit.Request // the scene; the request to check
		want   jit.SweepReport             // NSGs is always 1
		rule   bool                        // a deployment's allow rule after
		status string                      // request/grant after
		check  func(d *domain) string      // anything else; "" when fine
	}{
		{"nothing drifted", func(d *domain) jit.Request {
			r := d.request(30 * time.Minute)
			d.deliver(jit.OpOpen)
			return r
		}, jit.SweepReport{}, true, jit.RequestActive + "/" + jit.GrantInitiated, nil},
		{"allow rule of a live grant deleted by hand", func(d *domain) jit.Request {
			r := d.request(30 * time.Minute)
			d.deliver(jit.OpOpen)
			d.net.edit(func(rules []jit.SecurityRule) []jit.SecurityRule { return slicesDeleteAllows(rules, d.net.owner) })
			return r
		}, jit.SweepReport{Repaired: 1}, true, jit.RequestActive + "/" + jit.GrantInitiated, nil},
		{"allow rule of a live grant widened by hand", func(d *domain) jit.Request {
			r := d.request(30 * time.Minute)
			d.deliver(jit.OpOpen)
			d.net.edit(func(rules []jit.SecurityRule) []jit.SecurityRule {
				for i := range rules {
					if rules[i].Access == jit.AccessAllow && d.net.owner.Owns(rules[i]) {
						rules[i].Sources = []string{"*"}
					}
				}
				return rules
			})
			return r
		}, jit.SweepReport{Repaired: 1}, true, jit.RequestActive + "/" + jit.GrantInitiated, func(d *domain) string {
			for _, r := range d.net.snapshot() {
				if r.Access == jit.AccessAllow && d.net.owner.Owns(r) && strings.Join(r.Sources, ",") != alice.Address {
					return "the allow rule's sources are " + strings.Join(r.Sources, ",") + ", want the requestor's address"
				}
			}
			return ""
		}},
		{"deny rule deleted by hand", func(d *domain) jit.Request {
			d.net.edit(func(rules []jit.SecurityRule) []jit.SecurityRule {
				var keep []jit.SecurityRule
				for _, r := range rules {
					if r.Access != jit.AccessDeny {
						keep = append(keep, r)
					}
				}
				return keep
			})
			return jit.Request{}
		}, jit.SweepReport{DenyRestored: 1}, false, "", func(d *domain) string {
			for _, r := range d.net.snapshot() {
				if r.Access == jit.AccessDeny && d.net.owner.Owns(r) {
					return ""
				}
			}
			return "no deny rule after the sweep"
		}},
		{"allow rule of a closed grant put back by hand", func(d *domain) jit.Request {
			r := d.request(30 * time.Minute)
			d.deliver(jit.OpOpen)
			was := d.net.snapshot()
			d.clock.Add(30 * time.Minute)
			d.deliver(jit.OpClose)
			d.net.edit(func([]jit.SecurityRule) []jit.SecurityRule { return was })
			return r
		}, jit.SweepReport{Orphans: 1}, false, jit.RequestClosed + "/" + jit.GrantClosed, nil},
		{"ended grant whose close was lost", func(d *domain) jit.Request {
			r := d.request(30 * time.Minute)
			d.deliver(jit.OpOpen)
			d.q.take(jit.OpClose)
			d.clock.Add(31 * time.Minute)
			return r
		}, jit.SweepReport{Closed: 1}, false, jit.RequestClosed + "/" + jit.GrantClosed, nil},
		{"open that never happened", func(d *domain) jit.Request {
			r := d.request(30 * time.Minute)
			d.q.take(jit.OpOpen) // lost
			d.clock.Add(jit.DefaultStuckAfter + time.Second)
			return r
		}, jit.SweepReport{Stuck: 1}, false, jit.RequestClosed + "/" + jit.GrantFailed, nil},
		{"another team's rule lets the port past the deny rule", func(d *domain) jit.Request {
			d.net.edit(func(rules []jit.SecurityRule) []jit.SecurityRule { return append(rules, foreign) })
			return jit.Request{}
		}, jit.SweepReport{ForeignBypass: 1}, false, "", func(d *domain) string {
			for _, r := range d.net.snapshot() {
				if r.Name == foreign.Name {
					if r.Priority != foreign.Priority || strings.Join(r.Sources, ",") != "*" {
						return "the other team's rule was changed"
					}
					return ""
				}
			}
			return "the other team's rule was deleted"
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newDomain(t, nil)
			r := tc.given(d)
			rep, err := d.rec.Reconcile(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			tc.want.NSGs = 1
			if rep != tc.want {
				t.Errorf("report %+v, want %+v", rep, tc.want)
			}
			d.expect(tc.rule, r.ID, tc.status)
			if tc.check != nil {
				if msg := tc.check(d); msg != "" {
					t.Error(msg)
				}
			}
			// A second sweep finds nothing left to do.
			again, err := d.rec.Reconcile(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if again.Closed+again.Orphans+again.Repaired+again.DenyRestored+again.Stuck != 0 {
				t.Errorf("second sweep %+v, want nothing done", again)
			}
		})
	}
}

// expect checks whether an allow rule is in the NSG and, when status is
// not empty, request id's status (request/grant).
func (d *domain) expect(rule bool, id, status string) {
	d.t.Helper()
	if d.net.allows() != rule {
		d.t.Errorf("allow rule in the NSG %v, want %v", d.net.allows(), rule)
	}
	if status != "" {
		if got := d.status(id); got != status {
			d.t.Errorf("status %s, want %s", got, status)
		}
	}
}

// slicesDeleteAllows drops the owner's allow rules, as a hand edit would.
func slicesDeleteAllows(rules []jit.SecurityRule, o jit.Owner) []jit.SecurityRule {
	var keep []jit.SecurityRule
	for _, r := range rules {
		if !(r.Access == jit.AccessAllow && o.Owns(r)) {
			keep = append(keep, r)
		}
	}
	return keep
}

// edit changes the NSG's rules as a person in the portal would.
func (n *memNet) edit(fn func([]jit.SecurityRule) []jit.SecurityRule) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.rules = fn(n.rules)
}

func (n *memNet) snapshot() []jit.SecurityRule {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]jit.SecurityRule(nil), n.rules...)
}

func (n *memNet) writeCount() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.writes
}

// statesFailing is a store whose NSG states cannot be written while fail
// is set.
type statesFailing struct {
	jit.Store
	fail bool
}

func (s *statesFailing) PutNSGState(ctx context.Context, st jit.NSGState) (jit.NSGState, error) {
	if s.fail {
		return jit.NSGState{}, jit.Errorf(jit.EUNAVAILABLE, "the store is away (injected)")
	}
	return s.Store.PutNSGState(ctx, st)
}

// TestLockdownAuditedWhenItsStateIsNot: a lockdown written to the NSG whose
// state could not be recorded is audited by the next sweep, once.
func TestLockdownAuditedWhenItsStateIsNot(t *testing.T) {
	d := &domain{t: t, store: memstore.New(), net: &memNet{owner: jit.Owner{Deployment: jit.DefaultDeployment}}, q: &recQueue{}, clock: &clock{now: t0}}
	st := &statesFailing{Store: d.store, fail: true}
	core := jit.NewCore(st, d.net, jit.Config{MinDuration: time.Minute, Subscriptions: []string{dsub}, Now: d.clock.Now, Log: zerolog.Nop()})
	d.api, d.worker = jit.NewAPI(core, d.q), jit.NewApplier(core)
	d.rec = jit.NewReconciler(d.api, d.worker)
	if _, err := d.api.PutPolicy(t.Context(), admin, jit.Policy{Name: "p", VMs: []jit.VMPolicy{{ID: dvm, Ports: []jit.PortRule{anyPort}}}}, ""); err != nil {
		t.Fatal(err)
	}
	d.deliver("")
	lockdowns := func() int {
		n := 0
		_ = d.store.ScanAudit(t.Context(), jit.AuditFilter{}, func(ev jit.AuditEvent) error {
			if ev.Action == jit.AuditLockdown && ev.VM == dvm {
				n++
			}
			return nil
		})
		return n
	}
	if n := lockdowns(); n != 0 {
		t.Fatalf("%d lockdown events before the state was recorded, want none yet", n)
	}
	st.fail = false
	for range 2 {
		d.clock.Add(time.Minute)
		if _, err := d.rec.Reconcile(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	if n := lockdowns(); n != 1 {
		t.Errorf("%d lockdown events after two sweeps, want 1", n)
	}
}
