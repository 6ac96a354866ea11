package e2etest

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"jitaccess/handler/armsim"
	"jitaccess/handler/hostsim"
	"jitaccess/handler/jit"
	"jitaccess/handler/testenv"
)

// The Functions-mode fault test's settings. The close lag bound is derived
// from them (see TestChaosFunctions).
const (
	fnChaosInstances = 3
	fnChaosGrants    = 200
	// fnChaosSweep is how often the timer fires the sweeper: Azure's
	// default schedule is every minute (JIT_SWEEP_SCHEDULE); the test
	// fires it more often to keep its run short.
	fnChaosSweep = 5 * time.Second
	// Each NSG write's long-running operation at ARM's realistic latency
	// (docs/performance.md: 2 s, the fast end), with jitter, polled every
	// second (ARM's Retry-After on operations), one operation at a time
	// per NSG and the subscription's write budget on (armsim.Azure).
	fnChaosWriteTime = 2 * time.Second
	fnChaosJitter    = 500 * time.Millisecond
	fnChaosPoll      = time.Second
	// fnChaosMaxDeliveries is the queue's maximum delivery count, low so
	// that messages are dead-lettered within the run.
	fnChaosMaxDeliveries = 3
)

// TestChaosFunctions is TestChaos in Azure's shape: three handler
// instances under the Functions host simulator, on one Azurite and one
// Service Bus queue, with ARM behind the simulator over HTTP. ARM fails a
// fifth of its writes at realistic latency with the write budget on; the
// Service Bus double loses a tenth of the messages, takes a tenth in
// twice, loses the lock of a tenth of its deliveries mid-work and
// dead-letters at the maximum delivery count; Azurite restarts once; an
// instance is killed and restarted every 10–20 s; people edit the NSGs by
// hand. Access must still end on time, every audit event must be there
// and every deny rule back. It prints the figures.
func TestChaosFunctions(t *testing.T) {
	if testing.Short() {
		t.Skip("the Functions-mode fault test runs three handler instances on Azurite and the Service Bus double for about two minutes; not with -short")
	}
	started := time.Now()
	seed := uint64(started.UnixNano())
	t.Logf("seed %d (ARM faults and the Service Bus double's draws)", seed)
	dir := t.TempDir()
	estate, vms, nsgNames := chaosEstate(t, dir)

	azurite := testenv.StartAzuriteOnDisk(t)
	sb := testenv.StartServiceBus(t)
	tokens := testenv.StartTokenEndpoint(t)
	hooks := startWebhookCounter(t)

	// ARM: the simulator over HTTP under /_arm, as local mode serves it.
	// Every successful write is also a resource event for the events
	// function, as Event Grid delivers them; the service's own writes
	// carry its managed identity and are passed over by it.
	var calls callKinds
	events := make(chan armsim.Change, 1<<14)
	sim := armsim.New(armsim.Options{Empty: true, PathPrefix: "/_arm",
		Azure: &armsim.Azure{WriteTime: fnChaosWriteTime, Jitter: fnChaosJitter, PollRetryAfter: fnChaosPoll, Seed: seed},
		Intercept: func(r *http.Request, c armsim.Call) *armsim.Fault {
			if r.Header.Get(armsim.ObserverHeader) == "" {
				calls.add(c.Kind())
			}
			return nil
		},
		OnChange: func(c armsim.Change) {
			select {
			case events <- c:
			default: // Event Grid would retry later; the sweeper is the backstop
			}
		},
	})
	if err := sim.LoadFile(estate); err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/_arm/", http.StripPrefix("/_arm", sim))
	armSrv := httptest.NewServer(mux)
	t.Cleanup(armSrv.Close)

	queue := "jit-chaos"
	host := startHost(t, hostsim.Config{
		Instances:            fnChaosInstances,
		TablesConnection:     azurite.ConnectionString(),
		TablePrefix:          fmt.Sprintf("chaos%d", started.UnixNano()%1e9),
		ServiceBusConnection: sb.ConnectionString(),
		Queue:                queue,
		ARMEndpoint:          armSrv.URL + "/_arm",
		Subscriptions:        sub,
		Env: append(tokens.Env(),
			"AZURE_CLIENT_ID="+testenv.MIClientID,
			"JIT_MIN_DURATION=1s",
			"JIT_LOG_LEVEL="+cmp.Or(os.Getenv("JIT_CHAOS_LOG_LEVEL"), "warn"),
			"JIT_WEBHOOK_URL="+hooks.url,
			// A notification an instance took and then died with is tried
			// again by another once its lease ends.
			"JIT_NOTIFY_RETRY=2s",
			fmt.Sprintf("JIT_MAX_DELIVERIES=%d", fnChaosMaxDeliveries),
		),
		StartTimeout: time.Minute,
	})
	admin := easyAuth("admin-1", "JIT.Admin")
	api := func(method, path string, body any) (int, []byte) {
		return callQuiet(host.URL(), method, path, body, admin...)
	}
	// try retries what the chaos refuses: an instance going down under a
	// request, Azurite restarting, conflicts.
	try := func(method, path string, body, out any, want int) bool {
		for range 150 {
			status, raw := api(method, path, body)
			if status == want {
				if out != nil {
					_ = json.Unmarshal(raw, out)
				}
				return true
			}
			if status >= 400 && status < 500 && status != 409 && status != 429 {
				t.Errorf("%s %s: %d %s", method, path, status, raw)
				return false
			}
			time.Sleep(100 * time.Millisecond)
		}
		return false
	}

	// Event Grid and the timer, as the platform runs them.
	bg, stopBG := context.WithCancel(context.Background())
	var bgWG sync.WaitGroup
	t.Cleanup(func() { stopBG(); bgWG.Wait() })
	var sweeps, sweepsFailed atomic.Int32
	bgWG.Go(func() {
		tick := time.NewTicker(fnChaosSweep)
		defer tick.Stop()
		for {
			select {
			case <-bg.Done():
				return
			case <-tick.C:
			}
			// A sweep longer than the period lets ticks pass, as the timer
			// trigger never runs one function twice at once.
			sweeps.Add(1)
			if _, err := host.FireTimer(bg); err != nil {
				sweepsFailed.Add(1)
			}
		}
	})
	for range 4 {
		bgWG.Go(func() {
			for {
				select {
				case <-bg.Done():
					return
				case c := <-events:
					deliverResourceEvent(bg, host, c)
				}
			}
		})
	}

	// One policy over all 20 VMs, SSH and RDP, locked down before the
	// chaos starts.
	if !try("PUT", "/api/v1/policies/chaos", chaosPolicy(vms), nil, 200) {
		t.Fatal("could not write the policy")
	}
	nsgID := func(name string) string { return rgURL + "/providers/Microsoft.Network/networkSecurityGroups/" + name }
	rulesOf := func(nsg string) map[string]armRule {
		rules := map[string]armRule{}
		for _, name := range sim.RuleNames(nsgID(nsg)) {
			var r armRule
			b, _ := sim.RuleJSON(nsgID(nsg), name)
			_ = json.Unmarshal(b, &r)
			rules[name] = r
		}
		return rules
	}
	nsgsOf := map[string][]string{} // VM name -> the ids of the NSGs guarding it
	lockedDown := func() int {
		missing := 0
		for _, vm := range vms {
			for _, n := range nsgsOf[vm] {
				if !locked(rulesOf(jit.ResourceName(n)), chaosIP(vm), 22) {
					missing++
				}
			}
		}
		return missing
	}
	waitFor(t, 60*time.Second, "the policy applied", func() bool {
		var pol policyOut
		if status, raw := api("GET", "/api/v1/policies/chaos", nil); status != 200 || json.Unmarshal(raw, &pol) != nil || pol.Properties.ProvisioningState != "Succeeded" {
			return false
		}
		for _, v := range pol.Properties.VirtualMachines {
			vm := v.ID[strings.LastIndex(v.ID, "/")+1:]
			nsgsOf[vm] = nil
			for _, n := range v.NSGs {
				nsgsOf[vm] = append(nsgsOf[vm], n.ID)
			}
		}
		return len(nsgsOf) == len(vms) && lockedDown() == 0
	})
	setupTime := time.Since(started)

	// The chaos begins.
	sim.SetChaos(armsim.FaultyWrites(0.2, seed))
	sbFaults := testenv.ServiceBusFaults{DropRate: 0.1, DuplicateRate: 0.1, LockLossRate: 0.1, LockLossAfter: fnChaosWriteTime,
		MaxDeliveryCount: fnChaosMaxDeliveries, Seed: uint32(seed)}
	if err := sb.SetFaults(sbFaults); err != nil {
		t.Fatal(err)
	}

	// Observer: which allow rules are in the NSGs, seen from outside.
	obs := newRuleObserver()
	stopObs := make(chan struct{})
	var obsWG sync.WaitGroup
	endObs := sync.OnceFunc(func() { close(stopObs); obsWG.Wait() })
	t.Cleanup(endObs)
	obsWG.Go(func() {
		for {
			select {
			case <-stopObs:
				return
			case <-time.After(200 * time.Millisecond):
			}
			seen := map[string]bool{}
			for _, n := range nsgNames {
				for _, name := range sim.RuleNames(nsgID(n)) {
					seen[name] = true
				}
			}
			obs.look(seen, time.Now())
		}
	})

	// Instances killed and restarted, Azurite restarted once, hand edits.
	stopChaos := make(chan struct{})
	var chaosWG sync.WaitGroup
	endChaos := sync.OnceFunc(func() { close(stopChaos); chaosWG.Wait() })
	t.Cleanup(endChaos) // before the host closes, should the test stop early
	var restarts atomic.Int32
	var kills []string
	chaosWG.Go(func() {
		for {
			select {
			case <-stopChaos:
				return
			case <-time.After(time.Duration(10000+rand.IntN(10000)) * time.Millisecond):
			}
			i := rand.IntN(fnChaosInstances)
			down := time.Duration(300+rand.IntN(1700)) * time.Millisecond
			host.Instances()[i].Kill()
			kills = append(kills, fmt.Sprintf("%s #%d +%s", time.Now().Format("15:04:05.000"), i, down))
			time.Sleep(down)
			if err := host.Restart(i); err != nil {
				t.Errorf("restarting instance %d: %v", i, err)
				return
			}
			restarts.Add(1)
		}
	})
	var azuriteRestarted atomic.Bool
	chaosWG.Go(func() {
		select {
		case <-stopChaos:
			return
		case <-time.After(15 * time.Second):
		}
		if err := azurite.Restart(time.Second); err != nil {
			t.Errorf("restarting Azurite: %v", err)
			return
		}
		azuriteRestarted.Store(true)
	})
	handEdits := editByHand(stopChaos, &chaosWG, nsgNames, func(nsg string) (string, bool) { return armSrv.URL + "/_arm" + nsgID(nsg), true }, obs)

	// Requests: 200 grants over about 25 s, each for 4 to 20 s.
	recs, lastEnd := requestGrants(t, fnChaosGrants, 25*time.Second, vms, func(vm string) []string { return nsgsOf[vm] },
		func(body any, r *requestRec) bool {
			return try("POST", "/api/v1/policies/chaos/initiate", body, r, 202)
		})
	// The kills, restarts and hand edits go on until every grant has
	// ended; ARM's and Service Bus's faults go on to the end.
	time.Sleep(time.Until(lastEnd))
	endChaos()

	// The bound on the close lag. A close the queue delivers is written
	// within seconds; one it lost or dead-lettered is the sweeper's: it
	// waits for the sweep under way to end (one sweep: every NSG written
	// once, one after the other) and the next to start (a period); that
	// sweep reaches the NSG within one more sweep. A sweep cut by an
	// instance killed under it costs one period and one sweep more.
	oneWrite := fnChaosWriteTime + fnChaosJitter + fnChaosPoll
	oneSweep := time.Duration(len(nsgNames)) * oneWrite
	bound := 2*fnChaosSweep + 3*oneSweep
	// Every rule must be gone and every step audited by then: a close is
	// audited after its rule is removed, and the sweeper also closes
	// grants whose rule was never written (their open was lost), so the
	// audit trail is read until it is complete or the bound has passed.
	deadline := lastEnd.Add(bound)
	auditLost := func() []string {
		trail, ok := auditTrail(func(path string, out any) bool { return try("GET", path, nil, out, 200) })
		if !ok {
			t.Fatal("could not read the audit trail")
		}
		ids := map[string]bool{}
		for _, ev := range trail {
			ids[ev.ID] = true
		}
		return obs.auditLost(recs, ids)
	}
	var lost []string
	for {
		if len(obs.stillOpen()) == 0 {
			if lost = auditLost(); len(lost) == 0 {
				break
			}
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Second)
	}
	time.Sleep(500 * time.Millisecond) // one more observation
	endObs()
	open := obs.stillOpen()
	for _, n := range nsgNames {
		for _, name := range sim.RuleNames(nsgID(n)) {
			if strings.HasPrefix(name, "jit-allow-") && !slices.Contains(open, name) {
				open = append(open, name) // never seen by the observer, but there
			}
		}
	}
	lags := obs.lags(recs)
	maxLag, observed := largestLag(lags)
	if lost == nil {
		lost = auditLost()
	}
	missingDeny := lockedDown()

	// Notifications: one "closed" per grant, stored with the close and
	// delivered from the store by whichever instance comes first (the
	// timer's sweeps go on); a delivery cut by a kill is tried again when
	// its lease (JIT_NOTIFY_RETRY, doubling) ends. Delivered at least once:
	// a repeat is counted, a loss fails the test.
	notifLost, notifTwice := 0, 0
	notifDeadline := time.Now().Add(notifyBound)
	for {
		notifLost, notifTwice = 0, 0
		for _, r := range recs {
			switch n := hooks.count("closed", r.id); {
			case n == 0:
				notifLost++
			case n > 1:
				notifTwice++
			}
		}
		if notifLost == 0 || time.Now().After(notifDeadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}

	st := sb.State(t).Queues[queue]
	hs := host.Stats()
	armCalls := sim.Calls()
	report := fmt.Sprintf(`fault test in Azure's shape (TestChaosFunctions)
  grants:                 %d on %d VMs sharing %d NSGs, %d handler instances (host simulator), Azurite, the Service Bus double
  ARM faults injected:    %d (20%% of writes: 429, 409, 429 another operation, 500, LRO failed or superseded; writes %s ± %s, one at a time per NSG, write budget 200/10 s; %d refused for the budget, %d for a busy NSG)
  Service Bus faults:     %d messages dropped, %d taken in twice, %d locks lost mid-work, %d dead-lettered (max delivery count %d)
  worker invocations:     %d (%d failed), %d messages delivered, %d completed, %d abandoned
  instance kills/restarts: %d, Azurite restarts: %d
  sweeps (timer):         %d every %s (%d failed)
  hand edits via /_arm:   %d (deny rules deleted, world-open rules marked as ours, live rules widened)
  rules seen removed:     %d (%d grants never seen open: their open was lost, or came after their end)
  largest close lag:      %s (bound: 2 × sweep period %s + 3 sweeps of %d NSG writes of %s = %s)
  grants still open:      %d
  audit events lost:      %d
  notifications lost:     %d of %d "closed" (%d delivered twice, each with its idempotency key; bound %s)
  deny rules missing:     %d
  run time:               %s (set-up %s)
`, len(recs), len(vms), len(nsgNames), fnChaosInstances,
		armCalls.Faults, fnChaosWriteTime, fnChaosJitter, armCalls.Throttled, armCalls.Busy,
		st.Counts.Dropped, st.Counts.Duplicated, st.Counts.LocksLost, st.Counts.DeadLettered, fnChaosMaxDeliveries,
		hs.Invocations["worker"], hs.Failures["worker"], hs.Messages, hs.Completes, hs.Abandons,
		restarts.Load(), boolCount(azuriteRestarted.Load()),
		sweeps.Load(), fnChaosSweep, sweepsFailed.Load(),
		handEdits.Load(), observed, len(recs)-obs.seenOf(recs),
		maxLag.Round(10*time.Millisecond), fnChaosSweep, len(nsgNames), oneWrite, bound,
		len(open), len(lost), notifLost, len(recs), notifTwice, notifyBound, missingDeny,
		time.Since(started).Round(time.Second), setupTime.Round(time.Second))
	t.Log("\n" + report)
	t.Logf("kills at: %v", kills)
	if dir := os.Getenv("JIT_CHAOS_LOGS"); dir != "" {
		for _, in := range host.Instances() {
			_ = os.WriteFile(filepath.Join(dir, fmt.Sprintf("instance-%d.log", in.Index())), []byte(in.Output()), 0o644)
		}
	}
	writeChaosReport(t, "functions", report)

	if len(recs) < fnChaosGrants {
		t.Errorf("only %d of %d grants were accepted", len(recs), fnChaosGrants)
	}
	if len(open) > 0 {
		t.Errorf("%d allow rules still open at the end: %v", len(open), open[:min(5, len(open))])
	}
	if maxLag > bound {
		t.Errorf("largest lag %s exceeds the bound %s", maxLag, bound)
	}
	if len(lost) > 0 {
		t.Errorf("%d audit events lost: %v", len(lost), lost[:min(10, len(lost))])
		for _, id := range lost[:min(3, len(lost))] {
			req := strings.SplitN(strings.SplitN(id, "-", 2)[1], "-", 2)[0]
			_, raw := api("GET", "/api/v1/requests/"+req, nil)
			t.Logf("request %s now: %s", req, raw)
		}
	}
	if missingDeny > 0 {
		t.Errorf("%d deny rules missing at the end", missingDeny)
	}
	if notifLost > 0 {
		t.Errorf("%d of %d \"closed\" notifications never delivered within %s", notifLost, len(recs), notifyBound)
	}
	calls.checkRoleCovers(t)
	if restarts.Load() < 2 || armCalls.Faults < 20 || !azuriteRestarted.Load() || st.Counts.Dropped == 0 || st.Counts.Duplicated == 0 || st.Counts.LocksLost == 0 {
		t.Errorf("too little chaos: %d restarts, %d ARM faults, Azurite restarted %v, Service Bus counts %+v", restarts.Load(), armCalls.Faults, azuriteRestarted.Load(), st.Counts)
	}
}

func boolCount(b bool) int {
	if b {
		return 1
	}
	return 0
}

// deliverResourceEvent hands a simulator write to the events function in
// Event Grid's shape, trying again a few times when the instance it went
// to was killed under it, as Event Grid retries.
func deliverResourceEvent(ctx context.Context, host *hostsim.Host, c armsim.Change) {
	typ := "Microsoft.Resources.ResourceWriteSuccess"
	if c.Operation == "delete" {
		typ = "Microsoft.Resources.ResourceDeleteSuccess"
	}
	ev, _ := json.Marshal(map[string]any{
		"id": "chaos-" + jit.NewRequestID()[:12], "topic": "/subscriptions/" + sub, "subject": c.ID,
		"eventType": typ, "eventTime": time.Now().UTC().Format(time.RFC3339Nano), "dataVersion": "", "metadataVersion": "1",
		"data": map[string]any{"resourceUri": c.ID, "operationName": c.Type + "/" + c.Operation, "status": "Succeeded", "subscriptionId": sub,
			"claims": map[string]any{"appid": c.Caller}},
	})
	for range 5 {
		if _, err := host.SendEvent(ctx, ev); err == nil || ctx.Err() != nil {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// editByHand makes a hand edit (handEdit) of a random NSG every 4 s until
// stop is closed; nsgURL gives the NSG's ARM URL, or false while ARM
// cannot be reached. Forged rules are added to obs. It returns the count
// of edits ARM took.
func editByHand(stop <-chan struct{}, wg *sync.WaitGroup, nsgNames []string, nsgURL func(nsg string) (string, bool), obs *ruleObserver) *atomic.Int32 {
	var edits atomic.Int32
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(4 * time.Second):
			}
			u, up := nsgURL(nsgNames[rand.IntN(len(nsgNames))])
			if !up {
				continue
			}
			if name, ok := handEdit(u, i); ok {
				edits.Add(1)
				if name != "" {
					obs.add(name)
				}
			}
		}
	})
	return &edits
}

