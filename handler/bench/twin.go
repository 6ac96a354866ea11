package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"jitaccess/handler/armsim"
	"jitaccess/handler/jit"
)

// The two-mode suite: each scenario runs in local mode and in Functions
// mode, at ARM latency 0 (the simulator answers at once, no limits) and at
// 2 s (ARM as Azure runs it: one operation at a time per NSG, the
// subscription's write budget). Every figure is read from ARM (the
// simulator, as an observer), not from what the service says of itself.

// patience is how long a scenario waits on ARM before it reports what is
// still missing: shorter at latency 0, where a minute is already far
// beyond anything a healthy run needs.
func (b *bench) patience(lat time.Duration) time.Duration {
	if lat == 0 {
		return min(b.cfg.armPatience, 45*time.Second)
	}
	return b.cfg.armPatience
}

// watchEvery is how often the bench lists the NSGs while it waits for
// rules: the resolution of the figures that come from watching. Listing
// 500 NSGs takes the simulator's CPU, so less often where writes take
// seconds anyway.
func watchEvery(lat time.Duration) time.Duration {
	if lat == 0 {
		return 250 * time.Millisecond
	}
	return 500 * time.Millisecond
}

// Azure's own bounds on what a scenario may take.
const (
	httpCutoff      = 230 * time.Second // App Service's front end ends an HTTP request
	functionTimeout = 5 * time.Minute   // host.json's functionTimeout
)

// twinRow is one scenario at one ARM latency, in both modes.
type twinRow struct {
	Scenario  string        `json:"scenario"`
	Latency   time.Duration `json:"armLatencyNs"`
	Bound     string        `json:"bound"`
	Local     *cell         `json:"local,omitempty"`
	Functions *cell         `json:"functions,omitempty"`
}

// cell is one scenario's outcome in one mode.
type cell struct {
	Summary string             `json:"summary"`
	Figures map[string]float64 `json:"figures"`
	Notes   string             `json:"notes"`
	// Azure says why the scenario could not work in Azure ("" if it could).
	Azure string `json:"wouldFailInAzure,omitempty"`
	Err   string `json:"error,omitempty"`
}

func (c *cell) set(name string, v float64) {
	if c.Figures == nil {
		c.Figures = map[string]float64{}
	}
	c.Figures[name] = v
}

// twinScenario prepares a deployment (at ARM latency 0) and measures it at
// the row's latency.
type twinScenario struct {
	name  string
	spec  func(*bench) estateSpec
	bound func(*bench, time.Duration) string
	// armBound: the scenario waits on ARM, so at a latency above 0 it runs
	// beside the other such scenarios (each with its own simulator and
	// budget); the others run alone.
	armBound bool
	// idle: the scenario mostly waits (on the HTTP cutoff): the scenarios
	// that are not ARM-bound run beside it.
	idle bool
	run  func(b *bench, ctx context.Context, d deployment, latency time.Duration) *cell
}

var twinScenarios = []twinScenario{
	{"enable", enableSpec, enableBound, true, true, (*bench).twinEnable},
	{"dense", denseSpec, denseBound, true, true, (*bench).twinDense},
	{"shared-nsg", sharedSpec, sharedBound, true, false, (*bench).twinShared},
	{"wide", wideSpec, wideBound, true, false, (*bench).twinWide},
	{"close", wideSpec, closeBound, true, false, (*bench).twinClose},
	{"initiate", wideSpec, initiateBound, false, false, (*bench).twinInitiate},
}

// runTwin runs the suite: latency 0 first, one deployment at a time; then
// each latency above 0, the ARM-bound scenarios of both modes at once (each
// with its own simulator and budget), then the rest one at a time, beside
// the idle ones still waiting out their bound.
func (b *bench) runTwin(ctx context.Context, want map[string]bool) []twinRow {
	var rows []twinRow
	for _, lat := range b.cfg.latencies {
		var mu sync.Mutex
		var wg, idle sync.WaitGroup
		var later []func()
		for _, s := range twinScenarios {
			if len(want) > 0 && !want[s.name] {
				continue
			}
			row := &twinRow{Scenario: s.name, Latency: lat, Bound: s.bound(b, lat)}
			mu.Lock()
			rows = append(rows, twinRow{})
			i := len(rows) - 1
			mu.Unlock()
			for _, mode := range b.cfg.modes {
				job := func() {
					t0 := time.Now()
					logf("%s, %s mode, ARM latency %s ...", s.name, mode, lat)
					c := b.runCell(ctx, s, mode, lat)
					logf("%s, %s mode, ARM latency %s: %s (%s)", s.name, mode, lat, c.Summary, time.Since(t0).Round(time.Second))
					mu.Lock()
					if mode == "local" {
						row.Local = c
					} else {
						row.Functions = c
					}
					rows[i] = *row
					mu.Unlock()
				}
				switch {
				case lat > 0 && s.idle:
					idle.Add(1)
					go func() { defer idle.Done(); job() }()
				case lat > 0 && s.armBound:
					wg.Add(1)
					go func() { defer wg.Done(); job() }()
				case lat > 0:
					later = append(later, job)
				default:
					job()
				}
			}
			mu.Lock()
			rows[i] = *row
			mu.Unlock()
		}
		wg.Wait()
		for _, job := range later {
			job()
		}
		idle.Wait()
		if ctx.Err() != nil {
			break
		}
	}
	return rows
}

