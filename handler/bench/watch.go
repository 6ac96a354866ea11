package main

import (
	"context"
	"strings"
	"sync"
	"time"
)

const armAPIVersion = "api-version=2024-05-01"

// nsgDoc is the part of an NSG the watchers read.
type nsgDoc struct {
	ID         string `json:"id"`
	Properties struct {
		SecurityRules []struct {
			Name string `json:"name"`
		} `json:"securityRules"`
	} `json:"properties"`
}

// ruleNames reads an NSG's rule names through the simulator's public /_arm
// paths (reads are not reported as resource events).
func (p *proc) ruleNames(ctx context.Context, nsgID string) (map[string]bool, error) {
	var doc nsgDoc
	if _, err := p.do(ctx, "GET", "/_arm"+nsgID+"?"+armAPIVersion, nil, &doc); err != nil {
		return nil, err
	}
	out := make(map[string]bool, len(doc.Properties.SecurityRules))
	for _, r := range doc.Properties.SecurityRules {
		out[strings.ToLower(r.Name)] = true
	}
	return out, nil
}

// allManagedRules lists every NSG of the bench subscription page by page and
// returns the names of the jit-allow rules in each.
func (p *proc) allowRules(ctx context.Context) (map[string]bool, error) {
	out := map[string]bool{}
	path := "/_arm/subscriptions/" + benchSub + "/providers/Microsoft.Network/networkSecurityGroups?" + armAPIVersion
	for path != "" {
		var page struct {
			Value    []nsgDoc `json:"value"`
			NextLink string   `json:"nextLink"`
		}
		if _, err := p.do(ctx, "GET", path, nil, &page); err != nil {
			return nil, err
		}
		for _, n := range page.Value {
			for _, r := range n.Properties.SecurityRules {
				if strings.HasPrefix(r.Name, "jit-allow-") {
					out[strings.ToLower(n.ID)+"|"+strings.ToLower(r.Name)] = true
				}
			}
		}
		path = ""
		if page.NextLink != "" {
			if i := strings.Index(page.NextLink, "/_arm/"); i >= 0 {
				path = page.NextLink[i:]
			}
		}
	}
	return out, nil
}

// openWatch records when rules the test waits for first appear. Only NSGs
// with a rule still awaited are read, so the watcher's own load stays small.
type openWatch struct {
	p        *proc
	mu       sync.Mutex
	awaited  map[string]map[string]time.Time // nsg id → rule name → since
	latency  []time.Duration
	openedAt map[string]time.Time // rule name → when seen
}

func newOpenWatch(p *proc) *openWatch {
	return &openWatch{p: p, awaited: map[string]map[string]time.Time{}, openedAt: map[string]time.Time{}}
}

// await starts waiting for rule in nsg, counting from since.
func (w *openWatch) await(nsg, rule string, since time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.awaited[nsg] == nil {
		w.awaited[nsg] = map[string]time.Time{}
	}
	w.awaited[nsg][strings.ToLower(rule)] = since
}

func (w *openWatch) pending() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, m := range w.awaited {
		n += len(m)
	}
	return n
}

// run polls every interval until ctx ends.
func (w *openWatch) run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		w.mu.Lock()
		nsgs := make([]string, 0, len(w.awaited))
		for n, m := range w.awaited {
			if len(m) > 0 {
				nsgs = append(nsgs, n)
			}
		}
		w.mu.Unlock()
		var wg sync.WaitGroup
		for _, n := range nsgs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				names, err := w.p.ruleNames(ctx, n)
				seen := time.Now()
				if err != nil {
					return
				}
				w.mu.Lock()
				defer w.mu.Unlock()
				for rule, since := range w.awaited[n] {
					if names[rule] {
						w.latency = append(w.latency, seen.Sub(since))
						w.openedAt[rule] = seen
						delete(w.awaited[n], rule)
					}
				}
			}()
		}
		wg.Wait()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