// requestGrants asks for n grants spread over the period given, 8 at a
// time: grant i on VM i (in turn), SSH and RDP alternately, for 4 to 20 s,
// from a source of its own. initiate sends the request, retrying what the
// chaos refuses. It returns the grants accepted and the last end time.
func requestGrants(t *testing.T, n int, over time.Duration, vms []string, nsgsOf func(vm string) []string, initiate func(body any, r *requestRec) bool) ([]grantRec, time.Time) {
	var mu sync.Mutex
	var recs []grantRec
	var wg sync.WaitGroup
	work := make(chan int)
	for range 8 {
		wg.Go(func() {
			for i := range work {
				vm := vms[i%len(vms)]
				port := []int{22, 3389}[i%2]
				d := 4 + rand.IntN(17)
				var r requestRec
				body := initiateBody(vm, port, map[string]any{"duration": fmt.Sprintf("PT%dS", d), "allowedSourceAddressPrefix": fmt.Sprintf("198.51.100.%d", i%250+1)})
				if !initiate(body, &r) || len(r.Grants) != 1 {
					t.Errorf("request %d was not accepted", i)
					continue
				}
				mu.Lock()
				recs = append(recs, grantRec{id: r.ID, vm: vm, rule: r.Grants[0].RuleName, end: r.VirtualMachines[0].Ports[0].EndTimeUtc, nsgs: nsgsOf(vm)})
				mu.Unlock()
			}
		})
	}
	for i := range n {
		work <- i
		time.Sleep(over / time.Duration(n))
	}
	close(work)
	wg.Wait()
	var lastEnd time.Time
	for _, r := range recs {
		if r.end.After(lastEnd) {
			lastEnd = r.end
		}
	}
	return recs, lastEnd
}

