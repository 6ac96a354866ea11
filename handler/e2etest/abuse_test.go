package e2etest

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"jitaccess/handler/abuse"
)

// abusePeakRSSMB bounds the resident memory of `handler local` under the
// abuse load (docs/performance.md, "Abuse is bounded"): a few times its
// idle size, where before the limits, pages and per-VM use, the same load
// took it to gigabytes.
const abusePeakRSSMB = 160

// TestAbuseIsBounded runs issue 15's abuse against a real `handler local`
// on the loopback: one requester asks for 3,000 pending requests as fast as
// 16 connections allow, a crowd of 150 requesters fills the store with
// 3,000 more, an approver polls the pending list, and 20 callers read the
// VM list at once. The limits answer 429 with Retry-After, every list
// answers a page, and the process's memory stays under abusePeakRSSMB.
// Not a timed test: the figures are printed, and bound only memory and
// what was answered.
func TestAbuseIsBounded(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("reads the process's memory from /proc")
	}
	const maxOpen, crowd = 20, 150
	p := startLocal(t, t.TempDir(), freeAddr(t),
		"JIT_MAX_OPEN_REQUESTS="+strconv.Itoa(maxOpen), "JIT_WRITES_PER_MINUTE=60", "JIT_WRITE_BURST=40", "JIT_LOG_LEVEL=warn")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	f, err := abuse.Run(ctx, abuse.Config{
		BaseURL: p.base, VM: vmID("vm-nic-nsg"),
		Attempts: 3000, Workers: 16,
		Crowd: crowd, PerCrowd: maxOpen + 2,
		Polls:     20,
		VMCallers: 20, VMRounds: 5,
		Memory: func() (int, int) { return procMemory(p.cmd.Process.Pid) },
	})
	if err != nil {
		t.Fatal(err)
	}
	out, _ := json.MarshalIndent(f, "", "  ")
	t.Logf("abuse figures:\n%s", out)
	if path := os.Getenv("JIT_ABUSE_REPORT"); path != "" {
		if err := os.WriteFile(filepath.Clean(path), out, 0o644); err != nil {
			t.Error(err)
		}
	}

	if f.Created != maxOpen || f.TooManyOpen == 0 || f.TooManyWrites < f.Attempts-2*maxOpen-f.TooManyOpen {
		t.Errorf("the requester got %d requests, %d open-limit and %d rate 429s of %d attempts; want %d, some, the rest",
			f.Created, f.TooManyOpen, f.TooManyWrites, f.Attempts, maxOpen)
	}
	if f.Other != 0 || f.NoRetryAfter != 0 {
		t.Errorf("%d answers neither 202 nor 429 (first: %s), %d 429s without Retry-After", f.Other, f.FirstOther, f.NoRetryAfter)
	}
	if !strings.Contains(f.OpenLimitFirst, `"code":"TooManyRequests"`) {
		t.Errorf("the open limit's answer %s is not the API's error shape", f.OpenLimitFirst)
	}
	if f.CrowdCreated != crowd*maxOpen || f.PendingTotal != (crowd+1)*maxOpen {
		t.Errorf("the crowd got %d requests, %d pending in all; want %d and %d", f.CrowdCreated, f.PendingTotal, crowd*maxOpen, (crowd+1)*maxOpen)
	}
	if f.PendingItems != 100 || !f.PendingNext || f.PendingBytes > 256<<10 {
		t.Errorf("a poll of the pending list answered %d items in %d bytes (nextLink %v); want a page of 100 with a nextLink, under 256 KiB",
			f.PendingItems, f.PendingBytes, f.PendingNext)
	}
	if f.VMErrors != 0 || f.VMCalls != 100 {
		t.Errorf("GET /api/v1/vms: %d answered, %d failed; want 100, 0", f.VMCalls, f.VMErrors)
	}
	if f.PeakRSSMB == 0 || f.PeakRSSMB > abusePeakRSSMB {
		t.Errorf("the handler's peak resident memory was %.0f MB; the bound is %d MB", f.PeakRSSMB, abusePeakRSSMB)
	}
}

// procMemory reads VmRSS and VmHWM (kB) of a process.
func procMemory(pid int) (rssKB, peakKB int) {
	f, err := os.Open(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), ":")
		n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
		switch k {
		case "VmRSS":
			rssKB = n
		case "VmHWM":
			peakKB = n
		}
	}
	return rssKB, peakKB
}
