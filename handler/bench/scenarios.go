package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sync"
	"time"

	"jitaccess/handler/boltstore"
	"jitaccess/handler/jit"
)

// policyBody enables JIT on vms for SSH from anywhere, up to 3 hours.
func policyBody(vms []string) map[string]any {
	list := make([]any, len(vms))
	for i, id := range vms {
		list[i] = map[string]any{"id": id, "ports": []any{map[string]any{
			"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "*", "maxRequestAccessDuration": "PT3H"}}}
	}
	return map[string]any{"kind": "Basic", "properties": map[string]any{"virtualMachines": list}}
}

// initiateBody asks for SSH to vm from one address, for d or until end.
func initiateBody(vm string, d string, end time.Time) map[string]any {
	port := map[string]any{"number": 22, "allowedSourceAddressPrefix": "203.0.113.7"}
	if d != "" {
		port["duration"] = d
	} else {
		port["endTimeUtc"] = end.UTC().Format(time.RFC3339Nano)
	}
	return map[string]any{"virtualMachines": []any{map[string]any{"id": vm, "ports": []any{port}}}, "justification": "bench"}
}

func policyName(g int) string { return fmt.Sprintf("bench-%03d", g) }

// putPolicies enables JIT on VMs 0..n-1, per policies of size VMs, with
// `parallel` PUTs at a time, and waits until every policy's lockdown is in
// force. It returns the policy of each VM and the time it took.
//
// A PUT answers at once and queues its lockdown, which the worker then
// writes NSG by NSG: a scenario that measured from the PUT's answer would
// measure the lockdown's writes with its own (the enable scenario of
// `make bench` measures those).
func putPolicies(ctx context.Context, p *proc, n, size, parallel int) ([]string, time.Duration, error) {
	start := time.Now()
	d := &localDeployment{p: p}
	owner, err := enablePolicies(ctx, d, n, size, parallel)
	if err == nil {
		err = awaitLockdown(ctx, d, slices.Compact(slices.Clone(owner)), 60*time.Second)
	}
	return owner, time.Since(start), err
}

// awaitLockdown waits until each named policy reports its lockdown in
// force (provisioningState Succeeded), or fails when one reports Failed or
// within patience.
func awaitLockdown(ctx context.Context, d deployment, names []string, patience time.Duration) error {
	deadline := time.Now().Add(patience)
	for _, name := range names {
		for {
			var pol struct {
				Properties struct {
					ProvisioningState string `json:"provisioningState"`
				} `json:"properties"`
			}
			if _, err := d.API(ctx, "GET", "/api/v1/policies/"+name, nil, &pol); err != nil {
				return fmt.Errorf("reading policy %s: %w", name, err)
			}
			state := pol.Properties.ProvisioningState
			if state == "Succeeded" {
				break
			}
			if state == "Failed" || time.Now().After(deadline) {
				return fmt.Errorf("policy %s is %s, its lockdown not in force after %s", name, state, patience)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return nil
}

func cmpOr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

type requestOut struct {
	ID string `json:"id"`
}

// startup: exec to the first answer of GET /, three times, then the idle RSS.
func (b *bench) startup(ctx context.Context) ([]result, error) {
	var readies []time.Duration
	var rss, hwm int
	for i := 0; i < 3; i++ {
		p, err := b.startProc(procOptions{})
		if err != nil {
			return nil, err
		}
		readies = append(readies, p.ready)
		if i == 2 {
			time.Sleep(2 * time.Second) // let start-up garbage be collected
			rss, hwm = p.memory()
		}
		if err := p.stop(); err != nil {
			return nil, err
		}
	}
	st, err := os.Stat(b.handler)
	if err != nil {
		return nil, err
	}
	r := result{Scenario: "startup", Requests: len(readies), Target: "GET / ≤ 100 ms after exec; binary ≤ 40 MB; idle RSS ≤ 40 MB",
		PeakRSSMB: mb(hwm)}
	r.setLatencies(readies)
	size := float64(st.Size()) / (1 << 20)
	r.Verdict = verdict(r.Maxms <= 100 && size <= 40 && mb(rss) <= 40)
	r.Notes = fmt.Sprintf("exec→GET / answered: %v; binary %.1f MB (%s, not stripped); idle RSS %.1f MB (peak %.1f MB)",
		roundAll(readies), size, b.handler, mb(rss), mb(hwm))
	return []result{r}, nil
}

func roundAll(ds []time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d.Round(100 * time.Microsecond)
	}
	return out
}

// initiateThroughput offers initiateRate requests per second for
// initiateDuration over 1,000 VMs (one NIC NSG each) while the worker opens
// the rules in the background.
func (b *bench) initiateThroughput(ctx context.Context) ([]result, error) {
	const vms = 1000
	spec := estateSpec{VMs: vms, NICNSG: true}
	estate := filepath.Join(b.tmp, "estate-initiate.json")
	if err := spec.write(estate); err != nil {
		return nil, err
	}
	p, err := b.startProc(procOptions{Estate: estate})
	if err != nil {
		return nil, err
	}
	defer p.stop()
	owner, setup, err := putPolicies(ctx, p, vms, 100, 4)
	if err != nil {
		return nil, fmt.Errorf("creating policies: %w", err)
	}
	call := func(ctx context.Context, i int) error {
		vm := i % vms
		code, err := p.do(ctx, "POST", "/api/v1/policies/"+owner[vm]+"/initiate", initiateBody(vmID(vm), "PT1H", time.Time{}), nil)
		if err == nil && code != http.StatusAccepted {
			err = fmt.Errorf("status %d", code)
		}
		return err
	}
	res := openLoop(ctx, b.cfg.initiateRate, b.cfg.initiateDuration, 512, call)
	_, hwm := p.memory()
	r := result{Scenario: "initiate", Target: fmt.Sprintf("≥ 1,000 accepted/s sustained for 30 s, p99 ≤ 25 ms (offered %.0f/s for %s)", b.cfg.initiateRate, b.cfg.initiateDuration),
		Requests: res.Sent, Seconds: res.Elapsed.Seconds(), Throughput: float64(res.OK) / res.Elapsed.Seconds(), PeakRSSMB: mb(hwm)}
	r.setLatencies(res.Latencies)
	r.Verdict = verdict(res.Failed == 0 && r.Throughput >= 1000*0.99 && r.P99ms <= 25 && b.cfg.initiateDuration >= 30*time.Second)
	ws, wp99 := res.worstSecond()
	r.Notes = fmt.Sprintf("%d accepted, %d failed%s; 1,000 VMs with a NIC NSG each, 10 policies (created in %s); latency from each request's scheduled send time; the worker opens rules meanwhile; worst second %d (p99 %.1f ms)",
		res.OK, res.Failed, firstErr(res.FirstError), setup.Round(time.Millisecond), ws, ms(wp99))
	if b.cfg.timeline {
		fmt.Fprint(os.Stderr, "initiate, per second of the run:\n"+res.timeline())
	}
	return []result{r}, nil
}

func firstErr(s string) string {
	if s == "" {
		return ""
	}
	return " (first error: " + tail(s, 200) + ")"
}

// openLatency offers openRate requests per second over 100 VMs and times
// each 202 to the moment its allow rule is in the NSG.
func (b *bench) openLatency(ctx context.Context) ([]result, error) {
	const vms = 100
	spec := estateSpec{VMs: vms, NICNSG: true}
	estate := filepath.Join(b.tmp, "estate-open.json")
	if err := spec.write(estate); err != nil {
		return nil, err
	}
	p, err := b.startProc(procOptions{Estate: estate})
	if err != nil {
		return nil, err
	}
	defer p.stop()
	owner, _, err := putPolicies(ctx, p, vms, vms, 1)
	if err != nil {
		return nil, fmt.Errorf("creating policies: %w", err)
	}
	// The service records when each rule's write succeeded: reading the
	// records afterwards measures accepted → rule present without loading
	// the service with NSG reads while it works.
	var mu sync.Mutex
	var ids []string
	call := func(ctx context.Context, i int) error {
		vm := i % vms
		var out requestOut
		if _, err := p.do(ctx, "POST", "/api/v1/policies/"+owner[vm]+"/initiate", initiateBody(vmID(vm), "PT10M", time.Time{}), &out); err != nil {
			return err
		}
		mu.Lock()
		ids = append(ids, out.ID)
		mu.Unlock()
		return nil
	}
	res := openLoop(ctx, b.cfg.openRate, b.cfg.openDuration, 64, call)
	if b.cfg.timeline {
		fmt.Fprint(os.Stderr, "open-latency, the 202s per second of the run:\n"+res.timeline())
	}
	lat, missing, err := openedLatencies(ctx, p, ids, 30*time.Second)
	if err != nil {
		return nil, err
	}
	_, hwm := p.memory()
	r := result{Scenario: "open-latency", Target: fmt.Sprintf("accepted → allow rule present: p50 ≤ 50 ms, p99 ≤ 250 ms at %.0f requests/s", b.cfg.openRate),
		Requests: res.Sent, Seconds: res.Elapsed.Seconds(), Throughput: float64(res.OK) / res.Elapsed.Seconds(), PeakRSSMB: mb(hwm)}
	r.setLatencies(lat)
	r.Verdict = verdict(res.Failed == 0 && missing == 0 && r.P50ms <= 50 && r.P99ms <= 250)
	ip50, _, ip99, _ := percentiles(res.Latencies)
	r.Notes = fmt.Sprintf("latency columns: request accepted (startTimeUtc) → its rule written in the NSG (the grant's openedTimeUtc, recorded after ARM confirmed the write); %d rules never opened; the 202 itself took p50 %.1f ms, p99 %.1f ms%s",
		missing, ms(ip50), ms(ip99), firstErr(res.FirstError))
	return []result{r}, nil
}

// openedLatencies waits until every request's first grant is open in its
// first NSG and returns, per request, the time from acceptance to that.
func openedLatencies(ctx context.Context, p *proc, ids []string, wait time.Duration) ([]time.Duration, int, error) {
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	var lat []time.Duration
	deadline := time.Now().Add(wait)
	for {
		type listed struct {
			ID        string    `json:"id"`
			StartTime time.Time `json:"startTimeUtc"`
			Grants    []struct {
				NSGs []struct {
					OpenedAt *time.Time `json:"openedTimeUtc"`
				} `json:"networkSecurityGroups"`
			} `json:"grants"`
		}
		var list struct{ Value []listed }
		var err error
		if list.Value, err = allPages[listed](ctx, getter(p.do), "/api/v1/requests?status=Active&limit=1000"); err != nil {
			return nil, 0, err
		}
		lat = lat[:0]
		for _, r := range list.Value {
			if want[r.ID] && len(r.Grants) > 0 && len(r.Grants[0].NSGs) > 0 && r.Grants[0].NSGs[0].OpenedAt != nil {
				lat = append(lat, r.Grants[0].NSGs[0].OpenedAt.Sub(r.StartTime))
			}
		}
		if len(lat) == len(want) || time.Now().After(deadline) {
			return lat, len(want) - len(lat), nil
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// closeBurst opens closeGrants grants on 100 VMs that all end at the same
// moment and times how long after it each rule is gone.
func (b *bench) closeBurst(ctx context.Context) ([]result, error) {
	const vms = 100
	spec := estateSpec{VMs: vms, NICNSG: true}
	estate := filepath.Join(b.tmp, "estate-close.json")
	if err := spec.write(estate); err != nil {
		return nil, err
	}
	p, err := b.startProc(procOptions{Estate: estate})
	if err != nil {
		return nil, err
	}
	defer p.stop()
	owner, _, err := putPolicies(ctx, p, vms, vms, 1)
	if err != nil {
		return nil, fmt.Errorf("creating policies: %w", err)
	}
	n := b.cfg.closeGrants
	end := time.Now().Add(15*time.Second + time.Duration(n)*5*time.Millisecond).Truncate(time.Second)
	call := func(ctx context.Context, i int) error {
		vm := i % vms
		_, err := p.do(ctx, "POST", "/api/v1/policies/"+owner[vm]+"/initiate", initiateBody(vmID(vm), "", end), nil)
		return err
	}
	res := openLoop(ctx, 500, time.Duration(float64(n)/500*float64(time.Second)), 64, call)
	if res.Failed > 0 {
		return nil, fmt.Errorf("%d of %d initiates failed: %s", res.Failed, res.Sent, res.FirstError)
	}
	// Every rule should be open well before the end time.
	var before map[string]bool
	for time.Until(end) > 300*time.Millisecond {
		if before, err = p.allowRules(ctx); err != nil {
			return nil, err
		}
		if len(before) >= res.OK {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	openAtEnd := len(before)
	time.Sleep(time.Until(end))
	gone := map[string]time.Duration{}
	var left map[string]bool
	deadline := end.Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if left, err = p.allowRules(ctx); err != nil {
			return nil, err
		}
		at := time.Since(end)
		for k := range before {
			if _, done := gone[k]; !done && !left[k] {
				gone[k] = at
			}
		}
		if len(left) == 0 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	_, hwm := p.memory()
	lags := make([]time.Duration, 0, len(gone))
	for _, d := range gone {
		lags = append(lags, d)
	}
	r := result{Scenario: "close-burst", Target: fmt.Sprintf("%d grants ending in the same second: every rule gone ≤ 2 s after the end time", n),
		Requests: res.OK, PeakRSSMB: mb(hwm)}
	r.setLatencies(lags)
	r.Verdict = verdict(openAtEnd == n && len(left) == 0 && r.Maxms <= 2000)
	r.Notes = fmt.Sprintf("latency columns: end time → rule gone (NSGs listed every 50 ms); %d of %d rules open at the end time, %d still there after 30 s; 100 VMs with a NIC NSG each (%d rules per NSG)",
		openAtEnd, n, len(left), n/vms)
	return []result{r}, nil
}

// listVMs times GET /api/v1/vms over an estate of estateVMs VMs.
func (b *bench) listVMs(ctx context.Context) ([]result, error) {
	spec := estateSpec{VMs: b.cfg.estateVMs, VMsPerNet: 250, SubnetNSG: true, NICNSG: true, NICNSGEvery: 10}
	estate := filepath.Join(b.tmp, "estate-vms.json")
	if err := spec.write(estate); err != nil {
		return nil, err
	}
	p, err := b.startProc(procOptions{Estate: estate})
	if err != nil {
		return nil, err
	}
	defer p.stop()
	// 90, not 100: a subnet NSG holds at most 96 deny rules (one per VM in
	// the deny band 4000–4095); see docs/performance.md.
	_, setup, err := putPolicies(ctx, p, 90, 90, 1)
	if err != nil {
		return nil, fmt.Errorf("creating policies: %w", err)
	}
	before := p.armStats()
	var lat []time.Duration
	count := 0
	for i := 0; i < 5; i++ {
		t0 := time.Now()
		// Every page, as the portal reads it.
		vms, err := allPages[struct {
			State string `json:"state"`
		}](ctx, getter(p.do), "/api/v1/vms?limit=1000")
		if err != nil {
			return nil, err
		}
		lat = append(lat, time.Since(t0))
		count = len(vms)
	}
	_, hwm := p.memory()
	r := result{Scenario: "vms", Target: fmt.Sprintf("GET /api/v1/vms over %d VMs ≤ 500 ms; inventory in list calls per page", b.cfg.estateVMs),
		Requests: len(lat), PeakRSSMB: mb(hwm)}
	r.setLatencies(lat)
	if after := p.armStats(); after != nil {
		r.ARMCalls = diffCalls(before, after, len(lat))
	}
	r.Verdict = verdict(count == b.cfg.estateVMs && r.Maxms <= 500)
	r.Notes = fmt.Sprintf("%d VMs answered; 20 subnets with an NSG, a NIC NSG on every 10th VM; 90 VMs in a policy (created in %s); 5 sequential GETs; ARM calls per GET in the arm-calls rows",
		count, setup.Round(time.Millisecond))
	return []result{r}, nil
}

// diffCalls is after − before, divided by n.
func diffCalls(before, after map[string]int, n int) map[string]int {
	out := map[string]int{}
	for k, v := range after {
		if d := v - before[k]; d > 0 {
			out[k] = d / max(n, 1)
		}
	}
	return out
}

// auditCSV writes auditEvents events into the state file before start-up,
// then downloads them as CSV.
func (b *bench) auditCSV(ctx context.Context) ([]result, error) {
	dir, err := os.MkdirTemp(b.tmp, "data-")
	if err != nil {
		return nil, err
	}
	if err := seedAudit(ctx, filepath.Join(dir, "jitaccess.db"), b.cfg.auditEvents); err != nil {
		return nil, err
	}
	p, err := b.startProc(procOptions{DataDir: dir})
	if err != nil {
		return nil, err
	}
	defer p.stop()
	time.Sleep(time.Second)
	rssBefore, _ := p.memory()
	anonBefore := p.status()["RssAnon"]
	t0 := time.Now()
	resp, err := p.client.Get(p.url + "/api/v1/audit?format=csv")
	if err != nil {
		return nil, err
	}
	first := time.Since(t0)
	lines, size := 0, 0
	buf := make([]byte, 64<<10)
	for {
		n, err := resp.Body.Read(buf)
		size += n
		for _, c := range buf[:n] {
			if c == '\n' {
				lines++
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			resp.Body.Close()
			return nil, err
		}
	}
	resp.Body.Close()
	total := time.Since(t0)
	rssAfter, hwm := p.memory()
	st := p.status()
	r := result{Scenario: "audit-csv", Target: fmt.Sprintf("audit CSV of %d events streamed in ≤ 2 s, memory flat", b.cfg.auditEvents),
		Requests: 1, Seconds: total.Seconds(), Throughput: float64(lines-1) / total.Seconds(), PeakRSSMB: mb(hwm)}
	r.setLatencies([]time.Duration{total})
	// Heap growth is what "memory flat" is about; the state file's pages
	// that bbolt maps while reading count as RssFile and belong to the page
	// cache.
	grew := mb(st["RssAnon"] - anonBefore)
	r.Verdict = verdict(lines-1 == b.cfg.auditEvents && total <= 2*time.Second && grew <= 16)
	r.Notes = fmt.Sprintf("%d rows, %.1f MB of CSV; first byte after %s; RSS %.1f MB before, %.1f MB after (anonymous %.1f MB → %.1f MB, +%.1f MB; file-backed bbolt map %.1f MB), peak %.1f MB; req/s column: rows per second",
		lines-1, float64(size)/(1<<20), first.Round(100*time.Microsecond), mb(rssBefore), mb(rssAfter), mb(anonBefore), mb(st["RssAnon"]), grew, mb(st["RssFile"]), mb(hwm))
	if resp.StatusCode != http.StatusOK {
		r.Verdict, r.Notes = "error", fmt.Sprintf("status %d; %s", resp.StatusCode, r.Notes)
	}
	return []result{r}, nil
}

// seedAudit appends n audit events to the state file at path through the
// store, without an fsync per event.
func seedAudit(ctx context.Context, path string, n int) error {
	db, err := boltstore.Open(path)
	if err != nil {
		return err
	}
	defer db.Close()
	db.Bolt().NoSync = true
	store, err := boltstore.New(db.Bolt())
	if err != nil {
		return err
	}
	// Many writers at once: the store commits concurrent appends together.
	start := time.Now().Add(-time.Duration(n) * time.Second)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for w := 0; w < 64; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 64 {
				vm := vmID(i % 500)
				ev := jit.AuditEvent{ID: fmt.Sprintf("seed-%07d", i), Time: start.Add(time.Duration(i) * time.Second), Action: jit.AuditOpen,
					Actor: "system", Policy: "bench-000", Request: fmt.Sprintf("req%020d", i/2), VM: vm, NSG: nsgID(nicNSGName(i % 500)),
					Protocol: jit.ProtocolTCP, Ports: []int{22}, Sources: []string{"203.0.113.7"}, Result: jit.ResultSuccess,
					Detail: "until 2030-01-01T00:00:00Z"}
				if err := store.AppendAudit(ctx, ev); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	return db.Bolt().Sync()
}

var conflictLine = regexp.MustCompile(`(?i)SecurityRuleConflict|priority taken concurrently|AnotherOperationInProgress|will retry`)

// sharedNSG fires sharedGrants requests at once for VMs behind one subnet
// NSG, with every ARM write taking sharedLatency.
func (b *bench) sharedNSG(ctx context.Context) ([]result, error) {
	n := b.cfg.sharedGrants
	// At most 50 VMs: the deny band holds 96 rules per NSG, one per VM; the
	// grants go round-robin over them.
	vms := min(n, 50)
	spec := estateSpec{VMs: vms, VMsPerNet: vms, SubnetNSG: true}
	estate := filepath.Join(b.tmp, "estate-shared.json")
	if err := spec.write(estate); err != nil {
		return nil, err
	}
	// Lock the VMs down without latency (n deny rules), then restart on the
	// same state with the slow ARM.
	p, err := b.startProc(procOptions{Estate: estate})
	if err != nil {
		return nil, err
	}
	owner, _, err := putPolicies(ctx, p, vms, vms, 1)
	if err != nil {
		p.stop()
		return nil, fmt.Errorf("creating policies: %w", err)
	}
	if err := p.stop(); err != nil {
		return nil, err
	}
	p, err = b.startProc(procOptions{DataDir: p.dataDir, ARMLatency: b.cfg.sharedLatency})
	if err != nil {
		return nil, err
	}
	defer p.stop()
	nsg := spec.vmNSGs(0)[0]
	w := newOpenWatch(p)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go w.run(wctx, 50*time.Millisecond)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var accepted []time.Duration
	var firstErr error
	t0 := time.Now()
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var out requestOut
			s := time.Now()
			_, err := p.do(ctx, "POST", "/api/v1/policies/"+owner[i%vms]+"/initiate", initiateBody(vmID(i%vms), "PT1H", time.Time{}), &out)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				firstErr = cmpOr(firstErr, err)
				return
			}
			accepted = append(accepted, time.Since(s))
			w.await(nsg, jit.RuleName(out.ID, 0), time.Now())
		}()
	}
	wg.Wait()
	deadline := t0.Add(b.cfg.sharedTimeout)
	for w.pending() > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	_, hwm := p.memory()
	w.mu.Lock()
	lat := append([]time.Duration(nil), w.latency...)
	w.mu.Unlock()
	within10 := 0
	for _, d := range lat {
		if d <= 10*time.Second {
			within10++
		}
	}
	conflicts := len(conflictLine.FindAllString(p.log.String(), -1))
	r := result{Scenario: "shared-nsg", Target: fmt.Sprintf("%d concurrent grants on one subnet NSG (%d VMs), ARM writes %s: all open ≤ 10 s after acceptance, no ARM conflict errors", n, vms, b.cfg.sharedLatency),
		Requests: len(accepted), PeakRSSMB: mb(hwm)}
	r.setLatencies(lat)
	r.Verdict = verdict(firstErr == nil && len(lat) == n && r.Maxms <= 10000 && conflicts == 0)
	_, _, ap99, _ := percentiles(accepted)
	r.Notes = fmt.Sprintf("latency columns: 202 → rule in the NSG; %d of %d open within 10 s, %d within %s (then the bench stops waiting); %d conflict/retry log lines; 202 p99 %.0f ms%s",
		within10, n, len(lat), b.cfg.sharedTimeout, conflicts, ms(ap99), firstErr2(firstErr))
	return []result{r}, nil
}

func firstErr2(err error) string {
	if err == nil {
		return ""
	}
	return firstErr(err.Error())
}