// handEdit changes the NSG at nsgURL by hand through ARM, as TestChaos's
// people do, in turn: a deny rule deleted (JIT must put it back), a rule
// marked as ours opening SSH to the world that no grant owns (JIT must
// remove it; its name is returned), a live grant's rule widened to any
// source and port (JIT must put it back as granted). ok says ARM took the
// edit. A person tries again a few times while ARM answers that the NSG
// is busy or throttled.
func handEdit(nsgURL string, i int) (forged string, ok bool) {
	const v = "?api-version=2024-05-01"
	callQuiet := func(base, method, path string, body any, headers ...string) (int, []byte) {
		for range 5 {
			status, raw := callQuiet(base, method, path, body, headers...)
			if status != http.StatusTooManyRequests && status != http.StatusConflict {
				return status, raw
			}
			time.Sleep(time.Second)
		}
		return http.StatusTooManyRequests, nil
	}
	_, raw := callQuiet(nsgURL, "GET", v, nil, armsim.ObserverHeader, "e2etest")
	var got struct {
		Properties struct {
			SecurityRules []struct {
				Name       string `json:"name"`
				Properties struct {
					Priority int `json:"priority"`
				} `json:"properties"`
			} `json:"securityRules"`
		} `json:"properties"`
	}
	_ = json.Unmarshal(raw, &got)
	first := func(prefix string) string {
		for _, r := range got.Properties.SecurityRules {
			if strings.HasPrefix(r.Name, prefix) {
				return r.Name
			}
		}
		return ""
	}
	switch i % 3 {
	case 0:
		if name := first("jit-deny-"); name != "" {
			s, _ := callQuiet(nsgURL, "DELETE", "/securityRules/"+name+v, nil)
			return "", s/100 == 2
		}
	case 1:
		rule := map[string]any{"properties": map[string]any{"access": "Allow", "direction": "Inbound", "priority": 1900 + i%90,
			"protocol": "Tcp", "sourceAddressPrefix": "*", "sourcePortRange": "*", "destinationAddressPrefix": "*", "destinationPortRange": "22",
			"description": "[jit:" + jit.DefaultDeployment + "] grant of no request"}}
		name := "jit-allow-" + jit.NewRequestID() + "-0"
		s, _ := callQuiet(nsgURL, "PUT", "/securityRules/"+name+v, rule)
		return name, s/100 == 2
	case 2:
		for _, r := range got.Properties.SecurityRules {
			if strings.HasPrefix(r.Name, "jit-allow-") {
				rule := map[string]any{"properties": map[string]any{"access": "Allow", "direction": "Inbound", "priority": r.Properties.Priority,
					"protocol": "*", "sourceAddressPrefix": "*", "sourcePortRange": "*", "destinationAddressPrefix": "*", "destinationPortRange": "*"}}
				s, _ := callQuiet(nsgURL, "PUT", "/securityRules/"+r.Name+v, rule)
				return "", s/100 == 2
			}
		}
	}
	return "", false
}

