// Command bench is jitaccess's load generator and scenario runner. It drives
// a built `handler local` (bbolt store, local queue, in-process ARM
// simulator) over HTTP, one fresh data directory per scenario, and wires the
// same adapters in-process where a figure can only be read inside (ARM calls
// by kind). It prints one table and writes the same figures as JSON.
//
//	go run ./handler/bench -handler bin/handler -out docs/bench-results.json
//
// `make bench` runs it with the defaults, which finish within 5 minutes on 2
// cores. See docs/performance.md for what each scenario measures and why.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"
)

// result is one row of the table.
type result struct {
	Scenario   string         `json:"scenario"`
	Target     string         `json:"target"`
	Requests   int            `json:"requests"`
	Seconds    float64        `json:"seconds"`
	Throughput float64        `json:"throughputPerSecond"`
	P50ms      float64        `json:"p50ms"`
	P95ms      float64        `json:"p95ms"`
	P99ms      float64        `json:"p99ms"`
	Maxms      float64        `json:"maxms"`
	ARMCalls   map[string]int `json:"armCalls,omitempty"`
	PeakRSSMB  float64        `json:"peakRssMB"`
	Verdict    string         `json:"verdict"` // met, missed, or info
	Notes      string         `json:"notes"`
}

func (r *result) setLatencies(ds []time.Duration) {
	p50, p95, p99, mx := percentiles(ds)
	r.P50ms, r.P95ms, r.P99ms, r.Maxms = ms(p50), ms(p95), ms(p99), ms(mx)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func mb(kb int) float64 { return float64(kb) / 1024 }

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "missed"
}

// report is the JSON file.
type report struct {
	Time      time.Time `json:"time"`
	Machine   string    `json:"machine"`
	GoVersion string    `json:"goVersion"`
	Handler   string    `json:"handler"`
	Results   []result  `json:"results,omitempty"`
	Twin      []twinRow `json:"twin,omitempty"`
}

type bench struct {
	handler string
	tmp     string
	cfg     config

	emuOnce sync.Once // the Functions deployments' emulators, started once
	emu     *emulators
	emuErr  error
}

type config struct {
	initiateRate     float64
	initiateDuration time.Duration
	openRate         float64
	openDuration     time.Duration
	closeGrants      int
	estateVMs        int
	auditEvents      int
	sharedGrants     int
	abuseAttempts    int
	abuseCrowd       int
	sharedLatency    time.Duration
	sharedTimeout    time.Duration
	timeline         bool

	// The two-mode suite.
	latencies    []time.Duration
	modes        []string
	armPatience  time.Duration // how long a scenario waits on ARM before it reports what is missing
	closeLead    time.Duration // close: from the first initiate to the common end time
	twinInitiate time.Duration // initiate: how long the load lasts
	instances    int           // Functions mode: handler instances under the host simulator
}

type scenario struct {
	name string
	run  func(*bench, context.Context) ([]result, error)
}

var scenarios = []scenario{
	{"startup", (*bench).startup},
	{"initiate", (*bench).initiateThroughput},
	{"open-latency", (*bench).openLatency},
	{"close-burst", (*bench).closeBurst},
	{"vms", (*bench).listVMs},
	{"audit-csv", (*bench).auditCSV},
	{"shared-nsg", (*bench).sharedNSG},
	{"arm-calls", (*bench).armCalls},
	{"abuse", (*bench).abuseLoad},
}

