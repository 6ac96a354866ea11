package jit_test

// Fast tests of the domain: the service on the in-memory store, a queue
// that only records, an in-memory network and a clock the test moves. No
// HTTP, no files, no sleeps: time passes when the test says so.

import (
	"context"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"jitaccess/handler/jit"
	"jitaccess/handler/memstore"
)

const dsub = "11111111-1111-1111-1111-111111111111"

var (
	dvm  = "/subscriptions/" + dsub + "/resourceGroups/demo/providers/Microsoft.Compute/virtualMachines/vm-1"
	dnsg = "/subscriptions/" + dsub + "/resourceGroups/demo/providers/Microsoft.Network/networkSecurityGroups/nsg-1"
)

// clock is a time the test moves.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// recQueue keeps what is enqueued for the test to deliver.
type recQueue struct {
	mu  sync.Mutex
	ops []jit.Operation
}

func (q *recQueue) Enqueue(_ context.Context, ops []jit.Operation) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.ops = append(q.ops, ops...)
	return nil
}

// take returns and forgets the queued operations of a kind ("" for all).
func (q *recQueue) take(kind string) []jit.Operation {
	q.mu.Lock()
	defer q.mu.Unlock()
	var out, keep []jit.Operation
	for _, op := range q.ops {
		if kind == "" || op.Kind == kind {
			out = append(out, op)
		} else {
			keep = append(keep, op)
		}
	}
	q.ops = keep
	return out
}

// memNet is one VM behind one NSG. It applies a RuleChange as the Network
// contract says, simply: rules by name, priorities the first free in the
// band of their access, foreign rules never touched.
type memNet struct {
	mu     sync.Mutex
	rules  []jit.SecurityRule
	owner  jit.Owner
	writes int
	// lostAnswer: the next write is made, but its caller hears an error,
	// as a worker that dies while ARM runs its write never hears back.
	lostAnswer bool
}

func (n *memNet) vm() jit.VMInfo {
	return jit.VMInfo{ID: dvm, Name: "vm-1", Location: "westeurope", PrivateIPs: []string{"10.0.0.4"},
		NSGs: []jit.NSGRef{{ID: dnsg, Scope: "nic"}}}
}

func (n *memNet) ListVMs(context.Context) ([]jit.VMInfo, error) { return []jit.VMInfo{n.vm()}, nil }

func (n *memNet) ResolveVM(_ context.Context, id string) (jit.VMInfo, error) {
	if !strings.EqualFold(id, dvm) {
		return jit.VMInfo{}, jit.Errorf(jit.ENOTFOUND, "VM %s does not exist", id)
	}
	return n.vm(), nil
}

func (n *memNet) ListRules(_ context.Context, nsg string) ([]jit.SecurityRule, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.rules), nil
}

func (n *memNet) ScanNSGs(ctx context.Context, fn func(jit.NSGInfo) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	rules, _ := n.ListRules(ctx, dnsg)
	return fn(jit.NSGInfo{ID: dnsg, Rules: rules})
}

func (n *memNet) ApplyRules(_ context.Context, nsg string, c jit.RuleChange) (jit.Applied, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if c.Refresh != nil {
		next, err := c.Refresh()
		if err != nil {
			return jit.Applied{}, err
		}
		c = next
	}
	ours := func(r jit.SecurityRule) bool { return n.owner.Owns(r) || c.Ours != nil && c.Ours(r.Name) }
	var ap jit.Applied
	var keep []jit.SecurityRule
	for _, r := range n.rules {
		gone := ours(r) && (slices.ContainsFunc(c.Delete, func(d string) bool { return strings.EqualFold(d, r.Name) }) || c.Prune != nil && c.Prune(r))
		if gone && !slices.ContainsFunc(c.Put, func(p jit.SecurityRule) bool { return strings.EqualFold(p.Name, r.Name) }) {
			ap.Removed = append(ap.Removed, r.Name)
			continue
		}
		keep = append(keep, r)
	}
	for _, p := range c.Put {
		i := slices.IndexFunc(keep, func(r jit.SecurityRule) bool { return strings.EqualFold(r.Name, p.Name) })
		if i >= 0 && !ours(keep[i]) {
			return jit.Applied{}, jit.Errorf(jit.ECONFLICT, "rule %s is not ours", p.Name)
		}
		if i >= 0 {
			p.Priority = keep[i].Priority
			if !reflect.DeepEqual(keep[i], p) { // as ARM, a rule written as it is is no change
				keep[i] = p
				ap.Updated = append(ap.Updated, p.Name)
			}
			continue
		}
		band := jit.DefaultAllowBand
		if p.Access == jit.AccessDeny {
			band = jit.DefaultDenyBand
		}
		p.Priority = band.Min
		for slices.ContainsFunc(keep, func(r jit.SecurityRule) bool { return r.Priority == p.Priority }) {
			p.Priority++
		}
		keep = append(keep, p)
		ap.Created = append(ap.Created, p.Name)
	}
	slices.SortFunc(keep, func(a, b jit.SecurityRule) int { return a.Priority - b.Priority })
	n.rules, ap.Rules = keep, slices.Clone(keep)
	if ap.Wrote() {
		n.writes++
	}
	if n.lostAnswer {
		n.lostAnswer = false
		return jit.Applied{}, jit.Errorf(jit.EUNAVAILABLE, "connection reset (injected): the write went in")
	}
	return ap, nil
}