// runCell starts a deployment of the scenario's estate in mode, prepares it
// at ARM latency 0, switches the simulator to lat and measures.
func (b *bench) runCell(ctx context.Context, s twinScenario, mode string, lat time.Duration) *cell {
	spec := s.spec(b)
	estate, err := b.estateFile(spec)
	if err != nil {
		return &cell{Summary: "error", Err: err.Error()}
	}
	var d deployment
	if mode == "local" {
		d, err = b.startLocal(estate, lat)
	} else {
		d, err = b.startFunctions(estate, lat)
	}
	if err != nil {
		return &cell{Summary: "error", Err: err.Error()}
	}
	defer d.Close()
	// Prepared without ARM's limits; the scenario turns them on to measure.
	if err := d.Limits(ctx, false); err != nil {
		return failed(err)
	}
	c := s.run(b, ctx, d, lat)
	if c.Err != "" && c.Summary == "" {
		c.Summary = "error"
	}
	return c
}

var (
	estateMu      sync.Mutex
	estateWritten = map[string]bool{}
)

// estateFile writes spec's estate once per bench run; deployments that run
// at the same time read the same file.
func (b *bench) estateFile(spec estateSpec) (string, error) {
	estateMu.Lock()
	defer estateMu.Unlock()
	path := fmt.Sprintf("%s/estate-%d-%d-%t-%t-%d-%d.json", b.tmp, spec.VMs, spec.VMsPerNet, spec.SubnetNSG, spec.NICNSG, spec.NICNSGEvery, spec.NICNSGFirst)
	if estateWritten[path] {
		return path, nil
	}
	if err := spec.write(path); err != nil {
		return "", err
	}
	estateWritten[path] = true
	return path, nil
}

func failed(err error) *cell { return &cell{Summary: "error", Err: err.Error()} }

// --- estates and bounds ----------------------------------------------------------

// enableSpec: 1,000 VMs behind 10 subnet NSGs (100 each); the first 20
// also have their own NIC NSG.
func enableSpec(*bench) estateSpec {
	return estateSpec{VMs: 1000, VMsPerNet: 100, SubnetNSG: true, NICNSGFirst: 20}
}

// denseSpec: 1,000 VMs behind one NSG (on all four subnets).
func denseSpec(*bench) estateSpec {
	return estateSpec{VMs: 1000, VMsPerNet: 250, SubnetNSG: true, OneSubnetNSG: true}
}

// sharedSpec: 50 VMs behind one subnet NSG (two grants per VM).
func sharedSpec(*bench) estateSpec {
	return estateSpec{VMs: 50, VMsPerNet: 50, SubnetNSG: true}
}

// wideSpec: 500 VMs, each with its own NIC NSG and no subnet NSG.
func wideSpec(*bench) estateSpec {
	return estateSpec{VMs: 500, VMsPerNet: 250, NICNSG: true}
}

// budgetBound is the least time `writes` ARM writes can take under the
// subscription's budget: those beyond the burst at the refill rate, plus
// one write's latency. ARM's documented bucket: 200 tokens, 10 a second.
func budgetBound(writes int, lat time.Duration) time.Duration {
	b := armsim.DefaultWriteBucket
	w := time.Duration(float64(max(0, writes-b.Size))/b.PerSecond*float64(time.Second)) + lat
	return max(w, readBound(writes, lat))
}

func enableBound(_ *bench, lat time.Duration) string {
	// 10 subnet NSGs and 20 NIC NSGs: 30 NSGs, written in parallel, one
	// write each at best.
	return fmt.Sprintf("target: answer ≤ 1 s; all locked ≤ 3 × %s + 2 s; ≤ 2 writes per NSG (30 NSGs, one write each at best, in parallel, within the budget's burst)", lat)
}

func denseBound(_ *bench, lat time.Duration) string {
	return fmt.Sprintf("target: every VM protected with ≤ 10 JIT deny rules in the one NSG; locked ≤ 3 × %s + 2 s; answer ≤ 1 s", lat)
}

func sharedBound(_ *bench, lat time.Duration) string {
	return fmt.Sprintf("target: all open ≤ 3 × %s after acceptance; ≤ 5 writes to the NSG (one write at a time per NSG)", lat)
}

// readBound is the least time the reads of `writes` writes take under the
// read budget: each write needs the NSG read before it (its etag) and one
// poll of its operation at least; 250 tokens, 25 a second.
func readBound(writes int, lat time.Duration) time.Duration {
	b := armsim.DefaultReadBucket
	return time.Duration(float64(max(0, 2*writes-b.Size))/b.PerSecond*float64(time.Second)) + lat
}

func wideBound(_ *bench, lat time.Duration) string {
	if lat == 0 {
		return "no ARM bound at latency 0; target: no 429 provoked"
	}
	return fmt.Sprintf("target: all open ≤ 1.2 × %s, no 429 provoked. Bound %s: the larger of 500 writes (one per NSG) − 200 burst at 10/s + %s, and their 1,000 reads (a read and a poll each) − 250 burst at 25/s + %s = %s",
		budgetBound(500, lat).Round(time.Second), budgetBound(500, lat).Round(time.Second), lat, lat, readBound(500, lat).Round(time.Second))
}

func closeBound(_ *bench, lat time.Duration) string {
	return fmt.Sprintf("target: every rule gone ≤ %s + 2 s after the common end (1,000 grants on 500 NSGs ending in the same second)", lat)
}

