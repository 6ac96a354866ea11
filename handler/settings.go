package main

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"jitaccess/handler/jit"
)

// settings are read once from the environment at start.
type settings struct {
	Listen        string        // JIT_LISTEN
	DataDir       string        // JIT_DATA_DIR
	MinDuration   time.Duration // JIT_MIN_DURATION
	AllowBand     [2]int        // JIT_ALLOW_PRIORITIES
	DenyBand      [2]int        // JIT_DENY_PRIORITIES
	SweepInterval time.Duration // JIT_SWEEP_INTERVAL
	LogLevel      string        // JIT_LOG_LEVEL
	ARMLatency    time.Duration // JIT_ARM_LATENCY (local simulator only)
	Estate        string        // JIT_ARM_ESTATE (local simulator only)
	Subscriptions []string      // JIT_SUBSCRIPTIONS
}

const demoSubscription = "11111111-1111-1111-1111-111111111111"

func readSettings(getenv func(string) string) (settings, error) {
	s := settings{
		Listen:        or(getenv("JIT_LISTEN"), "127.0.0.1:7071"),
		DataDir:       or(getenv("JIT_DATA_DIR"), ".jit-local"),
		LogLevel:      or(getenv("JIT_LOG_LEVEL"), "info"),
		Estate:        getenv("JIT_ARM_ESTATE"),
		Subscriptions: splitList(or(getenv("JIT_SUBSCRIPTIONS"), demoSubscription)),
	}
	var err error
	if s.MinDuration, err = durationSetting(getenv, "JIT_MIN_DURATION", jit.DefaultMinDuration); err != nil {
		return s, err
	}
	if s.MinDuration <= 0 || s.MinDuration > jit.MaxDuration {
		return s, fmt.Errorf("JIT_MIN_DURATION must be between 1s and 24h")
	}
	if s.SweepInterval, err = durationSetting(getenv, "JIT_SWEEP_INTERVAL", 30*time.Second); err != nil {
		return s, err
	}
	if s.SweepInterval < 100*time.Millisecond {
		return s, fmt.Errorf("JIT_SWEEP_INTERVAL must be at least 100ms")
	}
	if s.ARMLatency, err = durationSetting(getenv, "JIT_ARM_LATENCY", 0); err != nil {
		return s, err
	}
	if s.AllowBand, err = bandSetting(getenv, "JIT_ALLOW_PRIORITIES", [2]int{1000, 1999}); err != nil {
		return s, err
	}
	if s.DenyBand, err = bandSetting(getenv, "JIT_DENY_PRIORITIES", [2]int{4000, 4095}); err != nil {
		return s, err
	}
	if s.AllowBand[1] >= s.DenyBand[0] {
		return s, fmt.Errorf("JIT_ALLOW_PRIORITIES (%d-%d) must lie entirely before JIT_DENY_PRIORITIES (%d-%d): allow rules must win over deny rules",
			s.AllowBand[0], s.AllowBand[1], s.DenyBand[0], s.DenyBand[1])
	}
	for _, sub := range s.Subscriptions {
		if _, err := jit.ParseVMID("/subscriptions/" + sub + "/resourceGroups/x/providers/Microsoft.Compute/virtualMachines/x"); err != nil {
			return s, fmt.Errorf("JIT_SUBSCRIPTIONS: %q is not a subscription id", sub)
		}
	}
	return s, nil
}

func or(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

func splitList(v string) []string {
	var out []string
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, strings.ToLower(p))
		}
	}
	return out
}

// durationSetting accepts Go durations (90s, 5m) and ISO 8601 (PT5M).
func durationSetting(getenv func(string) string, name string, def time.Duration) (time.Duration, error) {
	v := getenv(name)
	if v == "" {
		return def, nil
	}
	if d, err := time.ParseDuration(v); err == nil {
		return d, nil
	}
	if d, err := jit.ParseDuration(v); err == nil {
		return d, nil
	}
	return 0, fmt.Errorf("%s: %q is not a duration such as 90s, 5m or PT5M", name, v)
}

// bandSetting reads a priority band "FROM-TO" within ARM's 100-4096.
func bandSetting(getenv func(string) string, name string, def [2]int) ([2]int, error) {
	v := getenv(name)
	if v == "" {
		return def, nil
	}
	lo, hi, ok := strings.Cut(v, "-")
	a, err1 := strconv.Atoi(strings.TrimSpace(lo))
	b, err2 := strconv.Atoi(strings.TrimSpace(hi))
	if !ok || err1 != nil || err2 != nil || a < 100 || b > 4096 || a > b {
		return def, fmt.Errorf("%s: %q is not a priority band such as 1000-1999 within 100-4096", name, v)
	}
	return [2]int{a, b}, nil
}
