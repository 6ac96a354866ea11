//go:build !unix

package jit

import "time"

// processCPU is the wall time since start where the process's CPU time
// cannot be read: the sweep's pacer then counts waiting as busy too, and
// maxPause bounds each sleep.
func processCPU() time.Duration { return wallSinceStart() }