func initiateBound(b *bench, lat time.Duration) string {
	return fmt.Sprintf("no ARM call on the request path; offered %.0f/s for %s", b.cfg.initiateRate, b.cfg.twinInitiate)
}

// --- what ARM holds --------------------------------------------------------------

// armNSG is the part of an NSG the bench reads.
type armNSG struct {
	ID         string `json:"id"`
	Properties struct {
		ProvisioningState string    `json:"provisioningState"`
		SecurityRules     []armRule `json:"securityRules"`
	} `json:"properties"`
}

// settled reports whether no operation is running on the NSG: only then
// do its rules say what is in force (ARM answers Updating until the
// operation ends).
func (n armNSG) settled() bool {
	return !strings.EqualFold(n.Properties.ProvisioningState, "Updating")
}

type armRule struct {
	Name       string `json:"name"`
	Properties struct {
		Access                     string   `json:"access"`
		Direction                  string   `json:"direction"`
		DestinationAddressPrefix   string   `json:"destinationAddressPrefix"`
		DestinationAddressPrefixes []string `json:"destinationAddressPrefixes"`
		DestinationPortRange       string   `json:"destinationPortRange"`
		DestinationPortRanges      []string `json:"destinationPortRanges"`
	} `json:"properties"`
}

// listNSGs reads every NSG of the bench subscription, page by page.
func listNSGs(ctx context.Context, d deployment) ([]armNSG, error) {
	var out []armNSG
	path := "/subscriptions/" + benchSub + "/providers/Microsoft.Network/networkSecurityGroups"
	for path != "" {
		var page struct {
			Value    []armNSG `json:"value"`
			NextLink string   `json:"nextLink"`
		}
		if err := d.ARM(ctx, path, &page); err != nil {
			return nil, err
		}
		out = append(out, page.Value...)
		path = ""
		if i := strings.Index(page.NextLink, "/subscriptions/"); i >= 0 {
			path = page.NextLink[i:]
		}
	}
	return out, nil
}

// deniesSSH reports whether r is one of JIT's inbound deny rules that
// covers port 22 for ip.
func deniesSSH(r armRule, ip netip.Addr) bool {
	p := r.Properties
	if !strings.HasPrefix(r.Name, "jit-") || !strings.EqualFold(p.Access, "Deny") || !strings.EqualFold(p.Direction, "Inbound") {
		return false
	}
	return coversPort(append([]string{p.DestinationPortRange}, p.DestinationPortRanges...), 22) &&
		coversAddr(append([]string{p.DestinationAddressPrefix}, p.DestinationAddressPrefixes...), ip)
}

func coversPort(ranges []string, port int) bool {
	for _, r := range ranges {
		if r == "*" {
			return true
		}
		lo, hi, isRange := strings.Cut(r, "-")
		if !isRange {
			hi = lo
		}
		a, err1 := strconv.Atoi(lo)
		b, err2 := strconv.Atoi(hi)
		if err1 == nil && err2 == nil && a <= port && port <= b {
			return true
		}
	}
	return false
}

func coversAddr(prefixes []string, ip netip.Addr) bool {
	for _, v := range prefixes {
		if v == "*" {
			return true
		}
		if p, err := netip.ParsePrefix(v); err == nil && p.Contains(ip) {
			return true
		}
		if a, err := netip.ParseAddr(v); err == nil && a == ip {
			return true
		}
	}
	return false
}

// protectedVMs counts the VMs of spec that every NSG guarding them denies
// SSH to, as ARM holds the rules now.
func protectedVMs(ctx context.Context, d deployment, spec estateSpec) (int, error) {
	nsgs, err := listNSGs(ctx, d)
	if err != nil {
		return 0, err
	}
	byID := map[string][]armRule{}
	for _, n := range nsgs {
		if n.settled() {
			byID[strings.ToLower(n.ID)] = n.Properties.SecurityRules
		}
	}
	n := 0
	for i := range spec.VMs {
		ip := spec.vmIP(i)
		ok := true
		for _, nsg := range spec.vmNSGs(i) {
			denied := false
			for _, r := range byID[strings.ToLower(nsg)] {
				if deniesSSH(r, ip) {
					denied = true
					break
				}
			}
			ok = ok && denied
		}
		if ok {
			n++
		}
	}
	return n, nil
}

// ruleView is what ARM holds of JIT's allow rules: "nsg|rule" of each, and
// the NSGs with an operation still running, whose rules are not in force
// yet (or not gone yet).
type ruleView struct {
	present  map[string]bool
	updating map[string]bool
}

// open reports whether the rule "nsg|rule" is in ARM and in force.
func (v ruleView) open(k string) bool {
	nsg, _, _ := strings.Cut(k, "|")
	return v.present[k] && !v.updating[nsg]
}

// gone reports whether the rule is no longer in ARM, for good.
func (v ruleView) gone(k string) bool {
	nsg, _, _ := strings.Cut(k, "|")
	return !v.present[k] && !v.updating[nsg]
}

// allowRules reads every JIT allow rule in ARM.
func allowRules(ctx context.Context, d deployment) (ruleView, error) {
	nsgs, err := listNSGs(ctx, d)
	if err != nil {
		return ruleView{}, err
	}
	v := ruleView{present: map[string]bool{}, updating: map[string]bool{}}
	for _, n := range nsgs {
		id := strings.ToLower(n.ID)
		if !n.settled() {
			v.updating[id] = true
		}
		for _, r := range n.Properties.SecurityRules {
			if strings.HasPrefix(r.Name, "jit-") && strings.EqualFold(r.Properties.Access, "Allow") {
				v.present[id+"|"+strings.ToLower(r.Name)] = true
			}
		}
	}
	return v, nil
}