// ruleObserver keeps which allow rules were seen in the NSGs and when each
// was first seen gone after having been present.
type ruleObserver struct {
	mu          sync.Mutex
	present     map[string]bool
	firstAbsent map[string]time.Time
}

func newRuleObserver() *ruleObserver {
	return &ruleObserver{present: map[string]bool{}, firstAbsent: map[string]time.Time{}}
}

// look records one complete observation of every NSG's rule names.
func (o *ruleObserver) look(seen map[string]bool, now time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for name := range seen {
		o.present[name] = true
	}
	for name := range o.present {
		if !seen[name] {
			if _, ok := o.firstAbsent[name]; !ok {
				o.firstAbsent[name] = now
			}
		} else {
			delete(o.firstAbsent, name) // put back (a repair): not gone yet
		}
	}
}

// add counts a rule as present before it is seen (one written by hand).
func (o *ruleObserver) add(name string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.present[name] = true
}

// stillOpen are the allow rules seen and not seen gone since.
func (o *ruleObserver) stillOpen() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	var open []string
	for name := range o.present {
		if _, gone := o.firstAbsent[name]; !gone && strings.HasPrefix(name, "jit-allow-") {
			open = append(open, name)
		}
	}
	slices.Sort(open)
	return open
}

// seenOf counts the grants of recs whose rule was seen.
func (o *ruleObserver) seenOf(recs []grantRec) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := 0
	for _, r := range recs {
		if o.present[r.rule] {
			n++
		}
	}
	return n
}

