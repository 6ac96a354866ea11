package testenv

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// IdentityHeader is the secret a TokenEndpoint expects in X-IDENTITY-HEADER;
// give it to the handler as IDENTITY_HEADER.
const IdentityHeader = "test-identity-header"

// TokenEndpoint is a local managed-identity endpoint in App Service's shape
// (IDENTITY_ENDPOINT / IDENTITY_HEADER), so the real azidentity code path
// runs against emulators that take Entra ID tokens.
type TokenEndpoint struct {
	srv      *httptest.Server
	calls    atomic.Int32
	mu       sync.Mutex
	resource []string
	clientID []string
	issued   map[string][]string // resource -> tokens handed out
}

// NewTokenEndpoint starts a token endpoint on a loopback port; the caller
// stops it with Close.
func NewTokenEndpoint() *TokenEndpoint {
	te := &TokenEndpoint{issued: map[string][]string{}}
	te.srv = httptest.NewServer(http.HandlerFunc(te.serve))
	return te
}

// StartTokenEndpoint is NewTokenEndpoint for tests: the endpoint stops when
// the test ends.
func StartTokenEndpoint(t testing.TB) *TokenEndpoint {
	te := NewTokenEndpoint()
	t.Cleanup(te.Close)
	return te
}

func (te *TokenEndpoint) serve(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("X-IDENTITY-HEADER") != IdentityHeader {
		http.Error(w, `{"error":"bad identity header"}`, http.StatusUnauthorized)
		return
	}
	te.calls.Add(1)
	resource := r.URL.Query().Get("resource")
	token := MIToken(resource)
	te.mu.Lock()
	te.resource = append(te.resource, resource)
	te.clientID = append(te.clientID, r.URL.Query().Get("client_id"))
	te.issued[resource] = append(te.issued[resource], token)
	te.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"access_token":%q,"expires_on":"%d","resource":%q,"token_type":"Bearer"}`,
		token, time.Now().Add(time.Hour).Unix(), resource)
}

// Close stops the endpoint.
func (te *TokenEndpoint) Close() { te.srv.Close() }

// URL is the value for IDENTITY_ENDPOINT.
func (te *TokenEndpoint) URL() string { return te.srv.URL + "/msi/token" }

// Env is the environment a process needs to use this endpoint as its
// managed identity: IDENTITY_ENDPOINT and IDENTITY_HEADER.
func (te *TokenEndpoint) Env() []string {
	return []string{"IDENTITY_ENDPOINT=" + te.URL(), "IDENTITY_HEADER=" + IdentityHeader}
}

// Calls is how many tokens were asked for with the right header.
func (te *TokenEndpoint) Calls() int { return int(te.calls.Load()) }

// Resources lists the resource of every token asked for, in order.
func (te *TokenEndpoint) Resources() []string {
	te.mu.Lock()
	defer te.mu.Unlock()
	return slices.Clone(te.resource)
}

// ClientIDs lists the client_id of every token asked for, in order (empty
// for the system-assigned identity).
func (te *TokenEndpoint) ClientIDs() []string {
	te.mu.Lock()
	defer te.mu.Unlock()
	return slices.Clone(te.clientID)
}

// Issued lists the tokens handed out for resource.
func (te *TokenEndpoint) Issued(resource string) []string {
	te.mu.Lock()
	defer te.mu.Unlock()
	return slices.Clone(te.issued[resource])
}

// MIClientID is the client id of the managed identity MIToken stands for
// (its appid claim; set AZURE_CLIENT_ID to it).
const MIClientID = "00000000-0000-0000-0000-0000000000c1"

// MIToken is the access token the local endpoint hands out for resource:
// JWT-shaped with the claims a service checks (audience, Entra ID issuer,
// lifetime), signed by nobody. Azurite's "--oauth basic" takes it as it
// takes Entra ID's; the ARM simulator takes any token.
func MIToken(resource string) string {
	enc := base64.RawURLEncoding.EncodeToString
	claims, _ := json.Marshal(map[string]any{
		"aud": resource, "iss": "https://sts.windows.net/00000000-0000-0000-0000-0000000000aa/",
		"iat": time.Now().Add(-time.Minute).Unix(), "nbf": time.Now().Add(-time.Minute).Unix(), "exp": time.Now().Add(time.Hour).Unix(),
		"oid": "00000000-0000-0000-0000-0000000000c1", "appid": MIClientID,
	})
	return enc([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + enc(claims) + "." + enc([]byte("unsigned"))
}
