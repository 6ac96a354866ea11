package httpapi_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"jitaccess/handler/armsim"
	"jitaccess/handler/azurenet"
	"jitaccess/handler/httpapi"
	"jitaccess/handler/jit"
	"jitaccess/handler/localmode"
	"jitaccess/handler/localqueue"
)

const sub = "11111111-1111-1111-1111-111111111111"

func vmID(name string) string {
	return "/subscriptions/" + sub + "/resourceGroups/demo/providers/Microsoft.Compute/virtualMachines/" + name
}

func nsgID(name string) string {
	return "/subscriptions/" + sub + "/resourceGroups/demo/providers/Microsoft.Network/networkSecurityGroups/" + name
}

// stack is the API over the real adapters: bbolt, the local queue and the
// azurenet driver talking to the ARM simulator on a real listener.
type stack struct {
	t      *testing.T
	url    string
	armURL string
	sim    *armsim.Server
	worker *jit.Applier
	rec    *jit.Reconciler
	store  jit.Store
}

type stackOptions struct {
	local          bool
	pendingExpiry  time.Duration
	notifier       jit.Notifier
	noticeBackoff  time.Duration
	trustedProxies []netip.Prefix
	stuckAfter     time.Duration
	dropOpens      bool // the queue loses every open operation
	// store, when set, is the service's store instead of the bbolt one
	// (which then holds only the queue); it gets the bbolt store to wrap.
	store  func(jit.Store) jit.Store
	limits jit.Limits // none to speak of when zero
}

// droppingQueue loses open operations, as a broken broker might.
type droppingQueue struct{ jit.Queue }

func (q droppingQueue) Enqueue(ctx context.Context, ops []jit.Operation) error {
	var keep []jit.Operation
	for _, op := range ops {
		if op.Kind != jit.OpOpen {
			keep = append(keep, op)
		}
	}
	return q.Queue.Enqueue(ctx, keep)
}

func newStack(t *testing.T, o stackOptions) *stack {
	t.Helper()
	sim := armsim.New(armsim.Options{})
	armSrv := httptest.NewServer(sim)
	t.Cleanup(armSrv.Close)
	net, err := localmode.SimulatorNetwork(azurenet.Config{Owner: jit.Owner{Deployment: jit.DefaultDeployment}, Subscriptions: []string{sub}, PollFrequency: 5 * time.Millisecond}, armSrv.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg := localmode.Config{
		Path:    filepath.Join(t.TempDir(), "jit.db"),
		Network: net,
		Service: jit.Config{MinDuration: time.Second, Subscriptions: []string{sub}, PendingExpiry: o.pendingExpiry,
			Notifier: o.notifier, NoticeBackoff: o.noticeBackoff, StuckAfter: o.stuckAfter, Log: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)},
		Queue:     localqueue.Options{InitialBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond},
		WrapStore: o.store,
	}
	if o.dropOpens {
		cfg.WrapQueue = func(q jit.Queue) jit.Queue { return droppingQueue{q} }
	}
	if o.limits == (jit.Limits{}) {
		// Tests of other things make many changes as one caller.
		o.limits = jit.Limits{MaxOpenRequests: 10000, WritesPerMinute: -1}
	}
	cfg.Service.Limits = o.limits
	app, err := localmode.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := app.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	api := httptest.NewServer(httpapi.New(app.API, httpapi.Config{Local: o.local, TrustedProxies: o.trustedProxies}))
	t.Cleanup(func() {
		api.Close()
		closeCtx, done := context.WithTimeout(context.Background(), 5*time.Second)
		defer done()
		_ = app.Close(closeCtx)
	})
	return &stack{t: t, url: api.URL, armURL: armSrv.URL, sim: sim, worker: app.Worker, rec: app.Reconciler, store: app.Store}
}

// as is a caller: headers that identify them.
type as []string

// easyAuth is a caller as App Service Authentication presents them.
func easyAuth(id string, roles []string, groups ...string) as {
	claims := []map[string]string{{"typ": "http://schemas.microsoft.com/identity/claims/objectidentifier", "val": id}}
	for _, r := range roles {
		claims = append(claims, map[string]string{"typ": "roles", "val": r})
	}
	for _, g := range groups {
		claims = append(claims, map[string]string{"typ": "groups", "val": g})
	}
	b, _ := json.Marshal(map[string]any{"auth_typ": "aad", "claims": claims, "name_typ": "name", "role_typ": "roles"})
	return as{"X-MS-CLIENT-PRINCIPAL", base64.StdEncoding.EncodeToString(b), "X-MS-CLIENT-PRINCIPAL-ID", id, "X-MS-CLIENT-PRINCIPAL-NAME", id}
}

func (s *stack) do(who as, method, path string, body any, out any) (int, string) {
	s.t.Helper()
	status, raw := s.doWith(who, method, path, body, nil)
	if out != nil && status < 300 {
		if err := json.Unmarshal([]byte(raw), out); err != nil {
			s.t.Fatalf("%s %s: %v in %s", method, path, err, raw)
		}
	}
	return status, raw
}

// doWith calls the API and lets seen look at the response.
func (s *stack) doWith(who as, method, path string, body any, seen func(*http.Response)) (int, string) {
	s.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, s.url+path, rd)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(who); i += 2 {
		req.Header.Set(who[i], who[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if seen != nil {
		seen(resp)
	}
	return resp.StatusCode, string(raw)
}

func (s *stack) must(want int, who as, method, path string, body any, out any) string {
	s.t.Helper()
	got, raw := s.do(who, method, path, body, out)
	if got != want {
		s.t.Fatalf("%s %s: status %d, want %d: %s", method, path, got, want, raw)
	}
	return raw
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func policyBody(vm string, extra map[string]any) map[string]any {
	props := map[string]any{"virtualMachines": []any{map[string]any{"id": vmID(vm), "ports": []any{
		map[string]any{"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "*", "maxRequestAccessDuration": "PT3H"}}}}}
	for k, v := range extra {
		props[k] = v
	}
	return map[string]any{"properties": props}
}

func initiate(vm string, duration string) map[string]any {
	return map[string]any{"virtualMachines": []any{map[string]any{"id": vmID(vm), "ports": []any{
		map[string]any{"number": 22, "duration": duration, "allowedSourceAddressPrefix": "203.0.113.7"}}}}, "justification": "test"}
}

type request struct {
	ID       string `json:"id"`
	Status   string `json:"status"`
	Approval *struct {
		Decisions []struct {
			By      string `json:"by"`
			Approve bool   `json:"approve"`
		} `json:"decisions"`
	} `json:"approval"`
	Grants []struct {
		RuleName string `json:"ruleName"`
		Status   string `json:"status"`
	} `json:"grants"`
	VirtualMachines []struct {
		Ports []struct {
			Status       string `json:"status"`
			StatusReason string `json:"statusReason"`
			Source       string `json:"allowedSourceAddressPrefix"`
		} `json:"ports"`
	} `json:"virtualMachines"`
}
