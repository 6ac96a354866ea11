package jit

import (
	"fmt"
	"testing"
	"time"
)

// TestVMUseStaysSmall: however busy a VM, its use record keeps the hours
// of one window and a bounded list of recent requests, and counts what is
// in the window.
func TestVMUseStaysSmall(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var u VMUse
	const days = 30
	for i := range days * 24 * 4 { // four requests an hour for 30 days
		u = u.With(VMAccess{VM: "vm", Request: fmt.Sprintf("r%d", i), User: "u", At: t0.Add(time.Duration(i) * 15 * time.Minute)})
	}
	end := t0.Add(days*24*time.Hour - 15*time.Minute)
	if len(u.Opens) > 7*24+1 || len(u.Recent) > maxRecentUses {
		t.Errorf("record holds %d hours and %d requests; want at most %d and %d", len(u.Opens), len(u.Recent), 7*24+1, maxRecentUses)
	}
	if n := u.OpenedSince(end.Add(-UseWindow)); n < 7*24*4 || n > 7*24*4+4 {
		t.Errorf("%d opens in the last 7 days, want 672 (to the hour)", n)
	}
	if !u.LastAccess.Equal(end) {
		t.Errorf("last access %v, want %v", u.LastAccess, end)
	}
	again := u.With(VMAccess{VM: "vm", Request: u.Recent[len(u.Recent)-1], User: "x", At: end.Add(time.Hour)})
	if again.OpenedSince(end.Add(-UseWindow)) != u.OpenedSince(end.Add(-UseWindow)) || again.LastUser != "u" {
		t.Error("a request recorded again was counted again")
	}
}
