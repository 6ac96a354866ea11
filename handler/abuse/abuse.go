// Package abuse is the load of issue 15's "abuse is bounded": one requester
// asking for thousands of pending requests as fast as they can, a crowd of
// requesters each filling their allowance, an approver's portal polling the
// pending list, and 20 callers reading GET /api/v1/vms at once. It drives a
// running `handler local` over its public API (X-Dev-Principal identities)
// and reports what the service answered and how much memory it took; the
// end-to-end test holds the figures to bounds, and the bench reports them.
//
// It depends on net/http only; it must not know the service's insides.
package abuse

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Config is the load.
type Config struct {
	BaseURL string // e.g. http://127.0.0.1:7071
	VM      string // an ARM VM id of the estate, put in an approval policy
	// Attempts are the one requester's create calls, from Workers
	// goroutines at once.
	Attempts, Workers int
	// Crowd requesters each ask for PerCrowd requests, to fill the store.
	Crowd, PerCrowd int
	// Polls of the pending list, one after the other, as an approver.
	Polls int
	// VMCallers read GET /api/v1/vms at once, VMRounds times each.
	VMCallers, VMRounds int
	// Memory reads the process's resident memory, now and at its peak, in
	// kB (VmRSS and VmHWM); nil when unknown.
	Memory func() (rssKB, peakKB int)
	Client *http.Client
}

// Figures are what the load saw.
type Figures struct {
	Attempts       int     `json:"attempts"`
	Created        int     `json:"created"`       // 202s of the one requester
	TooManyOpen    int     `json:"tooManyOpen"`   // 429s of the open-request limit
	TooManyWrites  int     `json:"tooManyWrites"` // 429s of the write rate
	NoRetryAfter   int     `json:"noRetryAfter"`  // 429s without a Retry-After
	Other          int     `json:"other"`         // any other answer
	FirstOther     string  `json:"firstOther,omitempty"`
	AttackSeconds  float64 `json:"attackSeconds"` // the one requester's attempts
	CrowdCreated   int     `json:"crowdCreated"`  // pending requests of the crowd
	CrowdSeconds   float64 `json:"crowdSeconds"`  // filling the store
	PendingTotal   int     `json:"pendingTotal"`  // pending requests stored, counted through nextLink
	PendingItems   int     `json:"pendingItems"`  // items of one poll's page
	PendingBytes   int     `json:"pendingBytes"`  // the largest poll's body
	PendingNext    bool    `json:"pendingNext"`   // every poll answered a nextLink
	PollP50ms      float64 `json:"pollP50ms"`
	PollMaxms      float64 `json:"pollMaxms"`
	VMCalls        int     `json:"vmCalls"` // GET /api/v1/vms answered 200
	VMErrors       int     `json:"vmErrors"`
	VMP50ms        float64 `json:"vmP50ms"`
	VMMaxms        float64 `json:"vmMaxms"`
	RSSStartMB     float64 `json:"rssStartMB"`    // before the load
	RSSEndMB       float64 `json:"rssEndMB"`      // after it
	PeakRSSMB      float64 `json:"peakRssMB"`     // the process's high-water mark
	PeakAttackMB   float64 `json:"peakAttackMB"`  // high-water mark after the attack
	PeakCrowdMB    float64 `json:"peakCrowdMB"`   // ... after the crowd
	PeakPollingMB  float64 `json:"peakPollingMB"` // ... after the polls
	TotalSeconds   float64 `json:"totalSeconds"`
	OpenLimitFirst string  `json:"openLimitFirst"` // the first open-limit refusal's message
}

const policyName = "abuse"

