package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"jitaccess/handler/armsim"
)

// proc is one `handler local` process under test.
type proc struct {
	cmd     *exec.Cmd
	url     string
	dataDir string
	log     *bytes.Buffer
	ready   time.Duration // exec to the first answer of GET /
	client  *http.Client
	exited  chan error // receives cmd.Wait's result
}

// procOptions are the settings a scenario gives the process.
type procOptions struct {
	DataDir    string // reused when set (restarts), else a fresh temp dir
	Estate     string // JIT_ARM_ESTATE
	ARMLatency time.Duration
	Sweep      time.Duration
	Env        []string
}

// startProc execs the handler binary in local mode on a free port and waits
// until GET / answers.
func (b *bench) startProc(o procOptions) (*proc, error) {
	dir := o.DataDir
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp(b.tmp, "data-"); err != nil {
			return nil, err
		}
	}
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	sweep := o.Sweep
	if sweep == 0 {
		sweep = 30 * time.Second
	}
	cmd := exec.Command(b.handler, "local")
	cmd.Env = append(os.Environ(),
		"JIT_LISTEN="+addr,
		"JIT_DATA_DIR="+dir,
		"JIT_ARM_LATENCY="+o.ARMLatency.String(),
		"JIT_MIN_DURATION=1s",
		"JIT_SWEEP_INTERVAL="+sweep.String(),
		"JIT_SUBSCRIPTIONS="+benchSub,
		"JIT_LOG_LEVEL=warn",
		// The bench is one client standing for many people: per-person
		// limits would measure the limits (the abuse scenario sets them).
		"JIT_MAX_OPEN_REQUESTS=off",
		"JIT_WRITES_PER_MINUTE=off",
	)
	if o.Estate != "" {
		cmd.Env = append(cmd.Env, "JIT_ARM_ESTATE="+o.Estate)
	}
	cmd.Env = append(cmd.Env, o.Env...)
	logBuf := &bytes.Buffer{}
	cmd.Stdout, cmd.Stderr = logBuf, logBuf
	p := &proc{cmd: cmd, url: "http://" + addr, dataDir: dir, log: logBuf, client: newClient(512)}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", b.handler, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	// Poll as fast as is reasonable: the start-up target is 100 ms.
	for {
		resp, err := p.client.Get(p.url + "/")
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				p.ready = time.Since(start)
				p.exited = exited
				return p, nil
			}
		}
		select {
		case err := <-exited:
			return nil, fmt.Errorf("handler exited during start-up (%v): %s", err, tail(logBuf.String(), 2000))
		case <-time.After(2 * time.Millisecond):
		}
		if time.Since(start) > 120*time.Second {
			_ = cmd.Process.Kill()
			return nil, fmt.Errorf("handler did not answer GET / within 120s: %s", tail(logBuf.String(), 2000))
		}
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// stop sends SIGTERM and waits for a clean exit.
func (p *proc) stop() error {
	if p == nil {
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		return nil
	case <-time.After(20 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
		return fmt.Errorf("handler did not stop within 20s after SIGTERM")
	}
}

// memory reads the process's current and peak resident set size (KiB).
func (p *proc) memory() (rssKB, hwmKB int) {
	m := p.status()
	return m["VmRSS"], m["VmHWM"]
}

// status reads the kB figures of /proc/<pid>/status (VmRSS, VmHWM, RssAnon,
// RssFile: bbolt's memory map of the state file counts as RssFile).
func (p *proc) status() map[string]int {
	out := map[string]int{}
	f, err := os.Open(filepath.Join("/proc", strconv.Itoa(p.cmd.Process.Pid), "status"))
	if err != nil {
		return out
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		if n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB")); err == nil {
			out[k] = n
		}
	}
	return out
}

// armStats asks the process for the ARM simulator's call counters, if it
// serves them (GET /_arm/_stats); nil otherwise.
func (p *proc) armStats() map[string]int {
	resp, err := p.client.Get(p.url + "/_arm/_stats")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil
	}
	var st struct {
		ByKind map[string]int
	}
	if json.NewDecoder(resp.Body).Decode(&st) != nil {
		return nil
	}
	return st.ByKind
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func newClient(conns int) *http.Client {
	return &http.Client{
		Timeout: 4 * time.Minute, // beyond Azure's 230 s cut-off, which the scenarios apply themselves
		Transport: &http.Transport{
			MaxIdleConns:        conns,
			MaxIdleConnsPerHost: conns,
			IdleConnTimeout:     time.Minute,
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		},
	}
}

// do sends a JSON request and decodes a JSON answer into out (when not nil).
func (p *proc) do(ctx context.Context, method, path string, body any, out any) (int, error) {
	if method == "GET" && strings.HasPrefix(path, "/_arm/") {
		// The bench looking at the estate is not ARM traffic.
		return doJSON(ctx, p.client, p.url, method, path, body, out, armsim.ObserverHeader, "bench")
	}
	return doJSON(ctx, p.client, p.url, method, path, body, out)
}

// doJSON sends a JSON request to base+path with the header pairs given and
// decodes a JSON answer into out (when not nil); a non-2xx answer is an
// error.
func doJSON(ctx context.Context, c *http.Client, base, method, path string, body any, out any, headers ...string) (int, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, rd)
	if err != nil {
		return 0, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, err
	}
	if resp.StatusCode/100 != 2 {
		return resp.StatusCode, fmt.Errorf("%s %s: %d %s", method, path, resp.StatusCode, tail(string(data), 300))
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return resp.StatusCode, fmt.Errorf("%s %s: decoding answer: %w", method, path, err)
		}
	}
	return resp.StatusCode, nil
}