// grantLag is how long after its end a grant's rule was seen gone.
type grantLag struct {
	rec grantRec
	lag time.Duration
}

// lags are the lags of the grants whose rule was seen, largest first.
func (o *ruleObserver) lags(recs []grantRec) []grantLag {
	o.mu.Lock()
	defer o.mu.Unlock()
	var lags []grantLag
	for _, r := range recs {
		if gone, ok := o.firstAbsent[r.rule]; ok && o.present[r.rule] {
			lags = append(lags, grantLag{r, gone.Sub(r.end)})
		}
	}
	slices.SortFunc(lags, func(a, b grantLag) int { return cmp.Compare(b.lag, a.lag) })
	return lags
}

// largestLag is the largest of lags (sorted largest first) and how many
// grants were seen closing.
func largestLag(lags []grantLag) (time.Duration, int) {
	if len(lags) == 0 {
		return 0, 0
	}
	return lags[0].lag, len(lags)
}

// auditLost lists the audit events missing for recs: a request event per
// grant, an open event for every rule seen (it was audited before it was
// written), and a close event per grant and NSG.
func (o *ruleObserver) auditLost(recs []grantRec, ids map[string]bool) []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	var lost []string
	for _, r := range recs {
		if id := "request-" + r.id + "-0"; !ids[id] {
			lost = append(lost, id)
		}
		if o.present[r.rule] && !slices.ContainsFunc(r.nsgs, func(n string) bool { return ids["open-"+r.id+"-0-"+jit.ShortHash(n)] }) {
			lost = append(lost, "open-"+r.id+"-0-*")
		}
		for _, n := range r.nsgs {
			if id := "close-" + r.id + "-0-" + jit.ShortHash(n); !ids[id] {
				lost = append(lost, id+" ("+jit.ResourceName(n)+")")
			}
		}
	}
	return lost
}

