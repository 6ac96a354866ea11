package e2etest

import (
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"jitaccess/handler/armsim"
)

// The binary is built once per test run.
var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

func handlerBinary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs the handler: run without -short (make test does)")
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "jitaccess-e2e-bin")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "handler")
		cmd := exec.Command("go", "build", "-o", binPath, "jitaccess/handler")
		cmd.Stderr = os.Stderr
		buildErr = cmd.Run()
	})
	if buildErr != nil {
		t.Fatalf("building handler: %v", buildErr)
	}
	return binPath
}

// proc is a running `handler local`.
type proc struct {
	t    *testing.T
	cmd  *exec.Cmd
	base string
	logs *bytes.Buffer
	mu   *sync.Mutex
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// startLocal starts `handler local` with the given data dir and listen
// address and waits until it answers /healthz.
func startLocal(t *testing.T, dataDir, addr string, extraEnv ...string) *proc {
	t.Helper()
	cmd := exec.Command(handlerBinary(t), "local")
	cmd.Env = append(os.Environ(),
		"JIT_LISTEN="+addr,
		"JIT_DATA_DIR="+dataDir,
		"JIT_MIN_DURATION=1s",
		"JIT_LOG_LEVEL=debug",
	)
	cmd.Env = append(cmd.Env, extraEnv...)
	p := &proc{t: t, cmd: cmd, base: "http://" + addr, logs: &bytes.Buffer{}, mu: &sync.Mutex{}}
	w := &lockedWriter{mu: p.mu, w: p.logs}
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting handler: %v", err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
		if t.Failed() {
			p.mu.Lock()
			t.Logf("handler output:\n%s", tail(p.logs.String(), 20000))
			p.mu.Unlock()
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get(p.base + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return p
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	t.Fatalf("handler did not answer /healthz within 20s; output:\n%s", p.logs.String())
	return nil
}

// kill stops the process at once, as a crash would.
func (p *proc) kill() {
	p.t.Helper()
	if err := p.cmd.Process.Kill(); err != nil {
		p.t.Fatal(err)
	}
	_ = p.cmd.Wait()
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// call sends a request and decodes a JSON answer into out (when not nil).
// It returns the status and the raw body.
func (p *proc) call(method, path string, body any, out any, headers ...string) (int, []byte) {
	p.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		js, err := json.Marshal(b)
		if err != nil {
			p.t.Fatal(err)
		}
		rd = bytes.NewReader(js)
	}
	req, err := http.NewRequest(method, p.base+path, rd)
	if err != nil {
		p.t.Fatal(err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if method == "GET" && strings.HasPrefix(path, "/_arm/") {
		// The test looking at the estate is not ARM traffic: not counted,
		// never throttled.
		req.Header.Set(armsim.ObserverHeader, "e2etest")
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		p.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if out != nil && len(raw) > 0 && strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(raw, out); err != nil {
			p.t.Fatalf("%s %s: decoding %s: %v", method, path, raw, err)
		}
	}
	return resp.StatusCode, raw
}

// must is call that fails the test unless the status is want.
func (p *proc) must(want int, method, path string, body any, out any, headers ...string) []byte {
	p.t.Helper()
	status, raw := p.call(method, path, body, out, headers...)
	if status != want {
		p.t.Fatalf("%s %s: status %d, want %d; body %s", method, path, status, want, raw)
	}
	return raw
}

const (
	sub   = "11111111-1111-1111-1111-111111111111"
	rgURL = "/subscriptions/" + sub + "/resourceGroups/demo"
)

func vmID(name string) string {
	return rgURL + "/providers/Microsoft.Compute/virtualMachines/" + name
}

type armRule struct {
	Name       string `json:"name"`
	Properties struct {
		Access                     string   `json:"access"`
		Priority                   int      `json:"priority"`
		Protocol                   string   `json:"protocol"`
		Direction                  string   `json:"direction"`
		SourceAddressPrefix        string   `json:"sourceAddressPrefix"`
		SourceAddressPrefixes      []string `json:"sourceAddressPrefixes"`
		DestinationPortRange       string   `json:"destinationPortRange"`
		DestinationPortRanges      []string `json:"destinationPortRanges"`
		DestinationAddressPrefix   string   `json:"destinationAddressPrefix"`
		DestinationAddressPrefixes []string `json:"destinationAddressPrefixes"`
		Description                string   `json:"description"`
	} `json:"properties"`
}

// denies reports whether r is one of jitaccess's inbound deny rules (its
// marker starts the description) closing port to ip from anywhere.
func (r armRule) denies(ip string, port int) bool {
	p := r.Properties
	if !strings.HasPrefix(r.Name, "jit-deny-") || !strings.HasPrefix(p.Description, "[jit:") || p.Access != "Deny" || p.Direction != "Inbound" {
		return false
	}
	portOK := false
	for _, pr := range append([]string{p.DestinationPortRange}, p.DestinationPortRanges...) {
		lo, hi, isRange := strings.Cut(pr, "-")
		if !isRange {
			hi = lo
		}
		a, err1 := strconv.Atoi(lo)
		b, err2 := strconv.Atoi(hi)
		if pr == "*" || err1 == nil && err2 == nil && a <= port && port <= b {
			portOK = true
		}
	}
	return portOK && slices.Contains(append([]string{p.DestinationAddressPrefix}, p.DestinationAddressPrefixes...), ip)
}

// locked reports whether one of rules denies port to ip.
func locked(rules map[string]armRule, ip string, port int) bool {
	for _, r := range rules {
		if r.denies(ip, port) {
			return true
		}
	}
	return false
}

// nsgRules reads an NSG through the simulator's /_arm paths.
func (p *proc) nsgRules(nsg string) map[string]armRule {
	p.t.Helper()
	var out struct {
		Properties struct {
			SecurityRules []armRule `json:"securityRules"`
		} `json:"properties"`
	}
	p.must(200, "GET", "/_arm"+rgURL+"/providers/Microsoft.Network/networkSecurityGroups/"+nsg+"?api-version=2024-05-01", nil, &out)
	m := map[string]armRule{}
	for _, r := range out.Properties.SecurityRules {
		m[r.Name] = r
	}
	return m
}

// waitFor polls cond every 20ms until it is true or the timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		if cond() {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// auditEntry is what the fault tests read of an audit event.
type auditEntry struct {
	ID     string    `json:"id"`
	Time   time.Time `json:"timeUtc"`
	Action string    `json:"action"`
}

// auditTrail reads the whole audit trail through get, page after page,
// following each page's nextLink. get answers false when a page could not
// be read, and auditTrail then answers false too.
func auditTrail(get func(path string, out any) bool) ([]auditEntry, bool) {
	var all []auditEntry
	path := "/api/v1/audit"
	for path != "" {
		var page struct {
			Value    []auditEntry `json:"value"`
			NextLink string       `json:"nextLink"`
		}
		if !get(path, &page) {
			return nil, false
		}
		all = append(all, page.Value...)
		path = ""
		if page.NextLink != "" {
			u, err := url.Parse(page.NextLink)
			if err != nil {
				return nil, false
			}
			path = u.RequestURI()
		}
	}
	return all, true
}