func main() {
	var b bench
	var out, only string
	flag.StringVar(&b.handler, "handler", "bin/handler", "the handler binary to run (`make build` builds it)")
	flag.StringVar(&out, "out", "docs/bench-results.json", "where to write the results as JSON (empty: do not write)")
	flag.StringVar(&only, "only", "", "comma-separated scenarios to run (default all): twin: enable, shared-nsg, wide, close, initiate; local: "+scenarioNames())
	flag.Float64Var(&b.cfg.initiateRate, "initiate-rate", 1000, "initiate: offered requests per second")
	flag.BoolVar(&b.cfg.timeline, "timeline", false, "initiate, open-latency: print each second's calls, p50, p99 and max to stderr")
	flag.DurationVar(&b.cfg.initiateDuration, "initiate-duration", 30*time.Second, "initiate: how long the load lasts")
	flag.Float64Var(&b.cfg.openRate, "open-rate", 100, "open-latency: requests per second")
	flag.DurationVar(&b.cfg.openDuration, "open-duration", 10*time.Second, "open-latency: how long the load lasts")
	flag.IntVar(&b.cfg.closeGrants, "close-grants", 1000, "close-burst: grants ending in the same second")
	flag.IntVar(&b.cfg.estateVMs, "estate-vms", 5000, "vms: VMs in the estate")
	flag.IntVar(&b.cfg.auditEvents, "audit-events", 100000, "audit-csv: events in the trail")
	flag.IntVar(&b.cfg.abuseAttempts, "abuse-attempts", 30000, "abuse: one requester's create calls, 16 at once")
	flag.IntVar(&b.cfg.abuseCrowd, "abuse-crowd", 500, "abuse: other requesters, each filling their allowance of 20 pending requests")
	flag.IntVar(&b.cfg.sharedGrants, "shared-grants", 100, "shared-nsg: concurrent grants on one subnet NSG")
	flag.DurationVar(&b.cfg.sharedLatency, "shared-latency", 2*time.Second, "shared-nsg: ARM write latency")
	flag.DurationVar(&b.cfg.sharedTimeout, "shared-timeout", 40*time.Second, "shared-nsg: how long to wait for every rule")
	var suite, latencies, modes string
	var markdown bool
	flag.BoolVar(&markdown, "markdown", false, "twin: print the table in Markdown too")
	flag.StringVar(&suite, "suite", "twin", "twin: every scenario in local and Functions mode at each ARM latency, side by side (make bench); local: the local-mode scenarios with their targets (make bench-local)")
	flag.StringVar(&latencies, "latencies", "0,2s", "twin: the ARM latencies to run at; above 0 the simulator also enforces ARM's write budget and one operation per NSG")
	flag.StringVar(&modes, "modes", "local,functions", "twin: the modes to run")
	flag.DurationVar(&b.cfg.armPatience, "arm-patience", 110*time.Second, "twin: how long a scenario waits on ARM before it reports what is still missing")
	flag.DurationVar(&b.cfg.closeLead, "close-lead", 40*time.Second, "twin close: from the first initiate to the common end time")
	flag.DurationVar(&b.cfg.twinInitiate, "twin-initiate-duration", 10*time.Second, "twin initiate: how long the load lasts")
	flag.IntVar(&b.cfg.instances, "instances", 2, "twin: handler instances under the host simulator in Functions mode")
	flag.Parse()
	for _, l := range strings.Split(latencies, ",") {
		d, err := time.ParseDuration(strings.TrimSpace(l))
		if err != nil || d < 0 {
			fail("-latencies: %q is not a duration", l)
		}
		b.cfg.latencies = append(b.cfg.latencies, d)
	}
	for _, m := range strings.Split(modes, ",") {
		if m = strings.TrimSpace(m); m != "local" && m != "functions" {
			fail("-modes: %q is not local or functions", m)
		}
		b.cfg.modes = append(b.cfg.modes, strings.TrimSpace(m))
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if _, err := os.Stat(b.handler); err != nil {
		fail("the handler binary %s is missing (run `make build`): %v", b.handler, err)
	}
	var err error
	if b.tmp, err = os.MkdirTemp("", "jitaccess-bench-"); err != nil {
		fail("%v", err)
	}
	defer os.RemoveAll(b.tmp)

	want := map[string]bool{}
	for _, s := range strings.Split(only, ",") {
		if s = strings.TrimSpace(s); s != "" {
			want[s] = true
		}
	}
	rep := report{Time: time.Now().UTC().Truncate(time.Second), Machine: machine(), GoVersion: runtime.Version(), Handler: b.handler}
	started := time.Now()
	if suite == "twin" {
		rep.Twin = b.runTwin(ctx, want)
		b.emu.Close()
		printTwin(os.Stdout, rep)
		if markdown {
			fmt.Println()
			printTwinMarkdown(os.Stdout, rep)
		}
		fmt.Printf("\n%d rows in %s on %s\n", len(rep.Twin), time.Since(started).Round(time.Second), rep.Machine)
		writeReport(out, rep)
		return
	}
	if suite != "local" {
		fail("-suite: %q is not twin or local", suite)
	}
	for _, s := range scenarios {
		if len(want) > 0 && !want[s.name] {
			continue
		}
		t0 := time.Now()
		fmt.Fprintf(os.Stderr, "bench: %s ...\n", s.name)
		rs, err := s.run(&b, ctx)
		if err != nil {
			rs = append(rs, result{Scenario: s.name, Verdict: "error", Notes: err.Error()})
			fmt.Fprintf(os.Stderr, "bench: %s failed: %v\n", s.name, err)
		}
		fmt.Fprintf(os.Stderr, "bench: %s done in %s\n", s.name, time.Since(t0).Round(time.Millisecond))
		rep.Results = append(rep.Results, rs...)
		if ctx.Err() != nil {
			break
		}
	}
	printTable(os.Stdout, rep)
	fmt.Printf("\n%d scenarios in %s on %s\n", len(rep.Results), time.Since(started).Round(time.Second), rep.Machine)
	writeReport(out, rep)
}

func writeReport(out string, rep report) {
	if out == "" {
		return
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		fail("%v", err)
	}
	b, _ := json.MarshalIndent(rep, "", "  ")
	if err := os.WriteFile(out, append(b, '\n'), 0o644); err != nil {
		fail("%v", err)
	}
	fmt.Printf("results written to %s\n", out)
}

func scenarioNames() string {
	var n []string
	for _, s := range scenarios {
		n = append(n, s.name)
	}
	return strings.Join(n, ", ")
}

// logf reports progress on stderr; the table goes to stdout.
func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
	os.Exit(1)
}

// machine describes the CPU, core count and memory, for the README.
func machine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	mem := ""
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int
		if _, err := fmt.Sscanf(string(b), "MemTotal: %d kB", &kb); err == nil {
			mem = fmt.Sprintf(", %.0f GiB RAM", float64(kb)/(1<<20))
		}
	}
	return fmt.Sprintf("%s, %d cores%s, %s/%s", model, runtime.NumCPU(), mem, runtime.GOOS, runtime.GOARCH)
}
