//go:build unix

package jit

import (
	"syscall"
	"time"
)

// processCPU is the CPU time the process has used, user and system, all
// threads: what the sweep's pacer counts as busy.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return wallSinceStart()
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