// allows reports whether an allow rule of the deployment is in the NSG.
func (n *memNet) allows() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.ContainsFunc(n.rules, func(r jit.SecurityRule) bool { return r.Access == jit.AccessAllow && n.owner.Owns(r) })
}

type domain struct {
	t      *testing.T
	api    *jit.API
	worker *jit.Applier
	rec    *jit.Reconciler
	store  *memstore.Store
	net    *memNet
	q      *recQueue
	clock  *clock
}

var (
	admin    = jit.Principal{ID: "admin", Roles: []string{jit.RoleAdmin}, Address: "203.0.113.7"}
	alice    = jit.Principal{ID: "alice", Roles: []string{jit.RoleRequester}, Address: "203.0.113.7"}
	bob      = jit.Principal{ID: "bob", Roles: []string{jit.RoleApprover}}
	mallory  = jit.Principal{ID: "mallory", Roles: []string{jit.RoleApprover}}
	t0       = time.Date(2026, 12, 4, 9, 0, 0, 0, time.UTC)
	anyPort  = jit.PortRule{Number: 22, Protocol: jit.ProtocolTCP, AllowedSources: []string{"*"}, MaxDuration: 3 * time.Hour}
	approval = &jit.Approval{Required: true, Approvers: []string{"bob"}}
)

func newDomain(t *testing.T, pol *jit.Approval) *domain {
	t.Helper()
	d := &domain{t: t, store: memstore.New(), net: &memNet{owner: jit.Owner{Deployment: jit.DefaultDeployment}}, q: &recQueue{}, clock: &clock{now: t0}}
	d.build(jit.Config{MinDuration: time.Minute, Subscriptions: []string{dsub}, Now: d.clock.Now,
		PendingExpiry: time.Hour, Log: zerolog.Nop()})
	if _, err := d.api.PutPolicy(t.Context(), admin, jit.Policy{Name: "p", Approval: pol, VMs: []jit.VMPolicy{{ID: dvm, Ports: []jit.PortRule{anyPort}}}}, ""); err != nil {
		t.Fatalf("PutPolicy: %v", err)
	}
	d.deliver("") // the lockdown
	return d
}

// build makes the three roles over the domain's fakes, in the order the
// modes build them.
func (d *domain) build(cfg jit.Config) {
	core := jit.NewCore(d.store, d.net, cfg)
	d.api = jit.NewAPI(core, d.q)
	d.worker = jit.NewApplier(core)
	d.rec = jit.NewReconciler(d.api, d.worker)
}

// deliver applies the queued operations of a kind that are due now.
func (d *domain) deliver(kind string) {
	d.t.Helper()
	var later []jit.Operation
	for _, op := range d.q.take(kind) {
		if op.Due.After(d.clock.Now()) {
			later = append(later, op)
			continue
		}
		if err := d.worker.ApplyOperations(d.t.Context(), []jit.Operation{op})[0]; err != nil {
			d.t.Fatalf("%s: %v", op.ID, err)
		}
	}
	_ = d.q.Enqueue(d.t.Context(), later)
}

func (d *domain) request(dur time.Duration) jit.Request {
	d.t.Helper()
	r, err := d.api.Initiate(d.t.Context(), alice, "p", jit.InitiateInput{Justification: "test",
		VMs: []jit.InitiateVM{{ID: dvm, Ports: []jit.InitiatePort{{Number: 22, Duration: dur}}}}})
	if err != nil {
		d.t.Fatalf("Initiate: %v", err)
	}
	return r
}

func (d *domain) status(id string) string {
	d.t.Helper()
	r, err := d.store.GetRequest(d.t.Context(), id)
	if err != nil {
		d.t.Fatal(err)
	}
	return r.Status + "/" + r.Grants[0].Status
}

