package main

import (
	"context"
	"fmt"
	"time"

	"jitaccess/handler/abuse"
)

// abusePeakRSSMB is the bound of the end-to-end test (e2etest,
// TestAbuseIsBounded), which the bench reports against at a larger load.
const abusePeakRSSMB = 160

// abuseLoad runs issue 15's abuse (package abuse) against `handler local`
// with the default limits but a burst of 40, so that both limits answer.
func (b *bench) abuseLoad(ctx context.Context) ([]result, error) {
	p, err := b.startProc(procOptions{Env: []string{"JIT_MAX_OPEN_REQUESTS=20", "JIT_WRITES_PER_MINUTE=60", "JIT_WRITE_BURST=40"}})
	if err != nil {
		return nil, err
	}
	defer p.stop()
	f, err := abuse.Run(ctx, abuse.Config{
		BaseURL: p.url, VM: "/subscriptions/" + benchSub + "/resourceGroups/demo/providers/Microsoft.Compute/virtualMachines/vm-nic-nsg",
		Attempts: b.cfg.abuseAttempts, Workers: 16,
		Crowd: b.cfg.abuseCrowd, PerCrowd: 22,
		Polls:     50,
		VMCallers: 20, VMRounds: 10,
		Memory: p.memory,
		Client: p.client,
	})
	if err != nil {
		return nil, err
	}
	st := p.status() // anonymous memory (the heap) apart from bbolt's file map
	r := result{Scenario: "abuse", Requests: f.Attempts, Seconds: f.TotalSeconds, PeakRSSMB: f.PeakRSSMB,
		Target: fmt.Sprintf("one requester's %d asks: at most 20 kept, the rest 429 with Retry-After; pending poll one page ≤ 256 KiB; 20 concurrent GET /vms; peak RSS ≤ %d MB", f.Attempts, abusePeakRSSMB),
		P50ms:  f.VMP50ms, Maxms: f.VMMaxms,
		Verdict: verdict(f.Created <= 20 && f.Other == 0 && f.NoRetryAfter == 0 && f.PendingBytes <= 256<<10 && f.VMErrors == 0 &&
			f.PeakRSSMB > 0 && f.PeakRSSMB <= abusePeakRSSMB)}
	r.Notes = fmt.Sprintf("latency columns: GET /api/v1/vms, 20 at once; requester: %d kept, %d 429 open limit, %d 429 write rate, %d other in %s; "+
		"crowd of %d: %d pending in %s (%d pending in all); pending poll: %d items, %d bytes, p50 %.1f ms, max %.1f ms; "+
		"RSS %.0f MB at start, peak %.0f after the requester, %.0f after the crowd, %.0f after polling, %.0f at the end, of which %.0f MB anonymous and %.0f MB the state file's map",
		f.Created, f.TooManyOpen, f.TooManyWrites, f.Other, time.Duration(f.AttackSeconds*float64(time.Second)).Round(time.Millisecond),
		b.cfg.abuseCrowd, f.CrowdCreated, time.Duration(f.CrowdSeconds*float64(time.Second)).Round(time.Millisecond), f.PendingTotal,
		f.PendingItems, f.PendingBytes, f.PollP50ms, f.PollMaxms,
		f.RSSStartMB, f.PeakAttackMB, f.PeakCrowdMB, f.PeakPollingMB, f.PeakRSSMB, mb(st["RssAnon"]), mb(st["RssFile"]))
	return []result{r}, nil
}