// Run runs the load and returns its figures; an error is a failure to run
// it (the service down, a setup call refused), not a figure out of bounds.
func Run(ctx context.Context, cfg Config) (Figures, error) {
	var f Figures
	c := &client{base: strings.TrimRight(cfg.BaseURL, "/"), http: cfg.Client}
	if c.http == nil {
		c.http = &http.Client{Timeout: 60 * time.Second}
	}
	mem := func() (float64, float64) {
		if cfg.Memory == nil {
			return 0, 0
		}
		rss, peak := cfg.Memory()
		return float64(rss) / 1024, float64(peak) / 1024
	}
	f.RSSStartMB, _ = mem()
	start := time.Now()
	policy := map[string]any{"properties": map[string]any{
		"virtualMachines": []any{map[string]any{"id": cfg.VM, "ports": []any{map[string]any{
			"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "*", "maxRequestAccessDuration": "PT1H"}}}},
		"approval": map[string]any{"required": true, "approvers": []string{"approver"}},
	}}
	if st, body, _, err := c.call(ctx, "PUT", "/api/v1/policies/"+policyName, policy, nil); err != nil || st != http.StatusOK {
		return f, fmt.Errorf("putting the policy: %d %s %v", st, body, err)
	}
	ask := map[string]any{"justification": "abuse load", "virtualMachines": []any{map[string]any{"id": cfg.VM,
		"ports": []any{map[string]any{"number": 22, "duration": "PT1H", "allowedSourceAddressPrefix": "203.0.113.7"}}}}}
	initiate := "/api/v1/policies/" + policyName + "/initiate"

	// The one requester, as fast as they can.
	var mu sync.Mutex
	t0 := time.Now()
	err := parallel(ctx, cfg.Workers, cfg.Attempts, func(int) error {
		st, body, h, err := c.call(ctx, "POST", initiate, ask, as("mallory", "JIT.Requester"))
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		f.Attempts++
		switch {
		case st == http.StatusAccepted:
			f.Created++
		case st == http.StatusTooManyRequests:
			if h.Get("Retry-After") == "" {
				f.NoRetryAfter++
			}
			if strings.Contains(body, "open or pending requests") {
				f.TooManyOpen++
				if f.OpenLimitFirst == "" {
					f.OpenLimitFirst = body
				}
			} else {
				f.TooManyWrites++
			}
		default:
			f.Other++
			if f.FirstOther == "" {
				f.FirstOther = fmt.Sprintf("%d %s", st, clip(body))
			}
		}
		return nil
	})
	if err != nil {
		return f, fmt.Errorf("the requester's attempts: %w", err)
	}
	f.AttackSeconds = time.Since(t0).Seconds()
	_, f.PeakAttackMB = mem()

	// The crowd fills the store, each within their allowance.
	t0 = time.Now()
	var crowd atomic.Int64
	err = parallel(ctx, cfg.Workers, cfg.Crowd*cfg.PerCrowd, func(i int) error {
		st, _, _, err := c.call(ctx, "POST", initiate, ask, as(fmt.Sprintf("crowd-%04d", i%cfg.Crowd), "JIT.Requester"))
		if err == nil && st == http.StatusAccepted {
			crowd.Add(1)
		}
		return err
	})
	if err != nil {
		return f, fmt.Errorf("the crowd: %w", err)
	}
	f.CrowdCreated, f.CrowdSeconds = int(crowd.Load()), time.Since(t0).Seconds()
	_, f.PeakCrowdMB = mem()

	// The approver's portal polls the pending list.
	approver := as("approver", "JIT.Approver")
	var polls []time.Duration
	f.PendingNext = true
	for range cfg.Polls {
		t := time.Now()
		st, body, _, err := c.call(ctx, "GET", "/api/v1/requests?status=Pending", nil, approver)
		if err != nil || st != http.StatusOK {
			return f, fmt.Errorf("polling the pending list: %d %s %v", st, clip(body), err)
		}
		polls = append(polls, time.Since(t))
		var pg struct {
			Value    []json.RawMessage `json:"value"`
			NextLink string            `json:"nextLink"`
		}
		if err := json.Unmarshal([]byte(body), &pg); err != nil {
			return f, fmt.Errorf("pending list: %w", err)
		}
		f.PendingItems, f.PendingBytes = len(pg.Value), max(f.PendingBytes, len(body))
		f.PendingNext = f.PendingNext && pg.NextLink != ""
	}
	f.PollP50ms, f.PollMaxms = quantiles(polls)
	if f.PendingTotal, err = c.count(ctx, "/api/v1/requests?status=Pending&limit=1000", approver); err != nil {
		return f, err
	}
	_, f.PeakPollingMB = mem()

	// 20 callers read the VM list at once.
	var vmLat []time.Duration
	err = parallel(ctx, cfg.VMCallers, cfg.VMCallers*cfg.VMRounds, func(int) error {
		t := time.Now()
		st, _, _, err := c.call(ctx, "GET", "/api/v1/vms", nil, nil)
		d := time.Since(t)
		mu.Lock()
		defer mu.Unlock()
		if err != nil || st != http.StatusOK {
			f.VMErrors++
			return nil
		}
		f.VMCalls++
		vmLat = append(vmLat, d)
		return nil
	})
	if err != nil {
		return f, err
	}
	f.VMP50ms, f.VMMaxms = quantiles(vmLat)
	f.RSSEndMB, f.PeakRSSMB = mem()
	f.TotalSeconds = time.Since(start).Seconds()
	return f, nil
}

// as are the local-mode identity headers of a principal.
func as(id string, roles ...string) []string {
	return []string{"X-Dev-Principal", id, "X-Dev-Roles", strings.Join(roles, ",")}
}

type client struct {
	base string
	http *http.Client
}

func (c *client) call(ctx context.Context, method, path string, body any, headers []string) (int, string, http.Header, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, "", nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return 0, "", nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, "", nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(raw), resp.Header, err
}

// count follows nextLink from path and counts the items.
func (c *client) count(ctx context.Context, path string, headers []string) (int, error) {
	n := 0
	for pages := 0; path != ""; pages++ {
		if pages > 10000 {
			return n, fmt.Errorf("%s: nextLink never ends", path)
		}
		st, body, _, err := c.call(ctx, "GET", path, nil, headers)
		if err != nil || st != http.StatusOK {
			return n, fmt.Errorf("GET %s: %d %s %v", path, st, clip(body), err)
		}
		var pg struct {
			Value    []json.RawMessage `json:"value"`
			NextLink string            `json:"nextLink"`
		}
		if err := json.Unmarshal([]byte(body), &pg); err != nil {
			return n, err
		}
		n += len(pg.Value)
		path = ""
		if pg.NextLink != "" {
			u, err := url.Parse(pg.NextLink)
			if err != nil {
				return n, err
			}
			path = u.RequestURI()
		}
	}
	return n, nil
}

// parallel runs fn(0..n-1) on workers goroutines and returns the first
// error.
func parallel(ctx context.Context, workers, n int, fn func(i int) error) error {
	var next atomic.Int64
	var first error
	var once sync.Once
	var wg sync.WaitGroup
	for range max(workers, 1) {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n || ctx.Err() != nil {
					return
				}
				if err := fn(i); err != nil {
					once.Do(func() { first = err })
					return
				}
			}
		})
	}
	wg.Wait()
	if first == nil {
		first = ctx.Err()
	}
	return first
}

func quantiles(ds []time.Duration) (p50, maxMS float64) {
	if len(ds) == 0 {
		return 0, 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return float64(s[len(s)/2].Microseconds()) / 1000, float64(s[len(s)-1].Microseconds()) / 1000
}

func clip(s string) string {
	if len(s) > 300 {
		return s[:300] + "..."
	}
	return s
}