// vmStates counts GET /api/v1/vms's states, and the VMs it calls
// Configured.
func vmStates(ctx context.Context, d deployment) (map[string]int, map[string]bool, error) {
	vms, err := allPages[struct {
		ID    string `json:"id"`
		State string `json:"state"`
	}](ctx, getter(d.API), "/api/v1/vms?limit=1000")
	if err != nil {
		return nil, nil, err
	}
	states, configured := map[string]int{}, map[string]bool{}
	for _, v := range vms {
		states[v.State]++
		if v.State == "Configured" {
			configured[strings.ToLower(v.ID)] = true
		}
	}
	return states, configured, nil
}

// unprotectedConfigured counts the VMs the API calls Configured that ARM
// does not deny SSH to: what the VM page would get wrong.
func unprotectedConfigured(ctx context.Context, d deployment, spec estateSpec, configured map[string]bool) (int, error) {
	nsgs, err := listNSGs(ctx, d)
	if err != nil {
		return 0, err
	}
	byID := map[string][]armRule{}
	for _, n := range nsgs {
		byID[strings.ToLower(n.ID)] = n.Properties.SecurityRules
	}
	for _, n := range nsgs {
		if !n.settled() {
			delete(byID, strings.ToLower(n.ID))
		}
	}
	wrong := 0
	for i := range spec.VMs {
		if !configured[strings.ToLower(vmID(i))] {
			continue
		}
		for _, nsg := range spec.vmNSGs(i) {
			denied := false
			for _, r := range byID[strings.ToLower(nsg)] {
				denied = denied || deniesSSH(r, spec.vmIP(i))
			}
			if !denied {
				wrong++
				break
			}
		}
	}
	return wrong, nil
}

// armDelta is what the simulator counted between two readings.
// Writes are the writes ARM accepted (operations started); Attempts every
// write sent, refused ones included.
type armDelta struct {
	Writes, Attempts, Reads, Polls  int
	Throttled, ThrottledReads, Busy int
	PutNSG, PutRule, DeleteRule     int
}

func deltaOf(before, after armsim.CallStats) armDelta {
	return armDelta{
		Writes: after.Operations - before.Operations, Attempts: after.Writes - before.Writes,
		Reads: after.Reads - before.Reads, Polls: after.Polls - before.Polls,
		Throttled: after.Throttled - before.Throttled, ThrottledReads: after.ThrottledReads - before.ThrottledReads, Busy: after.Busy - before.Busy,
		PutNSG:     after.ByKind["PUT networkSecurityGroups"] - before.ByKind["PUT networkSecurityGroups"],
		PutRule:    after.ByKind["PUT securityRules"] - before.ByKind["PUT securityRules"],
		DeleteRule: after.ByKind["DELETE securityRules"] - before.ByKind["DELETE securityRules"],
	}
}

func (a armDelta) add(o armDelta) armDelta {
	return armDelta{a.Writes + o.Writes, a.Attempts + o.Attempts, a.Reads + o.Reads, a.Polls + o.Polls,
		a.Throttled + o.Throttled, a.ThrottledReads + o.ThrottledReads, a.Busy + o.Busy,
		a.PutNSG + o.PutNSG, a.PutRule + o.PutRule, a.DeleteRule + o.DeleteRule}
}

// refused is every call ARM refused: throttled, or a write to a busy NSG.
func (a armDelta) refused() int { return a.Throttled + a.Busy }

func (a armDelta) String() string {
	return fmt.Sprintf("ARM writes accepted %d of %d sent (NSG PUT %d, rule PUT %d, rule DELETE %d sent), reads %d and polls %d sent, 429 throttled %d (%d of them reads or polls), refused busy %d",
		a.Writes, a.Attempts, a.PutNSG, a.PutRule, a.DeleteRule, a.Reads, a.Polls, a.Throttled, a.ThrottledReads, a.Busy)
}

func (c *cell) setARM(a armDelta) {
	c.set("armWrites", float64(a.Writes))
	c.set("armWriteAttempts", float64(a.Attempts))
	c.set("armReads", float64(a.Reads))
	c.set("armPolls", float64(a.Polls))
	c.set("throttled429", float64(a.Throttled))
	c.set("busy", float64(a.Busy))
}

// stats reads the simulator's counters; a failure is kept in the cell, as
// the deltas built on it would be wrong.
func stats(ctx context.Context, d deployment, c *cell) armsim.CallStats {
	st, err := d.ARMStats(ctx)
	if err != nil {
		c.Err = cmpOr(errorf(c.Err), fmt.Errorf("reading the simulator's counters: %w", err)).Error()
		return armsim.CallStats{ByKind: map[string]int{}}
	}
	return st
}

