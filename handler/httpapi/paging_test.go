package httpapi_test

import (
	"net/url"
	"slices"
	"strings"
	"testing"

	"jitaccess/handler/jit"
)

// pageOf is one page of a list.
type pageOf[T any] struct {
	Value    []T    `json:"value"`
	NextLink string `json:"nextLink"`
}

// follow reads a list page by page from path, checking each nextLink, and
// returns the pages' sizes and every item.
func follow[T any](t *testing.T, s *stack, who as, path string) ([]int, []T) {
	t.Helper()
	var sizes []int
	var all []T
	for i := 0; path != ""; i++ {
		if i > 1000 {
			t.Fatal("nextLink never ends")
		}
		var pg pageOf[T]
		s.must(200, who, "GET", path, nil, &pg)
		sizes = append(sizes, len(pg.Value))
		all = append(all, pg.Value...)
		path = ""
		if pg.NextLink != "" {
			u, err := url.Parse(pg.NextLink)
			if err != nil || !u.IsAbs() || u.Query().Get("$skipToken") == "" {
				t.Fatalf("nextLink %q is not a full URL with a $skipToken", pg.NextLink)
			}
			if !strings.HasPrefix(pg.NextLink, s.url+"/api/v1/") {
				t.Errorf("nextLink %q is not on the server's own URL %s", pg.NextLink, s.url)
			}
			path = strings.TrimPrefix(pg.NextLink, s.url)
		}
	}
	return sizes, all
}

// TestListsArePaged: every list answers at most a page, by default and at
// most, and a nextLink leads through the rest without losing or repeating
// an item.
func TestListsArePaged(t *testing.T) {
	s := newStack(t, stackOptions{})
	admin := easyAuth("admin-0", []string{jit.RoleAdmin, jit.RoleReader})
	alice := easyAuth("alice", []string{jit.RoleRequester})
	for _, p := range []struct{ name, vm string }{{"p-a", "vm-nic-nsg"}, {"p-b", "vm-subnet-nsg"}, {"p-c", "vm-both-nsg"}} {
		s.must(200, admin, "PUT", "/api/v1/policies/"+p.name, policyBody(p.vm, map[string]any{
			"approval": map[string]any{"required": true, "approvers": []string{"bob"}}}), nil)
	}
	const n = 103
	var made []string
	for range n {
		var r request
		s.must(202, alice, "POST", "/api/v1/policies/p-a/initiate", initiate("vm-nic-nsg", "PT1H"), &r)
		made = append(made, r.ID)
	}
	slices.Reverse(made) // newest first, as lists answer

	// The portal's poll: one default page, then the rest.
	sizes, all := follow[request](t, s, admin, "/api/v1/requests?status=Pending")
	if !slices.Equal(sizes, []int{100, 3}) {
		t.Errorf("pending requests came in pages of %v, want the default 100, then 3", sizes)
	}
	ids := make([]string, len(all))
	for i, r := range all {
		ids[i] = r.ID
	}
	if !slices.Equal(ids, made) {
		t.Errorf("paging lost, repeated or reordered requests: got %d, want %d newest first", len(ids), len(made))
	}
	sizes, _ = follow[request](t, s, alice, "/api/v1/requests?limit=40")
	if !slices.Equal(sizes, []int{40, 40, 23}) {
		t.Errorf("alice's requests by 40: pages %v, want 40, 40, 23", sizes)
	}

	sizes, pols := follow[struct{ Name string }](t, s, admin, "/api/v1/policies?limit=2")
	if !slices.Equal(sizes, []int{2, 1}) || len(pols) != 3 || pols[0].Name != "p-a" || pols[2].Name != "p-c" {
		t.Errorf("policies by 2: pages %v, %v; want p-a, p-b | p-c", sizes, pols)
	}

	var allVMs pageOf[struct{ ID string }]
	s.must(200, admin, "GET", "/api/v1/vms", nil, &allVMs)
	sizes, vms := follow[struct{ ID string }](t, s, admin, "/api/v1/vms?limit=1")
	if len(vms) != len(allVMs.Value) || len(sizes) != len(vms) || allVMs.NextLink != "" {
		t.Errorf("VMs one by one: %d pages, %d VMs; want each of the %d VMs on its own page", len(sizes), len(vms), len(allVMs.Value))
	}
	for i := 1; i < len(vms); i++ {
		if strings.ToLower(vms[i-1].ID) >= strings.ToLower(vms[i].ID) {
			t.Errorf("VMs out of order or repeated: %s before %s", vms[i-1].ID, vms[i].ID)
		}
	}

	sizes, evs := follow[struct{ ID string }](t, s, admin, "/api/v1/audit?limit=50")
	if len(sizes) < 3 || sizes[0] != 50 || len(evs) < n {
		t.Errorf("audit by 50: pages %v, %d events; want pages of 50 and at least %d events", sizes, len(evs), n)
	}
	seen := map[string]bool{}
	for _, ev := range evs {
		if seen[ev.ID] {
			t.Errorf("audit event %s came twice", ev.ID)
		}
		seen[ev.ID] = true
	}
}

