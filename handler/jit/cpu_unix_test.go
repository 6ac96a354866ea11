//go:build unix

package jit

import (
	"testing"
	"time"
)

// TestProcessCPU: the pacer's clock moves with work, and waiting moves it
// less than the wall clock.
func TestProcessCPU(t *testing.T) {
	before := processCPU()
	for deadline := time.Now().Add(10 * time.Second); processCPU()-before < 20*time.Millisecond; {
		if time.Now().After(deadline) {
			t.Fatalf("10 s of spinning moved the CPU clock by %v", processCPU()-before)
		}
	}
	before = processCPU()
	time.Sleep(200 * time.Millisecond)
	if slept := processCPU() - before; slept >= 200*time.Millisecond {
		t.Errorf("CPU time moved %v while the test slept 200ms: it is counting waiting", slept)
	}
}
