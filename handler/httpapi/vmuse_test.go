package httpapi_test

import (
	"context"
	"sync/atomic"
	"testing"

	"jitaccess/handler/jit"
)

// listCounter counts the requests the store's listings return.
type listCounter struct {
	jit.Store
	listed atomic.Int64
}

func (c *listCounter) ListRequests(ctx context.Context, f jit.RequestFilter) ([]jit.Request, error) {
	rs, err := c.Store.ListRequests(ctx, f)
	c.listed.Add(int64(len(rs)))
	return rs, err
}

// TestVMListReadsNoPastRequests: GET /vms shows each VM's recent use
// without listing past requests: it reads the use kept as grants opened,
// and lists only the live requests for open ports. Before, it decoded
// every request of the last 7 days on every call.
func TestVMListReadsNoPastRequests(t *testing.T) {
	counter := &listCounter{}
	s := newStack(t, stackOptions{store: func(st jit.Store) jit.Store { counter.Store = st; return counter }})
	admin := easyAuth("admin-0", []string{jit.RoleAdmin})
	alice := easyAuth("alice", []string{jit.RoleRequester})
	s.must(200, admin, "PUT", "/api/v1/policies/open", policyBody("vm-nic-nsg", nil), nil)
	const past = 6
	var last request
	for i := range past + 1 {
		var r request
		s.must(202, alice, "POST", "/api/v1/policies/open/initiate", initiate("vm-nic-nsg", "PT1H"), &r)
		waitFor(t, "the rule open", func() bool {
			var got request
			s.must(200, admin, "GET", "/api/v1/requests/"+r.ID, nil, &got)
			return got.Grants[0].Status == jit.GrantInitiated
		})
		if i < past {
			s.must(200, alice, "POST", "/api/v1/requests/"+r.ID+"/revoke", nil, nil)
			waitFor(t, "the request closed", func() bool {
				var got request
				s.must(200, admin, "GET", "/api/v1/requests/"+r.ID, nil, &got)
				return got.Status == jit.RequestClosed
			})
		}
		last = r
	}

	type vmOut struct {
		Name             string `json:"name"`
		ApprovedRequests int    `json:"approvedRequestsLast7Days"`
		LastUser         string `json:"lastUser"`
		OpenPorts        []struct {
			Request string `json:"request"`
		} `json:"openPorts"`
	}
	var out pageOf[vmOut]
	// The use is counted just after the grant records its open.
	waitFor(t, "the last open counted", func() bool {
		counter.listed.Store(0)
		s.must(200, admin, "GET", "/api/v1/vms", nil, &out)
		for _, v := range out.Value {
			if v.Name == "vm-nic-nsg" && v.ApprovedRequests == past+1 {
				return true
			}
		}
		return false
	})
	if n := counter.listed.Load(); n > 1 {
		t.Errorf("GET /vms listed %d requests from the store; want only the one live request", n)
	}
	for _, v := range out.Value {
		if v.Name != "vm-nic-nsg" {
			continue
		}
		if v.ApprovedRequests != past+1 || v.LastUser != "alice" || len(v.OpenPorts) != 1 || v.OpenPorts[0].Request != last.ID {
			t.Errorf("vm-nic-nsg: %d approved requests, last user %q, open ports %+v; want %d, alice, port 22 of %s",
				v.ApprovedRequests, v.LastUser, v.OpenPorts, past+1, last.ID)
		}
		return
	}
	t.Fatal("vm-nic-nsg not listed")
}