// TestDecisions: who may decide a pending request, and what each decision
// leaves, on the clock the test moves.
func TestDecisions(t *testing.T) {
	for _, tc := range []struct {
		name   string
		wait   time.Duration // before deciding
		who    jit.Principal
		deny   bool
		code   string // of the decision's error
		status string // after it (and a sweep)
		opens  bool
	}{
		{"approver approves", 0, bob, false, "", jit.RequestActive + "/" + jit.GrantInitiated, true},
		{"approver denies", 0, bob, true, "", jit.RequestDenied + "/" + jit.GrantRevoked, false},
		{"requestor cannot approve their own", 0, jit.Principal{ID: "alice", Roles: []string{jit.RoleApprover, jit.RoleRequester}}, false, jit.EFORBIDDEN, jit.RequestPending + "/" + jit.GrantInitiating, false},
		{"another approver is not named", 0, mallory, false, jit.EFORBIDDEN, jit.RequestPending + "/" + jit.GrantInitiating, false},
		{"too late", time.Hour + time.Second, bob, false, jit.ECONFLICT, jit.RequestExpired + "/" + jit.GrantClosed, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newDomain(t, approval)
			r := d.request(30 * time.Minute)
			d.deliver("")
			if d.net.allows() {
				t.Fatal("a pending request opened a rule")
			}
			d.clock.Add(tc.wait)
			if tc.wait > 0 {
				if _, err := d.rec.Sweep(t.Context()); err != nil {
					t.Fatal(err)
				}
			}
			decide := d.api.Approve
			if tc.deny {
				decide = d.api.Deny
			}
			_, err := decide(t.Context(), tc.who, r.ID, "")
			if jit.ErrorCode(err) != tc.code {
				t.Fatalf("decision: %v, want code %q", err, tc.code)
			}
			d.deliver(jit.OpOpen)
			if got := d.status(r.ID); got != tc.status {
				t.Errorf("status %s, want %s", got, tc.status)
			}
			if d.net.allows() != tc.opens {
				t.Errorf("rule open %v, want %v", d.net.allows(), tc.opens)
			}
		})
	}
}

// TestGrantLife: opens, stale and late operations, extension, and the
// sweep closing what a lost close left open, with time moved by the test.
func TestGrantLife(t *testing.T) {
	d := newDomain(t, nil)
	r := d.request(30 * time.Minute)
	d.deliver(jit.OpOpen)
	if !d.net.allows() || d.status(r.ID) != jit.RequestActive+"/"+jit.GrantInitiated {
		t.Fatalf("after the open: rule %v, status %s", d.net.allows(), d.status(r.ID))
	}
	closes := d.q.take(jit.OpClose)
	if len(closes) != 1 || !closes[0].Due.Equal(t0.Add(30*time.Minute)) {
		t.Fatalf("closes queued %+v, want one at the end", closes)
	}

	// Extended by an hour: the old close comes at the old end and does
	// nothing; the new one, at the new end, closes.
	d.clock.Add(10 * time.Minute)
	if _, err := d.api.Extend(t.Context(), alice, r.ID, jit.ExtendInput{Duration: time.Hour}); err != nil {
		t.Fatalf("Extend: %v", err)
	}
	if _, err := d.api.Extend(t.Context(), alice, r.ID, jit.ExtendInput{Duration: 4 * time.Hour}); jit.ErrorCode(err) != jit.EINVALID {
		t.Fatalf("extending past the port's maximum: %v, want invalid", err)
	}
	d.clock.Add(20 * time.Minute) // the old end
	if err := d.worker.ApplyOperations(t.Context(), []jit.Operation{closes[0]})[0]; err != nil {
		t.Fatal(err)
	}
	if !d.net.allows() {
		t.Fatal("the close scheduled before the extension closed the extended grant")
	}
	// The new close is lost; the sweep after the new end closes anyway.
	if n := len(d.q.take(jit.OpClose)); n != 1 {
		t.Fatalf("%d closes queued by the extension, want 1", n)
	}
	d.clock.Add(40*time.Minute + time.Second)
	if _, err := d.rec.Sweep(t.Context()); err != nil {
		t.Fatal(err)
	}
	if d.net.allows() || d.status(r.ID) != jit.RequestClosed+"/"+jit.GrantClosed {
		t.Fatalf("after the sweep: rule %v, status %s", d.net.allows(), d.status(r.ID))
	}
}