// enablePolicies creates policies of `size` VMs each over VMs 0..n-1,
// `parallel` PUTs at a time, and returns the policy of each VM.
func enablePolicies(ctx context.Context, d deployment, n, size, parallel int) ([]string, error) {
	owner := make([]string, n)
	var wg sync.WaitGroup
	errs := make(chan error, n/size+1)
	sem := make(chan struct{}, parallel)
	for g := 0; g*size < n; g++ {
		var ids []string
		for i := g * size; i < min((g+1)*size, n); i++ {
			ids = append(ids, vmID(i))
			owner[i] = policyName(g)
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			if _, err := d.API(ctx, "PUT", "/api/v1/policies/"+policyName(g), policyBody(ids), nil); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	return owner, <-errs
}

// grantBody asks for SSH to vm from source until end (or for duration).
func grantBody(vm, source, duration string, end time.Time) map[string]any {
	port := map[string]any{"number": 22, "allowedSourceAddressPrefix": source}
	if duration != "" {
		port["duration"] = duration
	} else {
		port["endTimeUtc"] = end.UTC().Format(time.RFC3339Nano)
	}
	return map[string]any{"virtualMachines": []any{map[string]any{"id": vm, "ports": []any{port}}}, "justification": "bench"}
}

func source(i int) string { return fmt.Sprintf("198.18.%d.%d", i/250, 1+i%250) }

// initiateAll sends n grants (VM i%vms, source i) with `parallel` at a
// time and returns each one's rule and acceptance time.
func initiateAll(ctx context.Context, d deployment, owner []string, n, parallel int, duration string, end time.Time) (map[string]time.Time, time.Time, error) {
	vms := len(owner)
	var mu sync.Mutex
	accepted := map[string]time.Time{}
	var first time.Time
	var firstErr error
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			vm := i % vms
			var out requestOut
			_, err := d.API(ctx, "POST", "/api/v1/policies/"+owner[vm]+"/initiate", grantBody(vmID(vm), source(i), duration, end), &out)
			now := time.Now()
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				firstErr = cmpOr(firstErr, err)
				return
			}
			if first.IsZero() {
				first = now
			}
			accepted[strings.ToLower(nsgID(nicNSGName(vm)))+"|"+strings.ToLower(jit.RuleName(out.ID, 0))] = now
		}()
	}
	wg.Wait()
	return accepted, first, firstErr
}

// --- scenarios -------------------------------------------------------------------

// enableWide enables JIT on the wide estate's VMs, 100 to a policy; on
// failure it returns the cell that says so.
func enableWide(ctx context.Context, d deployment, spec estateSpec) ([]string, *cell) {
	owner, err := enablePolicies(ctx, d, spec.VMs, 100, 4)
	if err != nil {
		return nil, failed(fmt.Errorf("enabling JIT: %w", err))
	}
	return owner, nil
}

// compareBound records the bound and how the time taken compares with it;
// when not everything was done, the time is more than the patience.
func (c *cell) compareBound(bound, took time.Duration, done bool, patience time.Duration) {
	c.set("boundSeconds", bound.Seconds())
	if done {
		c.set("ratioToBound", took.Seconds()/bound.Seconds())
		c.Summary += fmt.Sprintf("; %.1f× the bound", took.Seconds()/bound.Seconds())
		return
	}
	c.Summary += fmt.Sprintf("; > %.1f× the bound", patience.Seconds()/bound.Seconds())
}

// twinEnable enables JIT on 1,000 VMs with one PUT at the row's latency:
// the time to the HTTP answer, the time until ARM denies SSH to every VM,
// the writes, and what GET /api/v1/vms then says.
func (b *bench) twinEnable(ctx context.Context, d deployment, lat time.Duration) *cell {
	return b.enableRun(ctx, d, lat, enableSpec(b), "one PUT of one policy naming 1,000 VMs (10 subnet NSGs of 100 VMs, 20 VMs also with a NIC NSG)")
}

// twinDense: 1,000 VMs behind one NSG in one policy.
func (b *bench) twinDense(ctx context.Context, d deployment, lat time.Duration) *cell {
	return b.enableRun(ctx, d, lat, denseSpec(b), "one PUT of one policy naming 1,000 VMs behind one NSG")
}