// notifyBound is how long after the audit is complete every "closed"
// notification must have come: a delivery cut by a kill waits out its
// lease (JIT_NOTIFY_RETRY=2s, doubling: 2 + 4 + 8 s for three cuts in a
// row) and the next sweep (5 s) on another instance, and a burst of 200
// at 200 ms each takes 40 s on one instance.
const notifyBound = 60 * time.Second

// webhookLatency is how long the test's webhook takes to answer, as a chat
// service's incoming webhook takes a few hundred milliseconds: a handler
// instance posts its notifications one after the other, so a burst waits
// in its memory meanwhile.
const webhookLatency = 200 * time.Millisecond

// webhookCounter is an incoming webhook that counts the notifications it
// receives by event and request, and answers each after webhookLatency.
type webhookCounter struct {
	url   string
	mu    sync.Mutex
	seen  map[[2]string]int
	total int
}

func startWebhookCounter(t *testing.T) *webhookCounter {
	w := &webhookCounter{seen: map[[2]string]int{}}
	srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		var msg struct {
			JITAccess struct {
				Event   string `json:"event"`
				Request string `json:"request"`
			} `json:"jitaccess"`
		}
		body, _ := io.ReadAll(r.Body)
		if json.Unmarshal(body, &msg) != nil {
			http.Error(rw, "not a notification", http.StatusBadRequest)
			return
		}
		w.mu.Lock()
		w.seen[[2]string{msg.JITAccess.Event, msg.JITAccess.Request}]++
		w.total++
		w.mu.Unlock()
		time.Sleep(webhookLatency)
	}))
	t.Cleanup(srv.Close)
	w.url = srv.URL + "/hook" // plain HTTP: the notifier takes it on loopback
	return w
}