// TestLateOpens: an open delivered after its grant ended, or so close to
// the end that the NSG write would land after it, opens nothing.
func TestLateOpens(t *testing.T) {
	for _, tc := range []struct {
		name  string
		after time.Duration // from the request, of a 5-minute grant
		opens bool
	}{
		{"at once", 0, true},
		{"within the grant", 4 * time.Minute, true},
		{"a second before the end", 5*time.Minute - time.Second, false},
		{"after the end", 6 * time.Minute, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newDomain(t, nil)
			r := d.request(5 * time.Minute)
			d.clock.Add(tc.after)
			d.deliver(jit.OpOpen)
			if d.net.allows() != tc.opens {
				t.Fatalf("rule open %v, want %v (status %s)", d.net.allows(), tc.opens, d.status(r.ID))
			}
		})
	}
}

// TestDomainNotices: with a notifier, every decision and every open and
// close is delivered from the store, in the order they happened, each once.
func TestDomainNotices(t *testing.T) {
	d := newDomain(t, approval)
	got := &notices{}
	d.build(jit.Config{MinDuration: time.Minute, Subscriptions: []string{dsub}, Now: d.clock.Now,
		Notifier: got, Go: func(func(context.Context)) {}, Log: zerolog.Nop()})
	r := d.request(30 * time.Minute)
	d.clock.Add(time.Second)
	if _, err := d.api.Approve(t.Context(), bob, r.ID, "ok"); err != nil {
		t.Fatal(err)
	}
	d.clock.Add(time.Second)
	d.deliver(jit.OpOpen)
	d.clock.Add(time.Second)
	if _, err := d.api.Revoke(t.Context(), alice, r.ID); err != nil {
		t.Fatal(err)
	}
	d.clock.Add(time.Second)
	d.deliver(jit.OpClose)
	for range 2 {
		if _, err := d.api.DeliverNotices(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{jit.EventPending, jit.EventApproved, jit.EventOpened, jit.EventRevoked, jit.EventClosed}
	if !slices.Equal(got.events(), want) {
		t.Fatalf("delivered %v, want %v", got.events(), want)
	}
}

type notices struct {
	mu  sync.Mutex
	got []jit.Notification
}

func (n *notices) Deliver(_ context.Context, x jit.Notification) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.got = append(n.got, x)
	return nil
}

func (n *notices) events() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []string
	for _, x := range n.got {
		out = append(out, x.Event)
	}
	return out
}

// TestUnrecordedOpens: a rule written by a worker that never heard back
// (it died while ARM ran the write) is in the NSG though its open is not
// recorded. The sweep finds it and records it open while the grant lives;
// the close that takes it out after the grant's end audits the open too.
// Either way the trail has the open of every rule that was in the NSG.
func TestUnrecordedOpens(t *testing.T) {
	for _, tc := range []struct {
		name string
		then func(d *domain, r jit.Request)
	}{
		{"found by the sweep while the grant lives", func(d *domain, r jit.Request) {
			if _, err := d.rec.Reconcile(d.t.Context()); err != nil {
				d.t.Fatal(err)
			}
			if got := d.status(r.ID); got != jit.RequestActive+"/"+jit.GrantInitiated {
				d.t.Fatalf("after the sweep: %s, want the grant recorded open", got)
			}
		}},
		{"closed after the grant ended", func(d *domain, r jit.Request) {
			d.clock.Add(6 * time.Minute)
			d.deliver(jit.OpOpen) // delivered again, after the end: a close
			if d.net.allows() {
				d.t.Fatal("the rule is still in the NSG after the grant's end")
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newDomain(t, nil)
			r := d.request(5 * time.Minute)
			d.net.lostAnswer = true
			for _, op := range d.q.take(jit.OpOpen) {
				if err := d.worker.ApplyOperations(t.Context(), []jit.Operation{op})[0]; err == nil {
					t.Fatal("the open heard back, want the injected error")
				}
				_ = d.q.Enqueue(t.Context(), []jit.Operation{op}) // redelivered later
			}
			if !d.net.allows() {
				t.Fatal("the write did not go in")
			}
			if got := d.status(r.ID); got != jit.RequestActive+"/"+jit.GrantInitiating {
				t.Fatalf("before: %s, want the open unrecorded", got)
			}
			tc.then(d, r)
			var opens []string
			_ = d.store.ScanAudit(t.Context(), jit.AuditFilter{}, func(ev jit.AuditEvent) error {
				if ev.Action == jit.AuditOpen && ev.Request == r.ID && ev.Result == jit.ResultSuccess {
					opens = append(opens, ev.ID)
				}
				return nil
			})
			if len(opens) != 1 {
				t.Fatalf("open events of the request: %v, want one", opens)
			}
		})
	}
}
