package e2etest

import (
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
)

// A web page can make a browser send requests to 127.0.0.1 under a name
// of its own (DNS rebinding); local mode, where every caller is an
// administrator, answers only requests addressed to itself: its listen
// address, localhost or the loopback, on its own port. The API, the ARM
// simulator under /_arm and the portal alike.
func TestLocalAnswersOnlyRequestsAddressedToIt(t *testing.T) {
	addr := freeAddr(t)
	p := startLocal(t, t.TempDir(), addr)
	_, port, _ := net.SplitHostPort(addr)
	paths := []string{"/healthz", "/api/v1/vms", "/_arm/subscriptions/11111111-1111-1111-1111-111111111111/providers/Microsoft.Network/networkSecurityGroups?api-version=2024-05-01", "/"}
	for _, tc := range []struct {
		host    string
		refused bool
	}{
		{addr, false},
		{"localhost:" + port, false},
		{"LOCALHOST:" + port, false},
		{"[::1]:" + port, false},
		{"attacker.example:" + port, true},
		{"localhost.attacker.example:" + port, true},
		{"127.0.0.1.nip.io:" + port, true},
		{"127.0.0.1:1" + port, false}, // a forwarded port reaches us too
		{"127.0.0.1", false},
		{"attacker.example", true},
	} {
		for _, path := range paths {
			req, err := http.NewRequest("GET", p.base+path, nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Host = tc.host
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatalf("GET %s with Host %s: %v", path, tc.host, err)
			}
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
			resp.Body.Close()
			refused := resp.StatusCode == http.StatusMisdirectedRequest
			if refused != tc.refused {
				t.Errorf("GET %s with Host %s: %d %s; want refused = %v", path, tc.host, resp.StatusCode, strings.TrimSpace(string(body)), tc.refused)
			}
			if refused && !strings.Contains(string(body), "Host") {
				t.Errorf("GET %s with Host %s: the refusal %q should name the Host header", path, tc.host, body)
			}
		}
	}
}
