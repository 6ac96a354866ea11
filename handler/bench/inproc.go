package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"jitaccess/handler/armsim"
	"jitaccess/handler/azurenet"
	"jitaccess/handler/jit"
	"jitaccess/handler/localmode"
)

// stack is local mode as `handler local` builds it (localmode: bbolt store,
// local queue, azurenet on the ARM simulator), with the simulator on a
// listener of its own, so that its call counters can be read.
type stack struct {
	sim   *armsim.Server
	store jit.Store
	svc   *jit.API
	rec   *jit.Reconciler
	close func()
}

func (b *bench) newStack(spec estateSpec) (*stack, error) {
	path := filepath.Join(b.tmp, fmt.Sprintf("estate-inproc-%d.json", spec.VMs))
	if err := spec.write(path); err != nil {
		return nil, err
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	sim := armsim.New(armsim.Options{Empty: true})
	if err := sim.Load(bytes.NewReader(data)); err != nil {
		return nil, err
	}
	srv := httptest.NewServer(sim)
	net, err := localmode.SimulatorNetwork(azurenet.Config{Owner: jit.Owner{Deployment: jit.DefaultDeployment}, Subscriptions: []string{benchSub}}, srv.URL, nil)
	if err != nil {
		srv.Close()
		return nil, err
	}
	dir, err := os.MkdirTemp(b.tmp, "inproc-")
	if err != nil {
		srv.Close()
		return nil, err
	}
	app, err := localmode.Open(localmode.Config{Path: filepath.Join(dir, "jitaccess.db"), Network: net,
		Service: jit.Config{MinDuration: time.Second, Subscriptions: []string{benchSub},
			Limits: jit.Limits{MaxOpenRequests: 10000, WritesPerMinute: -1}, Log: zerolog.Nop()}})
	if err != nil {
		srv.Close()
		return nil, err
	}
	if err := app.Start(context.Background()); err != nil {
		srv.Close()
		_ = app.Close(context.Background())
		return nil, err
	}
	return &stack{sim: sim, store: app.Store, svc: app.API, rec: app.Reconciler, close: func() {
		shutdown, done := context.WithTimeout(context.Background(), 10*time.Second)
		defer done()
		_ = app.Close(shutdown)
		srv.Close()
	}}, nil
}

var benchAdmin = jit.Principal{ID: "bench", Name: "bench", Roles: []string{jit.RoleAdmin}, Address: "203.0.113.7"}

// perGrant divides each counter by n, keeping two decimals in the notes.
func perGrant(c armsim.CallStats, n int) string {
	return fmt.Sprintf("%s per grant", calls(scale(c.ByKind, n)))
}

func scale(m map[string]int, n int) map[string]int {
	out := map[string]int{}
	for k, v := range m {
		out[k] = (v + n/2) / max(n, 1)
	}
	return out
}

// armCalls counts ARM calls by kind for each step of a grant's life, for a
// policy change, for a sweep and for a full inventory.
func (b *bench) armCalls(ctx context.Context) ([]result, error) {
	const vms = 100
	// Every VM has a NIC NSG and sits in a subnet with an NSG: 2 NSGs per grant.
	spec := estateSpec{VMs: vms, VMsPerNet: 50, NICNSG: true, SubnetNSG: true}
	st, err := b.newStack(spec)
	if err != nil {
		return nil, err
	}
	defer st.close()
	var rs []result
	stepStart := time.Now()
	row := func(name, target string, n int, ok bool, notes string) {
		c := st.sim.Calls()
		rs = append(rs, result{Scenario: name, Target: target, Requests: n, ARMCalls: c.ByKind, Verdict: verdict(ok), Notes: notes})
		st.sim.ResetCalls()
		logf("  %s: %s", name, time.Since(stepStart).Round(time.Millisecond))
		stepStart = time.Now()
	}

	pol := jit.Policy{Name: "bench"}
	for i := 0; i < vms; i++ {
		pol.VMs = append(pol.VMs, jit.VMPolicy{ID: vmID(i), Ports: []jit.PortRule{{Number: 22, Protocol: jit.ProtocolTCP,
			AllowedSources: []string{"*"}, MaxDuration: 3 * time.Hour}}})
	}
	// The NSGs in front of the VMs: every VM has its own, and the VMs of a
	// subnet share one.
	nsgs := map[string]bool{}
	for i := range vms {
		for _, n := range spec.vmNSGs(i) {
			nsgs[strings.ToLower(n)] = true
		}
	}
	// A PUT answers at once and queues the lockdown, one NSG write each:
	// the calls are counted once it has run on every NSG.
	st.sim.ResetCalls()
	if err := st.putPolicyInForce(ctx, pol); err != nil {
		return nil, fmt.Errorf("creating the policy: %w", err)
	}
	c := st.sim.Calls()
	writes := c.ByKind["PUT networkSecurityGroups"]
	row("arm:policy-new", "deny rules written when a policy changes: 1 NSG write per NSG in front of its VMs, never more than 1 per VM and NSG", vms,
		writes == len(nsgs) && c.Writes == writes, fmt.Sprintf("policy of %d VMs × 2 NSGs (%d NSGs): %d NSG writes carrying the deny rules, %d reads", vms, len(nsgs), writes, c.Reads))

	if err := st.putPolicyInForce(ctx, pol); err != nil {
		return nil, fmt.Errorf("re-writing the policy: %w", err)
	}
	c = st.sim.Calls()
	row("arm:policy-same", "deny rules written only when a policy changes: 0 writes for an unchanged policy", vms,
		c.Writes == 0, fmt.Sprintf("unchanged policy PUT again: %d writes, %d reads (each NSG read to confirm its lockdown)", c.Writes, c.Reads))

	// Open: one grant per VM, each on 2 NSGs.
	var ids []string
	for i := 0; i < vms; i++ {
		r, err := st.svc.Initiate(ctx, benchAdmin, "bench", jit.InitiateInput{VMs: []jit.InitiateVM{{ID: vmID(i),
			Ports: []jit.InitiatePort{{Number: 22, Duration: time.Hour, Sources: []string{"203.0.113.7"}}}}}})
		if err != nil {
			return nil, fmt.Errorf("initiate: %w", err)
		}
		ids = append(ids, r.ID)
	}
	if err := waitRequests(ctx, st.svc, ids, func(r jit.Request) bool { return r.Grants[0].Status == jit.GrantInitiated }); err != nil {
		return nil, err
	}
	// One NSG write serves every grant due on the NSG when it is made (ARM
	// counts a write, whatever rules it carries): at most one per grant and
	// NSG, at least one per NSG.
	c = st.sim.Calls()
	open := c.ByKind["PUT networkSecurityGroups"]
	row("arm:open", "at most 1 write per grant and NSG to open (one NSG write may serve several grants); ≤ 2 reads per grant", vms,
		open <= 2*vms && open >= len(nsgs) && c.Writes == open && c.Reads <= 2*vms,
		fmt.Sprintf("%d grants × 2 NSGs: %d NSG writes, %d reads; %s", vms, open, c.Reads, perGrant(c, vms)))

	// Close: revoke every grant.
	for _, id := range ids {
		if _, err := st.svc.Revoke(ctx, benchAdmin, id); err != nil {
			return nil, fmt.Errorf("revoke: %w", err)
		}
	}
	if err := waitRequests(ctx, st.svc, ids, func(r jit.Request) bool { return r.Status == jit.RequestClosed }); err != nil {
		return nil, err
	}
	c = st.sim.Calls()
	closes := c.ByKind["PUT networkSecurityGroups"]
	row("arm:close", "at most 1 write per grant and NSG to close (one NSG write may serve several grants)", vms,
		closes <= 2*vms && closes >= len(nsgs) && c.Writes == closes,
		fmt.Sprintf("%d grants × 2 NSGs revoked: %d NSG writes, %d reads; %s", vms, closes, c.Reads, perGrant(c, vms)))

	// A sweep with nothing to do.
	t0 := time.Now()
	if _, err := st.rec.Reconcile(ctx); err != nil {
		return nil, fmt.Errorf("reconcile: %w", err)
	}
	took := time.Since(t0)
	c = st.sim.Calls()
	row("arm:sweep", "the sweeper reads per list page, writes nothing when nothing drifted", 1,
		c.Writes == 0 && c.ByKind["GET networkSecurityGroups"] == 0, fmt.Sprintf("one Reconcile over %d VMs, %d NSGs: %s", vms, vms+2, took.Round(time.Millisecond)))

	// Inventory of a large estate.
	big := estateSpec{VMs: b.cfg.estateVMs, VMsPerNet: 250, SubnetNSG: true, NICNSG: true, NICNSGEvery: 10}
	st2, err := b.newStack(big)
	if err != nil {
		return nil, err
	}
	defer st2.close()
	st2.sim.ResetCalls()
	t0 = time.Now()
	list, err := st2.svc.ListVMs(ctx, benchAdmin)
	if err != nil {
		return nil, err
	}
	took = time.Since(t0)
	c = st2.sim.Calls()
	pages := (b.cfg.estateVMs + 999) / 1000
	rs = append(rs, result{Scenario: "arm:inventory", Target: "a full inventory costs list calls per page, not calls per VM", Requests: len(list),
		ARMCalls: c.ByKind, Verdict: verdict(c.Reads <= 3*pages+3), P50ms: ms(took), Maxms: ms(took),
		Notes: fmt.Sprintf("ListVMs over %d VMs: %d reads (pages of 1,000), %s in process", len(list), c.Reads, took.Round(time.Millisecond))})
	return rs, nil
}

// putPolicyInForce puts pol and waits until its queued lockdown has run
// on every NSG in front of its VMs (each NSG seen since the PUT) and its
// status reports the lockdown in force, or 60 s. The status alone can say
// so earlier: an unchanged policy is in force as the NSGs were last seen,
// before its queued lockdown confirms it.
func (st *stack) putPolicyInForce(ctx context.Context, pol jit.Policy) error {
	put, err := st.svc.PutPolicy(ctx, benchAdmin, pol, "")
	if err != nil {
		return err
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		stored, err := st.svc.GetPolicy(ctx, benchAdmin, pol.Name)
		if err != nil {
			return err
		}
		sts, err := st.svc.PolicyStatuses(ctx, []jit.Policy{stored})
		if err != nil {
			return err
		}
		states, err := st.store.ListNSGStates(ctx)
		if err != nil {
			return err
		}
		seen := map[string]bool{}
		for _, s := range states {
			if !s.SeenAt.Before(put.UpdatedAt) {
				seen[strings.ToLower(s.ID)] = true
			}
		}
		ran := true
		for _, vm := range put.VMs {
			for _, n := range vm.NSGs {
				ran = ran && seen[strings.ToLower(n.ID)]
			}
		}
		switch state := sts[0].ProvisioningState; {
		case ran && state == jit.PolicySucceeded:
			return nil
		case state == jit.PolicyFailed || time.Now().After(deadline):
			return fmt.Errorf("policy %s is %s, its lockdown not run on every NSG", pol.Name, state)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitRequests waits until done holds for every request, or 60 s.
func waitRequests(ctx context.Context, svc *jit.API, ids []string, done func(jit.Request) bool) error {
	deadline := time.Now().Add(60 * time.Second)
	for _, id := range ids {
		for {
			r, err := svc.GetRequest(ctx, benchAdmin, id)
			if err != nil {
				return err
			}
			if done(r) {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("request %s did not reach the awaited state within 60 s (status %s)", id, r.Status)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return nil
}
