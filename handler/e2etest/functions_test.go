package e2etest

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"
	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"

	"jitaccess/handler/armsim"
	"jitaccess/handler/jit"
	"jitaccess/handler/testenv"
)

// tokenEndpoint is a local managed-identity endpoint in App Service's shape
// (IDENTITY_ENDPOINT / IDENTITY_HEADER), so the real azidentity code path runs.
type tokenEndpoint struct {
	srv      *httptest.Server
	calls    atomic.Int32
	mu       sync.Mutex
	resource []string
	clientID []string
	issued   map[string][]string // resource -> tokens handed out
}

const identityHeader = "test-identity-header"

func startTokenEndpoint(t *testing.T) *tokenEndpoint {
	te := &tokenEndpoint{issued: map[string][]string{}}
	te.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-IDENTITY-HEADER") != identityHeader {
			http.Error(w, `{"error":"bad identity header"}`, http.StatusUnauthorized)
			return
		}
		te.calls.Add(1)
		resource := r.URL.Query().Get("resource")
		token := miToken(resource)
		te.mu.Lock()
		te.resource = append(te.resource, resource)
		te.clientID = append(te.clientID, r.URL.Query().Get("client_id"))
		te.issued[resource] = append(te.issued[resource], token)
		te.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"access_token":%q,"expires_on":"%d","resource":%q,"token_type":"Bearer"}`,
			token, time.Now().Add(time.Hour).Unix(), resource)
	}))
	t.Cleanup(te.srv.Close)
	return te
}

// miToken is the access token the local endpoint hands out for resource:
// JWT-shaped with the claims a service checks (audience, Entra ID issuer,
// lifetime), signed by nobody. Azurite's "--oauth basic" takes it as it
// takes Entra ID's; the ARM simulator takes any token.
func miToken(resource string) string {
	enc := base64.RawURLEncoding.EncodeToString
	claims, _ := json.Marshal(map[string]any{
		"aud": resource, "iss": "https://sts.windows.net/00000000-0000-0000-0000-0000000000aa/",
		"iat": time.Now().Add(-time.Minute).Unix(), "nbf": time.Now().Add(-time.Minute).Unix(), "exp": time.Now().Add(time.Hour).Unix(),
		"oid": "00000000-0000-0000-0000-0000000000c1",
	})
	return enc([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + enc(claims) + "." + enc([]byte("unsigned"))
}

// fakeHost plays the Functions host's Service Bus trigger: it takes messages
// from the queue session by session and POSTs them to the handler's worker
// function in the host's payload shape, completing on 2xx, abandoning
// otherwise.
type fakeHost struct {
	t         *testing.T
	handler   string
	client    *azservicebus.Client
	queue     string
	delivered atomic.Int32
	failed    atomic.Int32
}

func (h *fakeHost) run(ctx context.Context) {
	for ctx.Err() == nil {
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		sess, err := h.client.AcceptNextSessionForQueue(sctx, h.queue, nil)
		cancel()
		if err != nil {
			continue // no session with messages yet
		}
		for ctx.Err() == nil {
			rctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
			msgs, err := sess.ReceiveMessages(rctx, 1, nil)
			cancel()
			if err != nil || len(msgs) == 0 {
				break
			}
			for _, m := range msgs {
				if h.deliver(ctx, m) {
					_ = sess.CompleteMessage(ctx, m, nil)
				} else {
					_ = sess.AbandonMessage(ctx, m, nil)
				}
			}
		}
		_ = sess.Close(context.Background())
	}
}

// deliver POSTs one message as the host does: the body JSON-encoded as a
// string (twice for every other message, as hosts have been seen to do),
// metadata strings quoted, numbers as strings, the enqueued time without a zone.
func (h *fakeHost) deliver(ctx context.Context, m *azservicebus.ReceivedMessage) bool {
	body, _ := json.Marshal(string(m.Body))
	if h.delivered.Load()%2 == 1 {
		body, _ = json.Marshal(string(body))
	}
	quote := func(s string) string { b, _ := json.Marshal(s); return string(b) }
	sid := ""
	if m.SessionID != nil {
		sid = *m.SessionID
	}
	meta := map[string]string{
		"MessageId":       quote(m.MessageID),
		"DeliveryCount":   fmt.Sprint(m.DeliveryCount),
		"SequenceNumber":  fmt.Sprint(*m.SequenceNumber),
		"EnqueuedTimeUtc": m.EnqueuedTime.UTC().Format("2006-01-02T15:04:05"),
		"SessionId":       quote(sid),
	}
	metaJSON, _ := json.Marshal(meta)
	payload := `{"Data":{"msg":` + string(body) + `},"Metadata":` + string(metaJSON) + `}`
	req, _ := http.NewRequestWithContext(ctx, "POST", h.handler+"/worker", strings.NewReader(payload))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Azure-Functions-InvocationId", fmt.Sprintf("inv-%d", h.delivered.Load()))
	resp, err := http.DefaultClient.Do(req)
	h.delivered.Add(1)
	if err != nil {
		h.failed.Add(1)
		return false
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		h.t.Errorf("worker answered Content-Type %q", ct)
	}
	if resp.StatusCode/100 != 2 {
		h.failed.Add(1)
		return false
	}
	return true
}

// easyAuth is the X-MS-CLIENT-PRINCIPAL header App Service Authentication adds.
func easyAuth(id string, roles ...string) []string {
	claims := []map[string]string{{"typ": "http://schemas.microsoft.com/identity/claims/objectidentifier", "val": id}}
	for _, r := range roles {
		claims = append(claims, map[string]string{"typ": "roles", "val": r})
	}
	b, _ := json.Marshal(map[string]any{"auth_typ": "aad", "claims": claims, "name_typ": "name", "role_typ": "roles"})
	return []string{"X-MS-CLIENT-PRINCIPAL", base64.StdEncoding.EncodeToString(b), "X-MS-CLIENT-PRINCIPAL-ID", id,
		"X-MS-CLIENT-PRINCIPAL-NAME", id + "@example.com", "X-MS-CLIENT-PRINCIPAL-IDP", "aad"}
}

// TestFunctionsModeEndToEnd runs the built handler as the Functions host
// would, on Azurite, the Service Bus double and the ARM simulator, with the
// managed identity served by a local token endpoint.
func TestFunctionsModeEndToEnd(t *testing.T) {
	// Table Storage and Service Bus are reached as in Azure: by name, over
	// TLS, with the managed identity's tokens. One certificate serves both,
	// and the handler trusts it (SSL_CERT_FILE).
	cert, key := testenv.SelfSignedCert(t, t.TempDir())
	azurite := testenv.StartAzuriteOAuth(t, cert, key)
	sb := testenv.StartServiceBusTLS(t, cert, key)
	tokens := startTokenEndpoint(t)

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

	addr := freeAddr(t)
	port := addr[strings.LastIndexByte(addr, ':')+1:]
	prefix := fmt.Sprintf("e2e%d", time.Now().UnixNano()%1e9)
	queue := "jit-e2e"
	cmd := exec.Command(handlerBinary(t))
	cmd.Env = append(os.Environ(),
		"FUNCTIONS_CUSTOMHANDLER_PORT="+port,
		"JIT_TABLES_URL="+azurite.TableURL(), // with the managed identity
		"SSL_CERT_FILE="+cert,
		"JIT_TABLE_PREFIX="+prefix,
		// With the managed identity; the name is the certificate's, the
		// address the double's.
		"ServiceBusConnection__fullyQualifiedNamespace=localhost",
		"JIT_SERVICEBUS_ENDPOINT="+sb.Namespace(),
		"JIT_SERVICEBUS_QUEUE="+queue,
		"JIT_ARM_ENDPOINT="+armSrv.URL,
		"JIT_SUBSCRIPTIONS="+sub,
		"IDENTITY_ENDPOINT="+tokens.srv.URL+"/msi/token",
		"IDENTITY_HEADER="+identityHeader,
		"AZURE_CLIENT_ID=00000000-0000-0000-0000-0000000000c1",
		"JIT_MIN_DURATION=1s",
		"JIT_LOG_LEVEL=debug",
	)
	var logs bytes.Buffer
	var mu sync.Mutex
	cmd.Stdout, cmd.Stderr = &lockedWriter{mu: &mu, w: &logs}, &lockedWriter{mu: &mu, w: &logs}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			mu.Lock()
			t.Logf("handler output:\n%s", tail(logs.String(), 20000))
			mu.Unlock()
		}
	})
	p := &proc{t: t, cmd: cmd, base: "http://" + addr, logs: &logs, mu: &mu}
	// The host polls GET / until the handler answers.
	waitFor(t, 20*time.Second, "the handler to answer GET /", func() bool {
		resp, err := http.Get(p.base + "/")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})

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

	client, err := azservicebus.NewClientFromConnectionString(sb.ConnectionString(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close(context.Background()) })
	host := &fakeHost{t: t, handler: p.base, client: client, queue: queue}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go host.run(ctx)

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
	tokens.mu.Lock()
	if !slices.ContainsFunc(tokens.issued["https://management.core.windows.net/"], func(tok string) bool { _, ok := authSeen.Load("Bearer " + tok); return ok }) {
		t.Errorf("ARM never saw a token the managed identity endpoint issued for ARM")
	}
	tokens.mu.Unlock()

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

	// Revoke cancels the scheduled close on the broker.
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
	if n := len(scheduledFor(long.ID)); n != 0 {
		t.Errorf("the scheduled close is still on the broker after revoke")
	}
	if c := sb.State(t).Queues[queue].Counts.Cancelled; c != cancelledBefore+1 {
		t.Errorf("cancelled count %d, want %d", c, cancelledBefore+1)
	}

	// Extend reschedules: the old close is cancelled, a later one scheduled.
	var ext requestRec
	p.must(202, "POST", "/api/v1/policies/fn/initiate", initiateBody("vm-nic-nsg", 22, map[string]any{"duration": "PT1H", "allowedSourceAddressPrefix": "203.0.113.9"}), &ext, admin...)
	before := scheduledFor(ext.ID)
	if len(before) != 1 {
		t.Fatalf("scheduled closes before extend: %d", len(before))
	}
	p.must(200, "POST", "/api/v1/requests/"+ext.ID+"/extend", map[string]any{"duration": "PT2H"}, nil, admin...)
	after := scheduledFor(ext.ID)
	if len(after) != 1 || after[0].Seq == before[0].Seq || !after[0].ScheduledTime.After(before[0].ScheduledTime.Add(50*time.Minute)) {
		t.Errorf("after extend the broker holds %+v (before: %+v)", after, before)
	}
	p.must(400, "POST", "/api/v1/requests/"+ext.ID+"/extend", map[string]any{"duration": "PT4H"}, nil, admin...)

	// The Event Grid and timer functions, invoked in the host's shape, repair
	// what was changed by hand.
	invoke := func(fn, payload string) {
		t.Helper()
		var out struct {
			Outputs map[string]any `json:"Outputs"`
			Logs    []string       `json:"Logs"`
		}
		p.must(200, "POST", "/"+fn, payload, &out)
		if out.Outputs == nil {
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
	deny := jit.DenyRuleName(vmID("vm-nic-nsg"))
	handDelete(deny)
	invoke("events", `{"Data":{"event":{"id":"e-1","topic":"/subscriptions/`+sub+`","subject":"`+nicNSG+`/securityRules/`+deny+
		`","eventType":"Microsoft.Resources.ResourceDeleteSuccess","eventTime":"2026-11-24T07:00:00Z","data":{}}},"Metadata":{}}`)
	if !hasRule(deny) {
		t.Errorf("the events function did not restore the deny rule deleted by hand")
	}
	handDelete(ext.Grants[0].RuleName)
	invoke("sweeper", `{"Data":{"timer":{"Schedule":{"AdjustForDST":true},"ScheduleStatus":null,"IsPastDue":false}},"Metadata":{}}`)
	if !hasRule(ext.Grants[0].RuleName) {
		t.Errorf("the sweeper function did not put back a live grant's rule deleted by hand")
	}

	// ARM, Tables and Service Bus were all reached with the one identity
	// (Azurite and the double's TLS listener take nothing else here).
	tokens.mu.Lock()
	for _, want := range []string{"https://management.core.windows.net/", "https://storage.azure.com", "https://servicebus.azure.net"} {
		if !slices.ContainsFunc(tokens.resource, func(r string) bool { return strings.TrimSuffix(r, "/") == strings.TrimSuffix(want, "/") }) {
			t.Errorf("no token asked for %s: resources %v", want, tokens.resource)
		}
	}
	for _, id := range tokens.clientID {
		if id != "00000000-0000-0000-0000-0000000000c1" {
			t.Errorf("a token was asked for client id %q, want the user-assigned identity's", id)
		}
	}
	tokens.mu.Unlock()
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
	if host.delivered.Load() < 4 {
		t.Errorf("the host delivered %d messages", host.delivered.Load())
	}
	t.Logf("host delivered %d messages (%d failed); token endpoint called %d times", host.delivered.Load(), host.failed.Load(), tokens.calls.Load())
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