// TestBadPagingIsRefused: a limit beyond a list's page, or a token this
// list did not give out, is a 400 that says what to do.
func TestBadPagingIsRefused(t *testing.T) {
	s := newStack(t, stackOptions{})
	admin := easyAuth("admin-0", []string{jit.RoleAdmin, jit.RoleReader})
	s.must(200, admin, "PUT", "/api/v1/policies/p-a", policyBody("vm-nic-nsg", nil), nil)
	s.must(200, admin, "PUT", "/api/v1/policies/p-b", policyBody("vm-subnet-nsg", nil), nil)
	var pols pageOf[struct{ Name string }]
	s.must(200, admin, "GET", "/api/v1/policies?limit=1", nil, &pols)

	cases := []struct{ path, want string }{
		{"/api/v1/requests?limit=0", "limit must be a whole number between 1 and 1000"},
		{"/api/v1/requests?limit=1001", "a page holds at most 1000 requests"},
		{"/api/v1/requests?limit=ten", "limit must be a whole number"},
		{"/api/v1/requests?$top=-1", "$top must be a whole number"},
		{"/api/v1/requests?limit=5&$top=5", "give limit or $top, not both"},
		{"/api/v1/requests?$skipToken=garbage", "$skipToken is not one this list gave out"},
		{"/api/v1/requests?$skipToken=" + strings.Repeat("A", 5000), "$skipToken is not one this list gave out"},
		{"/api/v1/vms?limit=100000", "a page holds at most 1000 VMs"},
		{"/api/v1/policies?$skipToken=%", "the query string is not valid"},
		{"/api/v1/audit?limit=10001", "a page holds at most 10000 audit events"},
		{"/api/v1/audit?format=csv&limit=100001", "limit must be a whole number between 1 and 100000"},
	}
	for _, c := range cases {
		status, raw := s.do(admin, "GET", c.path, nil, nil)
		if status != 400 || !strings.Contains(raw, `"code":"BadRequest"`) || !strings.Contains(raw, c.want) {
			t.Errorf("GET %s: %d %s; want 400 BadRequest saying %q", c.path, status, raw, c.want)
		}
	}
	// A token of the policies list means nothing to the requests list.
	u, _ := url.Parse(pols.NextLink)
	if u == nil || u.Query().Get("$skipToken") == "" {
		t.Fatalf("policies?limit=1 gave no nextLink: %+v", pols)
	}
	status, raw := s.do(admin, "GET", "/api/v1/requests?$skipToken="+url.QueryEscape(u.Query().Get("$skipToken")), nil, nil)
	if status != 400 || !strings.Contains(raw, "$skipToken is not one this list gave out") {
		t.Errorf("a policies token on requests: %d %s, want 400", status, raw)
	}
}
