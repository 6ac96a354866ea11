package e2etest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"

	"jitaccess/handler/armsim"
	"jitaccess/handler/hostsim"
	"jitaccess/handler/testenv"
)

// easyAuth is the set of headers App Service Authentication adds.
var easyAuth = testenv.EasyAuth

// startHost runs the built handler in Functions mode under the host
// simulator, and shows the handlers' output when the test fails.
func startHost(t *testing.T, cfg hostsim.Config) *hostsim.Host {
	t.Helper()
	cfg.Binary = handlerBinary(t)
	cfg.Logf = t.Logf
	h, err := hostsim.Start(cfg)
	if err != nil {
		t.Fatalf("starting the Functions host simulator: %v", err)
	}
	t.Cleanup(func() {
		_ = h.Close()
		if t.Failed() {
			for _, in := range h.Instances() {
				t.Logf("handler instance %d output:\n%s", in.Index(), tail(in.Output(), 20000))
			}
		}
		if f := h.Faults(); len(f) > 0 {
			t.Errorf("the host could not read the handler's answers: %v", f)
		}
	})
	return h
}

// TestFunctionsModeEndToEnd runs the built handler as the Functions host
// would (handler/hostsim), on Azurite, the Service Bus double and the ARM
// simulator, with the managed identity served by a local token endpoint.
func TestFunctionsModeEndToEnd(t *testing.T) {
	// Table Storage and Service Bus are reached as in Azure: by name, over
	// TLS, with the managed identity's tokens. One certificate serves both,
	// and the handler trusts it (SSL_CERT_FILE).
	cert, key := testenv.SelfSignedCert(t, t.TempDir())
	azurite := testenv.StartAzuriteOAuth(t, cert, key)
	sb := testenv.StartServiceBusTLS(t, cert, key)
	tokens := testenv.StartTokenEndpoint(t)

	var authSeen sync.Map
	var calls callKinds
	t.Cleanup(func() { calls.checkRoleCovers(t) })
	sim := armsim.New(armsim.Options{Intercept: func(r *http.Request, c armsim.Call) *armsim.Fault {
		authSeen.Store(r.Header.Get("Authorization"), true)
		calls.add(c.Kind())
		return nil
	}})
	armSrv := httptest.NewServer(sim)
	t.Cleanup(armSrv.Close)

	prefix := fmt.Sprintf("e2e%d", time.Now().UnixNano()%1e9)
	queue := "jit-e2e"
	host := startHost(t, hostsim.Config{
		TablesURL:   azurite.TableURL(), // with the managed identity
		TablePrefix: prefix,
		// With the managed identity; the name is the certificate's, the
		// address the double's.
		ServiceBusNamespace: "localhost",
		ServiceBusEndpoint:  sb.Namespace(),
		Queue:               queue,
		ARMEndpoint:         armSrv.URL,
		Subscriptions:       sub,
		Env: append(tokens.Env(),
			"SSL_CERT_FILE="+cert,
			"AZURE_CLIENT_ID=00000000-0000-0000-0000-0000000000c1",
			"JIT_MIN_DURATION=1s",
			"JIT_LOG_LEVEL=debug",
		),
		// The host receives with a key.
		HostServiceBus: sb.ConnectionString(),
	})
	p := &proc{t: t, base: host.URL()}

	// The portal is served by the same forwarded HTTP function as the API.
	for path, want := range map[string]string{"/": "<title>Just-in-time VM access", "/portal/app.js": "/api/v1/"} {
		resp, err := http.Get(p.base + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(body), want) {
			t.Errorf("Functions mode GET %s = %d, body without %q", path, resp.StatusCode, want)
		}
	}

	admin := easyAuth("admin-1", "JIT.Admin")
	// The API function forwards every path: a signed-in caller's POST /sweeper
	// reaches the handler, and must not run the sweeper.
	if code, body := p.call("POST", "/sweeper", map[string]any{"Data": map[string]any{"timer": map[string]any{}}, "Metadata": map[string]any{}}, nil, admin...); code != 404 {
		t.Errorf("a forwarded POST /sweeper answered %d %s, want 404", code, body)
	}
	nicNSG := rgURL + "/providers/Microsoft.Network/networkSecurityGroups/nsg-vm-nic"
	hasRule := func(name string) bool { return slices.Contains(sim.RuleNames(nicNSG), name) }

	// Identity: no principal is 401; dev headers are refused outside local mode.
	p.must(401, "GET", "/api/v1/vms", nil, nil)
	p.must(401, "GET", "/api/v1/vms", nil, nil, "X-Dev-Principal", "mallory", "X-Dev-Roles", "JIT.Admin")

	// Forwarded HTTP: enable JIT. ARM is called with the managed identity's token.
	p.must(200, "PUT", "/api/v1/policies/fn", map[string]any{"properties": map[string]any{"virtualMachines": []any{
		map[string]any{"id": vmID("vm-nic-nsg"), "ports": []any{map[string]any{"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "*", "maxRequestAccessDuration": "PT3H"}}},
	}}}, nil, admin...)
	if !slices.ContainsFunc(tokens.Issued("https://management.core.windows.net/"), func(tok string) bool { _, ok := authSeen.Load("Bearer " + tok); return ok }) {
		t.Errorf("ARM never saw a token the managed identity endpoint issued for ARM")
	}

	// Initiate: the handler puts open (now) and close (scheduled) on the
	// queue; the host delivers them to the worker; the rule opens and closes.
	var short requestRec
	p.must(202, "POST", "/api/v1/policies/fn/initiate", initiateBody("vm-nic-nsg", 22, map[string]any{"duration": "PT3S", "allowedSourceAddressPrefix": "203.0.113.7"}), &short, admin...)
	rule := short.Grants[0].RuleName
	waitFor(t, 10*time.Second, "allow rule opened through the queue", func() bool { return hasRule(rule) })
	end := short.VirtualMachines[0].Ports[0].EndTimeUtc
	waitFor(t, time.Until(end)+15*time.Second, "allow rule closed by the scheduled close", func() bool { return !hasRule(rule) })
	if early := end.Sub(time.Now()); early > time.Second {
		t.Errorf("closed %s before the end time", early)
	}
	waitFor(t, 5*time.Second, "request closed in Table Storage", func() bool {
		p.must(200, "GET", "/api/v1/requests/"+short.ID, nil, &short, admin...)
		return short.Status == "Closed"
	})

	// Revoke closes at once; the close scheduled at the end stays on the
	// broker (nothing is cancelled) and will find the rule gone.
	var long requestRec
	p.must(202, "POST", "/api/v1/policies/fn/initiate", initiateBody("vm-nic-nsg", 22, map[string]any{"duration": "PT1H", "allowedSourceAddressPrefix": "203.0.113.8"}), &long, admin...)
	waitFor(t, 10*time.Second, "second rule open", func() bool { return hasRule(long.Grants[0].RuleName) })
	scheduledFor := func(reqID string) []testenv.ServiceBusMessage {
		var out []testenv.ServiceBusMessage
		for _, m := range sb.State(t).Queues[queue].Scheduled {
			if strings.Contains(m.MessageID, reqID) {
				out = append(out, m)
			}
		}
		return out
	}
	if n := len(scheduledFor(long.ID)); n != 1 {
		t.Fatalf("scheduled closes for the request on the broker: %d, want 1", n)
	}
	cancelledBefore := sb.State(t).Queues[queue].Counts.Cancelled
	p.must(200, "POST", "/api/v1/requests/"+long.ID+"/revoke", nil, nil, admin...)
	waitFor(t, 10*time.Second, "revoked rule removed", func() bool { return !hasRule(long.Grants[0].RuleName) })
	if n := len(scheduledFor(long.ID)); n != 1 {
		t.Errorf("scheduled closes on the broker after revoke: %d, want the one at the end time", n)
	}
	if c := sb.State(t).Queues[queue].Counts.Cancelled; c != cancelledBefore {
		t.Errorf("cancelled count %d, want %d: nothing is cancelled", c, cancelledBefore)
	}

	// Extend schedules a close at the new end; the old one stays and will
	// come before the end, when it does nothing.
	var ext requestRec
	p.must(202, "POST", "/api/v1/policies/fn/initiate", initiateBody("vm-nic-nsg", 22, map[string]any{"duration": "PT1H", "allowedSourceAddressPrefix": "203.0.113.9"}), &ext, admin...)
	before := scheduledFor(ext.ID)
	if len(before) != 1 {
		t.Fatalf("scheduled closes before extend: %d", len(before))
	}
	p.must(200, "POST", "/api/v1/requests/"+ext.ID+"/extend", map[string]any{"duration": "PT2H"}, nil, admin...)
	after := scheduledFor(ext.ID)
	if len(after) != 2 || after[0].Seq != before[0].Seq || !after[1].ScheduledTime.After(before[0].ScheduledTime.Add(50*time.Minute)) {
		t.Errorf("after extend the broker holds %+v (before: %+v), want the old close and one an hour later", after, before)
	}
	p.must(400, "POST", "/api/v1/requests/"+ext.ID+"/extend", map[string]any{"duration": "PT4H"}, nil, admin...)

	// The Event Grid and timer functions, invoked in the host's shape, repair
	// what was changed by hand.
	ctx := context.Background()
	checkInvoked := func(fn string, res hostsim.Result, err error) {
		t.Helper()
		if err != nil || res.Status != 200 {
			t.Fatalf("%s: %d, %v", fn, res.Status, err)
		}
		if res.Outputs == nil {
			t.Errorf("%s: no Outputs object", fn)
		}
	}
	handDelete := func(rule string) {
		t.Helper()
		req, _ := http.NewRequest("DELETE", armSrv.URL+nicNSG+"/securityRules/"+rule+"?api-version=2024-05-01", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode/100 != 2 || hasRule(rule) {
			t.Fatalf("deleting %s by hand: %d", rule, resp.StatusCode)
		}
	}
	var deny string
	for _, name := range sim.RuleNames(nicNSG) {
		if strings.HasPrefix(name, "jit-deny-") {
			deny = name
		}
	}
	handDelete(deny)
	res, err := host.SendEvent(ctx, `{"id":"e-1","topic":"/subscriptions/`+sub+`","subject":"`+nicNSG+`/securityRules/`+deny+
		`","eventType":"Microsoft.Resources.ResourceDeleteSuccess","eventTime":"2026-11-24T07:00:00Z","data":{}}`)
	checkInvoked("events", res, err)
	if !hasRule(deny) {
		t.Errorf("the events function did not restore the deny rule deleted by hand")
	}
	// The grant must be recorded open first: a rule deleted between its
	// write and that record is the pending grant's, which the sweep leaves
	// to its open (or gives up after JIT_STUCK_AFTER), not a drift to repair.
	waitFor(t, 10*time.Second, "the extended grant recorded open", func() bool {
		var got requestRec
		p.must(200, "GET", "/api/v1/requests/"+ext.ID, nil, &got, admin...)
		return len(got.Grants) > 0 && got.Grants[0].Status == "Initiated"
	})
	handDelete(ext.Grants[0].RuleName)
	res, err = host.FireTimer(ctx)
	checkInvoked("sweeper", res, err)
	if !hasRule(ext.Grants[0].RuleName) {
		t.Errorf("the sweeper function did not put back a live grant's rule deleted by hand")
	}

	// ARM, Tables and Service Bus were all reached with the one identity
	// (Azurite and the double's TLS listener take nothing else here).
	resources := tokens.Resources()
	for _, want := range []string{"https://management.core.windows.net/", "https://storage.azure.com", "https://servicebus.azure.net"} {
		if !slices.ContainsFunc(resources, func(r string) bool { return strings.TrimSuffix(r, "/") == strings.TrimSuffix(want, "/") }) {
			t.Errorf("no token asked for %s: resources %v", want, resources)
		}
	}
	for _, id := range tokens.ClientIDs() {
		if id != "00000000-0000-0000-0000-0000000000c1" {
			t.Errorf("a token was asked for client id %q, want the user-assigned identity's", id)
		}
	}
	// The handler's Service Bus links were authorised with the managed
	// identity's token for Service Bus (the host here uses a key).
	jwt := false
	for _, c := range sb.State(t).CBS {
		jwt = jwt || c.Type == "jwt" && strings.TrimSuffix(c.Aud, "/") == "https://servicebus.azure.net" && strings.HasPrefix(c.Name, "amqps://localhost/")
	}
	if !jwt {
		t.Errorf("no put-token with an Entra ID token for Service Bus reached the namespace: %+v", sb.State(t).CBS)
	}

	// State lives in Azurite's tables.
	svc, err := azuriteClient(t, azurite)
	if err != nil {
		t.Fatal(err)
	}
	pager := svc.NewClient(prefix + "requests").NewListEntitiesPager(nil)
	entities := 0
	for pager.More() {
		page, err := pager.NextPage(context.Background())
		if err != nil {
			t.Fatalf("listing Azurite's requests table: %v", err)
		}
		entities += len(page.Entities)
	}
	if entities < 3 {
		t.Errorf("Azurite's %srequests table holds %d entities, want at least 3", prefix, entities)
	}
	stats := host.Stats()
	if stats.Messages < 4 {
		t.Errorf("the host delivered %d messages", stats.Messages)
	}
	t.Logf("host delivered %d messages (%d worker invocations failed); token endpoint called %d times", stats.Messages, stats.Failures["worker"], tokens.Calls())
}

// TestFunctionsModeTwoInstances scales out as the Functions host does: two
// handler instances on one Azurite and one queue, each with its own batch
// receiver. Grants on three NSGs open and close through the queue, and
// both instances do some of the work.
func TestFunctionsModeTwoInstances(t *testing.T) {
	azurite := testenv.StartAzurite(t)
	sb := testenv.StartServiceBus(t)
	tokens := testenv.StartTokenEndpoint(t) // ARM's token
	sim := armsim.New(armsim.Options{})
	armSrv := httptest.NewServer(sim)
	t.Cleanup(armSrv.Close)

	// Small batches (one invocation at a time per instance, as the real
	// extension runs batch functions): while one instance works on a
	// batch, the next messages go to the other.
	hs, err := hostsim.RepoHostSettings()
	if err != nil {
		t.Fatal(err)
	}
	hs.ServiceBus.MaxMessageBatchSize = 2
	queue := "jit-scaleout"
	host := startHost(t, hostsim.Config{
		Instances:            2,
		TablesConnection:     azurite.ConnectionString(),
		TablePrefix:          fmt.Sprintf("two%d", time.Now().UnixNano()%1e9),
		ServiceBusConnection: sb.ConnectionString(), // the handler and the host both with a key
		Queue:                queue,
		ARMEndpoint:          armSrv.URL,
		Subscriptions:        sub,
		Env:                  append(tokens.Env(), "JIT_MIN_DURATION=1s", "JIT_LOG_LEVEL=debug"),
		Host:                 &hs,
	})
	p := &proc{t: t, base: host.URL()}
	admin := easyAuth("admin-1", "JIT.Admin")

	// Three VMs behind three NSGs (vm-both-nsg behind two): lockdown and
	// grants give work to several sessions at once.
	vms := []string{"vm-nic-nsg", "vm-subnet-nsg", "vm-both-nsg"}
	var policyVMs []any
	for _, vm := range vms {
		policyVMs = append(policyVMs, map[string]any{"id": vmID(vm), "ports": []any{map[string]any{"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "*", "maxRequestAccessDuration": "PT3H"}}})
	}
	p.must(200, "PUT", "/api/v1/policies/scale", map[string]any{"properties": map[string]any{"virtualMachines": policyVMs}}, nil, admin...)
	nsgs := []string{"nsg-vm-nic", "nsg-subnet-protected", "nsg-vm-both"}
	rulesNow := func() map[string]bool {
		have := map[string]bool{}
		for _, nsg := range nsgs {
			for _, r := range sim.RuleNames(rgURL + "/providers/Microsoft.Network/networkSecurityGroups/" + nsg) {
				have[r] = true
			}
		}
		return have
	}
	ips := map[string]string{"vm-nic-nsg": "10.10.1.4", "vm-subnet-nsg": "10.10.2.4", "vm-both-nsg": "10.10.2.5"}
	lockedNow := func(vm string) bool {
		for _, nsg := range nsgs {
			id := rgURL + "/providers/Microsoft.Network/networkSecurityGroups/" + nsg
			rules := map[string]armRule{}
			for _, name := range sim.RuleNames(id) {
				var r armRule
				b, _ := sim.RuleJSON(id, name)
				_ = json.Unmarshal(b, &r)
				rules[name] = r
			}
			if locked(rules, ips[vm], 22) {
				return true
			}
		}
		return false
	}
	for _, vm := range vms {
		waitFor(t, 15*time.Second, "lockdown of "+vm, func() bool { return lockedNow(vm) })
	}

	var reqs []requestRec
	for i, vm := range vms {
		var r requestRec
		p.must(202, "POST", "/api/v1/policies/scale/initiate", initiateBody(vm, 22, map[string]any{"duration": "PT3S", "allowedSourceAddressPrefix": fmt.Sprintf("203.0.113.%d", 20+i)}), &r, admin...)
		reqs = append(reqs, r)
	}
	allRules := func(open bool) func() bool {
		return func() bool {
			have := rulesNow()
			for _, r := range reqs {
				for _, g := range r.Grants {
					if have[g.RuleName] != open {
						return false
					}
				}
			}
			return true
		}
	}
	waitFor(t, 15*time.Second, "every grant's rule opened through the queue", allRules(true))
	waitFor(t, 25*time.Second, "every grant's rule closed by its scheduled close", allRules(false))
	for _, r := range reqs {
		waitFor(t, 10*time.Second, "request "+r.ID+" closed", func() bool {
			var got requestRec
			p.must(200, "GET", "/api/v1/requests/"+r.ID, nil, &got, admin...)
			return got.Status == "Closed"
		})
	}
	for _, vm := range vms {
		if !lockedNow(vm) {
			t.Errorf("%s lost its deny rule", vm)
		}
	}

	// A close that found its rule already gone (one write on a gate closes
	// everything due there) may still be on its way: wait for the queue to
	// drain before counting.
	waitFor(t, 15*time.Second, "the queue drained", func() bool {
		q := sb.State(t).Queues[queue]
		return len(q.Active) == 0 && int64(q.Counts.Completed) == host.Stats().Completes
	})

	// Both instances received and delivered queue messages, and served
	// forwarded HTTP.
	for _, in := range host.Instances() {
		s := in.Stats()
		t.Logf("instance %d: %d messages in %d worker invocations (%d failed), %d sessions, %d completes, %d abandons, %d api requests",
			in.Index(), s.Messages, s.Invocations["worker"], s.Failures["worker"], s.Sessions, s.Completes, s.Abandons, s.Invocations["api"])
		if s.Messages == 0 || s.Completes == 0 {
			t.Errorf("instance %d delivered no queue message", in.Index())
		}
		if s.Invocations["api"] == 0 {
			t.Errorf("instance %d served no forwarded request", in.Index())
		}
	}
	if q := sb.State(t).Queues[queue]; len(q.DeadLetters) != 0 {
		t.Errorf("dead letters: %v", q.DeadLetters)
	}
}

// azuriteClient reads an OAuth Azurite's tables with the development
// account's key, over HTTPS with the test's certificate.
func azuriteClient(t *testing.T, a *testenv.Azurite) (*aztables.ServiceClient, error) {
	pemBytes, err := os.ReadFile(a.CertFile())
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pemBytes)
	cred, err := aztables.NewSharedKeyCredential(testenv.AzuriteAccount, testenv.AzuriteKey)
	if err != nil {
		return nil, err
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	return aztables.NewServiceClientWithSharedKey(a.TableURL(), cred, &aztables.ClientOptions{ClientOptions: azcore.ClientOptions{Transport: client}})
}