// enableRun enables JIT on every VM of spec with one PUT and watches ARM
// until every VM is denied.
func (b *bench) enableRun(ctx context.Context, d deployment, lat time.Duration, spec estateSpec, what string) *cell {
	if err := d.Limits(ctx, true); err != nil {
		return failed(err)
	}
	c := &cell{}
	before := stats(ctx, d, c)
	ids := make([]string, spec.VMs)
	for i := range ids {
		ids[i] = vmID(i)
	}
	// The policy as one PUT, as a script or the portal's "enable" does.
	start := time.Now()
	pctx, cancel := context.WithTimeout(ctx, httpCutoff)
	code, putErr := d.API(pctx, "PUT", "/api/v1/policies/big", policyBody(ids), nil)
	cut := errors.Is(pctx.Err(), context.DeadlineExceeded)
	cancel()
	answer := time.Since(start)
	switch {
	case cut:
		c.Azure = fmt.Sprintf("no HTTP answer within %.0f s: App Service's front end would have ended the request", httpCutoff.Seconds())
		c.set("answerSeconds", -1)
	case putErr != nil:
		c.Err = fmt.Sprintf("PUT answered %d: %v", code, putErr)
		c.set("answerSeconds", answer.Seconds())
	default:
		c.set("answerSeconds", answer.Seconds())
	}
	// Until every VM is denied, or nothing changed for settle.
	settle := 10 * time.Second
	if lat > 0 {
		settle = 15 * time.Second
	}
	best, bestAt, last := 0, time.Duration(0), time.Now()
	for time.Since(last) < settle && ctx.Err() == nil {
		n, err := protectedVMs(ctx, d, spec)
		if err != nil {
			c.Err = err.Error()
			break
		}
		if n > best {
			best, bestAt, last = n, time.Since(start), time.Now()
		}
		if n == spec.VMs {
			break
		}
		time.Sleep(time.Second)
	}
	delta := deltaOf(before, stats(ctx, d, c))
	states, configured, err := vmStates(ctx, d)
	wrong := -1
	if err == nil {
		wrong, err = unprotectedConfigured(ctx, d, spec, configured)
	}
	if err != nil {
		c.Err = cmpOr(errorf(c.Err), err).Error()
	}
	c.set("deniedVMs", float64(best))
	c.setARM(delta)
	c.set("configuredButOpen", float64(wrong))
	nsgCount := map[string]bool{}
	for i := range spec.VMs {
		for _, n := range spec.vmNSGs(i) {
			nsgCount[strings.ToLower(n)] = true
		}
	}
	maxDeny := -1
	if nsgs, err := listNSGs(ctx, d); err == nil {
		maxDeny = 0
		for _, n := range nsgs {
			k := 0
			for _, r := range n.Properties.SecurityRules {
				if strings.HasPrefix(r.Name, "jit-deny-") && strings.EqualFold(r.Properties.Access, "Deny") {
					k++
				}
			}
			maxDeny = max(maxDeny, k)
		}
	}
	writesPerNSG := float64(delta.Writes) / float64(max(1, len(nsgCount)))
	c.set("maxDenyRulesPerNSG", float64(maxDeny))
	c.set("writesPerNSG", writesPerNSG)
	answerText := fmt.Sprintf("answer %.1f s", answer.Seconds())
	switch {
	case c.Azure != "":
		answerText = "no answer in 230 s"
	case putErr != nil && code != 0:
		answerText = fmt.Sprintf("refused (%d) after %.1f s", code, answer.Seconds())
	case putErr != nil:
		answerText = fmt.Sprintf("no answer (%.1f s): %s", answer.Seconds(), tail(putErr.Error(), 80))
	}
	if best == spec.VMs {
		c.set("allDeniedSeconds", bestAt.Seconds())
		c.Summary = fmt.Sprintf("%s; all %d denied at %.1f s; %d writes (%.1f per NSG), %d refused; at most %d deny rules in an NSG; %d shown Configured but open",
			answerText, spec.VMs, bestAt.Seconds(), delta.Writes, writesPerNSG, delta.refused(), maxDeny, wrong)
	} else {
		c.Summary = fmt.Sprintf("%s; only %d of %d denied (at %.0f s); %d writes (%.1f per NSG), %d refused; at most %d deny rules in an NSG; %d shown Configured but open",
			answerText, best, spec.VMs, bestAt.Seconds(), delta.Writes, writesPerNSG, delta.refused(), maxDeny, wrong)
	}
	c.Notes = fmt.Sprintf("%s; denied = every NSG in front of the VM has a JIT deny rule covering port 22 and its IP, as ARM holds it (watched until %s without change); GET /api/v1/vms states %v; %s", what, settle, states, delta)
	return c
}

// twinShared: 100 grants at once on 50 VMs behind one subnet NSG.
func (b *bench) twinShared(ctx context.Context, d deployment, lat time.Duration) *cell {
	spec := sharedSpec(b)
	owner, err := enablePolicies(ctx, d, spec.VMs, spec.VMs, 1)
	if err != nil {
		return failed(fmt.Errorf("enabling JIT: %w", err))
	}
	if err := d.Limits(ctx, true); err != nil {
		return failed(err)
	}
	c := &cell{}
	before := stats(ctx, d, c)
	const n = 100
	nsg := strings.ToLower(spec.vmNSGs(0)[0])
	acc, first, err := initiateShared(ctx, d, owner, n, nsg)
	if err != nil {
		c.Err = err.Error()
	}
	lat2, missing, allAt := awaitRules(ctx, d, acc, first, b.patience(lat), lat)
	delta := deltaOf(before, stats(ctx, d, c))
	c.setARM(delta)
	summarise(c, "open", n, lat2, missing, allAt, b.patience(lat), delta)
	c.Notes += "; 100 grants sent at once on 50 VMs behind one subnet NSG (two per VM, each from its own source)"
	return c
}

func initiateShared(ctx context.Context, d deployment, owner []string, n int, nsg string) (map[string]time.Time, time.Time, error) {
	acc, first, err := initiateAll(ctx, d, owner, n, n, "PT1H", time.Time{})
	// initiateAll keys rules by the VM's NIC NSG; here they are on the
	// subnet NSG.
	out := map[string]time.Time{}
	for k, v := range acc {
		_, rule, _ := strings.Cut(k, "|")
		out[nsg+"|"+rule] = v
	}
	return out, first, err
}

// awaitRules watches ARM until every awaited "nsg|rule" is there, or
// patience has passed since first. It returns each rule's time from
// acceptance, how many never came, and when the last came (from first).
func awaitRules(ctx context.Context, d deployment, awaited map[string]time.Time, first time.Time, patience, lat time.Duration) ([]time.Duration, int, time.Duration) {
	seen := map[string]bool{}
	var lats []time.Duration
	var allAt time.Duration
	for ctx.Err() == nil && len(seen) < len(awaited) && time.Since(first) < patience {
		rules, err := allowRules(ctx, d)
		now := time.Now()
		if err == nil {
			for k, at := range awaited {
				if !seen[k] && rules.open(k) {
					seen[k] = true
					lats = append(lats, now.Sub(at))
					allAt = now.Sub(first)
				}
			}
		}
		if len(seen) < len(awaited) {
			time.Sleep(watchEvery(lat))
		}
	}
	return lats, len(awaited) - len(seen), allAt
}