func (w *webhookCounter) count(event, request string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.seen[[2]string{event, request}]
}

// TestFunctionsOpenAuditedWhenInstanceDies is the Functions-mode fault
// test's finding made deterministic: the instance writing a grant's allow
// rule dies while ARM runs the write, the grant ends before the open is
// delivered again, and the rule, which was in the NSG, must still have
// its open in the audit trail ("every step is audited": TestChaos checks
// an open event for every rule seen).
func TestFunctionsOpenAuditedWhenInstanceDies(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Azurite, the Service Bus double and a handler instance; not with -short")
	}
	azurite := testenv.StartAzurite(t)
	sb := testenv.StartServiceBus(t)
	tokens := testenv.StartTokenEndpoint(t)
	nicNSG := rgURL + "/providers/Microsoft.Network/networkSecurityGroups/nsg-vm-nic"
	var (
		host     *hostsim.Host
		armed    atomic.Bool
		killedAt atomic.Pointer[time.Time]
		ruleSeen atomic.Pointer[string]
	)
	var sim *armsim.Server
	sim = armsim.New(armsim.Options{
		// ARM takes 2 s to run a write: the instance dies meanwhile.
		Azure: &armsim.Azure{WriteTime: 2 * time.Second},
		OnChange: func(c armsim.Change) {
			if !armed.Load() || !strings.EqualFold(c.ID, nicNSG) {
				return
			}
			for _, name := range sim.RuleNames(nicNSG) {
				if strings.HasPrefix(name, "jit-allow-") && ruleSeen.CompareAndSwap(nil, &name) {
					host.Instances()[0].Kill()
					now := time.Now()
					killedAt.Store(&now)
				}
			}
		},
	})
	armSrv := httptest.NewServer(sim)
	t.Cleanup(armSrv.Close)
	host = startHost(t, hostsim.Config{
		TablesConnection:     azurite.ConnectionString(),
		TablePrefix:          fmt.Sprintf("dies%d", time.Now().UnixNano()%1e9),
		ServiceBusConnection: sb.ConnectionString(),
		Queue:                "jit-dies",
		ARMEndpoint:          armSrv.URL,
		Subscriptions:        sub,
		Env:                  append(tokens.Env(), "AZURE_CLIENT_ID="+testenv.MIClientID, "JIT_MIN_DURATION=1s", "JIT_LOG_LEVEL=info"),
	})
	p := &proc{t: t, base: host.URL()}
	admin := easyAuth("admin-1", "JIT.Admin")
	p.must(200, "PUT", "/api/v1/policies/dies", map[string]any{"properties": map[string]any{"virtualMachines": []any{
		map[string]any{"id": vmID("vm-nic-nsg"), "ports": []any{map[string]any{"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "*", "maxRequestAccessDuration": "PT1H"}}},
	}}}, nil, admin...)
	waitFor(t, 30*time.Second, "the lockdown", func() bool {
		return slices.ContainsFunc(sim.RuleNames(nicNSG), func(n string) bool { return strings.HasPrefix(n, "jit-deny-") })
	})

	armed.Store(true)
	var r requestRec
	p.must(202, "POST", "/api/v1/policies/dies/initiate", initiateBody("vm-nic-nsg", 22, map[string]any{"duration": "PT4S", "allowedSourceAddressPrefix": "203.0.113.7"}), &r, admin...)
	waitFor(t, 20*time.Second, "the allow rule written and the instance killed", func() bool { return killedAt.Load() != nil })
	if *ruleSeen.Load() != r.Grants[0].RuleName {
		t.Fatalf("the rule written was %s, want the grant's %s", *ruleSeen.Load(), r.Grants[0].RuleName)
	}
	end := r.VirtualMachines[0].Ports[0].EndTimeUtc
	time.Sleep(time.Until(end) + time.Second)
	if err := host.Restart(0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "the request closed", func() bool {
		var got requestRec
		p.must(200, "GET", "/api/v1/requests/"+r.ID, nil, &got, admin...)
		return got.Status == "Closed" && !slices.Contains(sim.RuleNames(nicNSG), r.Grants[0].RuleName)
	})
	// The request's record changes first; its events reach the trail
	// right after (Table Storage appends them from the change's outbox
	// row), so the trail is read until the close is in it.
	var trail []string
	hasOpen := func(id string) bool { return strings.HasPrefix(id, "open-"+r.ID) }
	deadline := time.Now().Add(10 * time.Second)
	for {
		var audit struct {
			Value []struct {
				ID     string `json:"id"`
				Action string `json:"action"`
			} `json:"value"`
		}
		p.must(200, "GET", "/api/v1/audit", nil, &audit, admin...)
		trail = trail[:0]
		for _, ev := range audit.Value {
			if strings.Contains(ev.ID, r.ID) {
				trail = append(trail, ev.ID)
			}
		}
		closed := slices.ContainsFunc(trail, func(id string) bool { return strings.HasPrefix(id, "close-"+r.ID) })
		if closed || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !slices.ContainsFunc(trail, hasOpen) {
		t.Errorf("rule %s was in nsg-vm-nic from %s until after the grant's end, but the audit trail of request %s has no open: %v",
			r.Grants[0].RuleName, killedAt.Load().Format("15:04:05.000"), r.ID, trail)
	}
}
