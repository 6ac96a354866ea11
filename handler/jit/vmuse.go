package jit

import (
	"cmp"
	"context"
	"slices"
	"time"
)

// VMAccess is a request's first opening of a rule of a VM: what a VM's
// recent use counts.
type VMAccess struct {
	VM      string // canonical VM id
	Request string
	User    string // whom it opened for, by name when known
	At      time.Time
}

// VMUse is a VM's recent use as GET /vms shows it: how many requests
// opened some rule of it lately, when the newest of them first did and for
// whom. It is kept up to date as grants open (Store.RecordVMUse), so that
// showing it costs one small read per VM, and no listing of requests.
type VMUse struct {
	VM         string    `json:"VM"`
	LastAccess time.Time `json:"LastAccess"`
	LastUser   string    `json:"LastUser"`
	// Opens counts requests by the Unix hour they first opened a rule of
	// the VM, for the hours of the last UseWindow (older ones are dropped
	// whenever the record is written).
	Opens map[int64]int `json:"Opens,omitempty"`
	// Recent are the last requests counted, so that an open delivered or
	// recorded again is not counted twice.
	Recent []string `json:"Recent,omitempty"`
}

// UseWindow is how far back VMUse counts: "approved requests in the last
// 7 days", to the hour.
const UseWindow = 7 * 24 * time.Hour

// maxRecentUses bounds VMUse.Recent: a request's opens come within
// minutes of each other, long before this many others open on the VM.
const maxRecentUses = 64

func unixHour(t time.Time) int64 { return t.Unix() / 3600 }

// With returns u with a counted: once per request, LastAccess and LastUser
// moved to a when it is the newer. Hours before a's window are dropped, so
// the record stays small however busy the VM.
func (u VMUse) With(a VMAccess) VMUse {
	if u.VM == "" {
		u.VM = a.VM
	}
	if slices.Contains(u.Recent, a.Request) {
		return u
	}
	oldest := unixHour(a.At.Add(-UseWindow))
	opens := make(map[int64]int, len(u.Opens)+1)
	for h, n := range u.Opens {
		if h >= oldest {
			opens[h] = n
		}
	}
	opens[unixHour(a.At)]++
	u.Opens = opens
	u.Recent = append(slices.Clone(u.Recent), a.Request)
	if len(u.Recent) > maxRecentUses {
		u.Recent = u.Recent[len(u.Recent)-maxRecentUses:]
	}
	if a.At.After(u.LastAccess) {
		u.LastAccess, u.LastUser = a.At.UTC(), a.User
	}
	return u
}

// OpenedSince counts the requests that first opened a rule of the VM in
// the hour of since or later.
func (u VMUse) OpenedSince(since time.Time) int {
	n := 0
	for h, c := range u.Opens {
		if h >= unixHour(since) {
			n += c
		}
	}
	return n
}

// VMUseStore keeps the VMs' recent use (see VMUse).
type VMUseStore interface {
	// RecordVMUse adds a to the stored use of VM a.VM (VMUse.With) in one
	// read-modify-write that no concurrent writer's access is lost in.
	RecordVMUse(ctx context.Context, a VMAccess) error
	// VMUses returns the stored use of each of the VMs that has one, by
	// lower-case id. VM ids are compared case-insensitively.
	VMUses(ctx context.Context, vms []string) (map[string]VMUse, error)
}

// recordUse counts grant i's opening at now (or earlier, when another NSG
// opened it first) in its VM's recent use, once the grant records it. A
// failure is logged only: the grant is open, and the numbers are
// statistics.
func (s *Core) recordUse(ctx context.Context, r Request, i int, now time.Time) {
	g := r.Grants[i]
	at, ok := openedAt(g, r)
	if !ok || now.Before(at) {
		at = now
	}
	if err := s.store.RecordVMUse(ctx, VMAccess{VM: g.VM, Request: r.ID, User: cmp.Or(r.RequestorName, r.Requestor), At: at}); err != nil {
		s.cfg.Log.Warn().Err(err).Str("request", r.ID).Str("vm", g.VM).Msg("recording the VM's use failed; its statistics miss this access")
	}
}
