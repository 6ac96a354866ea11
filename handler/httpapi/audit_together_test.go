package httpapi_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"

	"jitaccess/handler/jit"
	"jitaccess/handler/tablestore"
	"jitaccess/handler/testenv"
)

// trailDown is a store whose audit trail is unreachable while down is set:
// AppendAudit fails, everything else works.
type trailDown struct {
	jit.Store
	down *atomic.Bool
}

func (s trailDown) AppendAudit(ctx context.Context, ev jit.AuditEvent) error {
	if s.down.Load() {
		return errors.New("audit trail unreachable (injected)")
	}
	return s.Store.AppendAudit(ctx, ev)
}

// tableOutage fails every request to one table while on is set, as a
// network outage towards it would.
type tableOutage struct {
	table string
	on    *atomic.Bool
}

func (o tableOutage) Do(r *http.Request) (*http.Response, error) {
	if o.on.Load() && strings.Contains(r.URL.Path, o.table) {
		return nil, fmt.Errorf("connection to %s refused (injected)", o.table)
	}
	return http.DefaultClient.Do(r)
}

// TestChangesAndAuditTogether: with the audit trail failing, every change
// the API accepts (policy put and delete, request, approve, open, extend,
// revoke, close) still ends with its audit event in the trail, and the
// trail cannot be ahead of a change either. On bbolt the two are one
// transaction; on Table Storage, whose audit table is out, the change's
// outbox row keeps its events until the sweep appends them.
func TestChangesAndAuditTogether(t *testing.T) {
	t.Run("bbolt", func(t *testing.T) {
		var down atomic.Bool
		s := newStack(t, stackOptions{store: func(st jit.Store) jit.Store { return trailDown{st, &down} }})
		changesAndAuditTogether(t, s, &down, false)
	})
	t.Run("tablestore", func(t *testing.T) {
		if testing.Short() {
			t.Skip("needs Azurite; run without -short")
		}
		az := testenv.StartAzurite(t)
		var b [6]byte
		_, _ = rand.Read(b[:])
		prefix := "t" + hex.EncodeToString(b[:])
		var down atomic.Bool
		ts, err := tablestore.NewFromConnectionString(az.ConnectionString(), tablestore.Config{TablePrefix: prefix,
			ClientOptions: &aztables.ClientOptions{ClientOptions: azcore.ClientOptions{
				Transport: tableOutage{table: prefix + "audit", on: &down},
				Retry:     policy.RetryOptions{MaxRetries: -1},
			}}})
		if err != nil {
			t.Fatal(err)
		}
		s := newStack(t, stackOptions{store: func(jit.Store) jit.Store { return ts }})
		changesAndAuditTogether(t, s, &down, true)
	})
}

func changesAndAuditTogether(t *testing.T, s *stack, down *atomic.Bool, lags bool) {
	ctx := t.Context()
	admin := easyAuth("admin-0", []string{jit.RoleAdmin})
	alice := easyAuth("alice", []string{jit.RoleRequester})
	bob := easyAuth("bob", []string{jit.RoleApprover})
	nic := nsgID("nsg-vm-nic")

	down.Store(true)
	s.must(200, admin, "PUT", "/api/v1/policies/gated", policyWithPorts("vm-nic-nsg",
		map[string]any{"required": true, "approvers": []string{"bob"}}, portBody(22, "*", nil)), nil)
	var r, d request
	s.must(202, alice, "POST", "/api/v1/policies/gated/initiate", initiate("vm-nic-nsg", "PT5M"), &r)
	s.must(200, bob, "POST", "/api/v1/requests/"+r.ID+"/approve", map[string]any{"comment": "ok"}, nil)
	waitFor(t, "the approved rule to open", func() bool { return slices.Contains(s.sim.RuleNames(nic), r.Grants[0].RuleName) })
	waitFor(t, "the open to be recorded", func() bool {
		got, err := s.store.GetRequest(ctx, r.ID)
		return err == nil && got.Grants[0].Status == jit.GrantInitiated
	})
	s.must(200, alice, "POST", "/api/v1/requests/"+r.ID+"/extend", map[string]any{"duration": "PT4M"}, nil)
	s.must(200, alice, "POST", "/api/v1/requests/"+r.ID+"/revoke", nil, nil)
	waitFor(t, "the revoked rule to close", func() bool {
		got, err := s.store.GetRequest(ctx, r.ID)
		return err == nil && got.Grants[0].Done()
	})
	s.must(202, alice, "POST", "/api/v1/policies/gated/initiate", initiate("vm-nic-nsg", "PT5M"), &d)
	s.must(200, bob, "POST", "/api/v1/requests/"+d.ID+"/deny", map[string]any{"comment": "no"}, nil)
	s.must(202, admin, "DELETE", "/api/v1/policies/gated", nil, nil)
	down.Store(false)

	want := []struct{ request, action string }{
		{"", jit.AuditPolicyPut}, {r.ID, jit.AuditRequest}, {r.ID, jit.AuditApprove}, {r.ID, jit.AuditOpen},
		{r.ID, jit.AuditExtend}, {r.ID, jit.AuditRevoke}, {r.ID, jit.AuditClose},
		{d.ID, jit.AuditRequest}, {d.ID, jit.AuditDeny}, {"", jit.AuditPolicyDelete},
	}
	missing := func() []string {
		var have []string
		if err := s.store.ScanAudit(ctx, jit.AuditFilter{}, func(ev jit.AuditEvent) error {
			have = append(have, ev.Request+"/"+ev.Action)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, w := range want {
			if !slices.Contains(have, w.request+"/"+w.action) {
				out = append(out, w.request+"/"+w.action)
			}
		}
		return out
	}
	before := missing()
	if lags && len(before) == 0 {
		t.Fatal("the audit table was out, yet no event lags: the outage was not injected")
	}
	if !lags && len(before) > 0 {
		t.Fatalf("changes stored without their audit events: %v", before)
	}
	if _, err := s.rec.Sweep(ctx); err != nil {
		t.Fatalf("Sweep: %v", err)
	}
	if after := missing(); len(after) > 0 {
		t.Fatalf("after the sweep, changes still without their audit events: %v (before it: %v)", after, before)
	}
	if n, err := s.store.RecoverAudit(ctx); err != nil || n != 0 {
		t.Errorf("RecoverAudit after the sweep: %d, %v; want nothing left", n, err)
	}
	t.Logf("events that waited for the sweep: %d of %d", len(before), len(want))
}