// summarise fills a cell for "n things had to happen": how many did, p50,
// p99, and when the last did.
func summarise(c *cell, what string, n int, lat []time.Duration, missing int, allAt, patience time.Duration, a armDelta) {
	p50, _, p99, mx := percentiles(lat)
	c.set("n", float64(n))
	c.set("missing", float64(missing))
	c.set("p50Seconds", p50.Seconds())
	c.set("p99Seconds", p99.Seconds())
	c.set("maxSeconds", mx.Seconds())
	if missing == 0 {
		c.set("allSeconds", allAt.Seconds())
		c.Summary = fmt.Sprintf("all %d %s in %.1f s (p50 %.1f s); %d writes, %d refused", n, what, allAt.Seconds(), p50.Seconds(), a.Writes, a.refused())
	} else {
		c.Summary = fmt.Sprintf("only %d of %d %s after %s (p50 %.1f s); %d writes, %d refused", n-missing, n, what, patience, p50.Seconds(), a.Writes, a.refused())
	}
	c.Notes = fmt.Sprintf("p50 %.2f s, p99 %.2f s, max %.2f s from each grant's acceptance; %s", p50.Seconds(), p99.Seconds(), mx.Seconds(), a)
}

// twinWide: 1,000 grants on 500 NSGs at once; compared with the bound the
// write budget sets.
func (b *bench) twinWide(ctx context.Context, d deployment, lat time.Duration) *cell {
	spec := wideSpec(b)
	owner, c := enableWide(ctx, d, spec)
	if c != nil {
		return c
	}
	if err := d.Limits(ctx, true); err != nil {
		return failed(err)
	}
	c = &cell{}
	before := stats(ctx, d, c)
	const n = 1000
	acc, first, err := initiateAll(ctx, d, owner, n, 64, "PT1H", time.Time{})
	if err != nil {
		c.Err = err.Error()
	}
	l, missing, allAt := awaitRules(ctx, d, acc, first, b.patience(lat), lat)
	delta := deltaOf(before, stats(ctx, d, c))
	c.setARM(delta)
	summarise(c, "open", n, l, missing, allAt, b.patience(lat), delta)
	if lat > 0 {
		c.compareBound(budgetBound(spec.VMs, lat), allAt, missing == 0, b.patience(lat))
	}
	c.Notes += "; 1,000 grants, two per VM, sent 64 at a time, over 500 VMs each behind its own NIC NSG"
	return c
}

// twinClose: 1,000 grants on 500 NSGs ending in the same second: the time
// from the end until ARM holds none of them. The grants open at latency 0;
// the simulator is set to the row's latency before the end. Also the cost
// per grant, from initiate to closed.
func (b *bench) twinClose(ctx context.Context, d deployment, lat time.Duration) *cell {
	spec := wideSpec(b)
	owner, c := enableWide(ctx, d, spec)
	if c != nil {
		return c
	}
	c = &cell{}
	const n = 1000
	before := stats(ctx, d, c)
	costs0, _ := d.Costs(ctx)
	end := time.Now().Add(b.cfg.closeLead).Truncate(time.Second)
	acc, _, err := initiateAll(ctx, d, owner, n, 64, "", end)
	if err != nil {
		c.Err = err.Error()
	}
	// Until a second before the end: which grants ARM holds open; then
	// ARM's limits go on, and the watch goes on through the end.
	everOpen := map[string]bool{}
	watch := func() (ruleView, error) {
		v, err := allowRules(ctx, d)
		if err == nil {
			for k := range acc {
				if v.open(k) && time.Now().Before(end) {
					everOpen[k] = true
				}
			}
		}
		return v, err
	}
	for ctx.Err() == nil && time.Until(end) > time.Second && len(everOpen) < len(acc) {
		_, _ = watch()
		time.Sleep(watchEvery(0))
	}
	openPhase := deltaOf(before, stats(ctx, d, c))
	if err := d.Limits(ctx, true); err != nil {
		return failed(err)
	}
	before = stats(ctx, d, c)
	for ctx.Err() == nil && time.Now().Before(end) {
		_, _ = watch()
		time.Sleep(min(watchEvery(lat), max(time.Until(end), 0)))
	}
	openAtEnd := len(everOpen)
	// After the end: every rule that was open goes; a grant that had not
	// opened must not open now, and if it does, must go too.
	gone, late := map[string]bool{}, map[string]bool{}
	var lags []time.Duration
	var allAt time.Duration
	patience := b.patience(lat)
	for ctx.Err() == nil && time.Since(end) < patience {
		v, err := allowRules(ctx, d)
		if err == nil {
			for k := range acc {
				switch {
				case v.present[k] && !everOpen[k]:
					everOpen[k], late[k] = true, true
				case v.gone(k) && everOpen[k] && !gone[k]:
					gone[k] = true
					lags = append(lags, time.Since(end))
					allAt = time.Since(end)
				}
			}
			// Done when every grant opened and closed; a grant that never
			// opened is watched for the whole patience, in case it opens late.
			if len(gone) == len(acc) {
				break
			}
		}
		time.Sleep(watchEvery(lat))
	}
	closePhase := deltaOf(before, stats(ctx, d, c))
	costs1, _ := d.Costs(ctx)
	c.setARM(closePhase)
	left := len(everOpen) - len(gone)
	p50, _, p99, _ := percentiles(lags)
	c.set("openAtEnd", float64(openAtEnd))
	c.set("openedAfterEnd", float64(len(late)))
	c.set("left", float64(left))
	c.set("p50Seconds", p50.Seconds())
	c.set("p99Seconds", p99.Seconds())
	switch {
	case len(everOpen) == 0:
		// Nothing to close, so nothing measured: said plainly, never as
		// "all gone" or a share of the bound.
		c.Summary = fmt.Sprintf("NOTHING MEASURED: none of %d opened, by the end or in the %s after it; %d writes, %d refused", len(acc), patience, closePhase.Writes, closePhase.refused())
	case left == 0:
		c.set("allSeconds", allAt.Seconds())
		c.Summary = fmt.Sprintf("all %d that opened gone %.1f s after the end (p50 %.1f s); %d writes, %d refused", len(everOpen), allAt.Seconds(), p50.Seconds(), closePhase.Writes, closePhase.refused())
	default:
		c.Summary = fmt.Sprintf("%d of %d that opened STILL OPEN %s after the end; %d writes, %d refused", left, len(everOpen), patience, closePhase.Writes, closePhase.refused())
	}
	if openAtEnd < len(acc) && len(everOpen) > 0 {
		c.Summary += fmt.Sprintf("; only %d of %d had opened by the end", openAtEnd, len(acc))
	}
	if len(late) > 0 {
		c.Summary += fmt.Sprintf("; %d OPENED AFTER THEIR END (%d of them closed again)", len(late), countIn(late, gone))
	}
	if lat > 0 && len(everOpen) > 0 {
		c.compareBound(budgetBound(spec.VMs, lat), allAt, left == 0, patience)
	}
	// Per grant, from the initiate to the close.
	all := openPhase.add(closePhase)
	cost := costs1.minus(costs0)
	per := func(v int64) float64 { return float64(v) / float64(max(len(acc), 1)) }
	c.set("perGrantARMReads", per(int64(all.Reads+all.Polls)))
	c.set("perGrantARMWrites", per(int64(all.Writes)))
	c.set("perGrantTableTx", per(cost.TableTx))
	c.set("perGrantBusOps", per(cost.BusOps))
	c.set("perGrantInvocations", per(cost.Invocations))
	c.Notes = fmt.Sprintf("1,000 grants, two per VM on 500 NIC NSGs, all ending at the same second %s after the first was sent; %d were open in ARM at the end (opened at latency 0), %d opened after it; end → rule gone p50 %.2f s, p99 %.2f s (only for rules seen open); closing: %s; per grant from initiate to close: ARM reads %.2f (polls included), writes %.2f; Table Storage transactions %.2f, Service Bus operations %.2f, function invocations %.2f",
		b.cfg.closeLead, openAtEnd, len(late), p50.Seconds(), p99.Seconds(), closePhase, per(int64(all.Reads+all.Polls)), per(int64(all.Writes)), per(cost.TableTx), per(cost.BusOps), per(cost.Invocations))
	return c
}

// twinInitiate: initiate throughput and latency, offered at a fixed rate
// over 500 VMs, the worker opening rules meanwhile.
func (b *bench) twinInitiate(ctx context.Context, d deployment, lat time.Duration) *cell {
	spec := wideSpec(b)
	owner, c := enableWide(ctx, d, spec)
	if c != nil {
		return c
	}
	if err := d.Limits(ctx, true); err != nil {
		return failed(err)
	}
	c = &cell{}
	call := func(ctx context.Context, i int) error {
		vm := i % spec.VMs
		code, err := d.API(ctx, "POST", "/api/v1/policies/"+owner[vm]+"/initiate", grantBody(vmID(vm), source(i%60000), "PT1H", time.Time{}), nil)
		if err == nil && code != http.StatusAccepted {
			err = fmt.Errorf("status %d", code)
		}
		return err
	}
	// A deployment that falls behind is not waited for: what it has not
	// answered 20 s after the load ends counts as failed.
	lctx, cancel := context.WithTimeout(ctx, b.cfg.twinInitiate+20*time.Second)
	res := openLoop(lctx, b.cfg.initiateRate, b.cfg.twinInitiate, 512, call)
	cancel()
	p50, _, p99, _ := percentiles(res.Latencies)
	tput := float64(res.OK) / res.Elapsed.Seconds()
	c.set("acceptedPerSecond", tput)
	c.set("p50ms", ms(p50))
	c.set("p99ms", ms(p99))
	c.set("failed", float64(res.Failed))
	c.Summary = fmt.Sprintf("%.0f accepted/s, p50 %.1f ms, p99 %.1f ms (of the answered), %d failed or cut", tput, ms(p50), ms(p99), res.Failed)
	c.Notes = fmt.Sprintf("%d sent, %d accepted in %s%s", res.Sent, res.OK, res.Elapsed.Round(time.Millisecond), firstErr(res.FirstError))
	return c
}

func countIn(set, in map[string]bool) int {
	n := 0
	for k := range set {
		if in[k] {
			n++
		}
	}
	return n
}

func errorf(s string) error {
	if s == "" {
		return nil
	}
	return fmt.Errorf("%s", s)
}
