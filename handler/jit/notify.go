package jit

import (
	"slices"
	"time"
)

// Notification events.
const (
	EventPending  = "pending"
	EventApproved = "approved"
	EventDenied   = "denied"
	EventOpened   = "opened"
	EventClosed   = "closed"
	EventRevoked  = "revoked"
	EventFailed   = "failed"
	EventDrift    = "drift"
)

// Notification tells people outside the service that something happened.
type Notification struct {
	Event     string
	Time      time.Time
	Request   string
	Policy    string
	Requestor string
	Actor     string
	VMs       []string
	Ports     []int
	Sources   []string
	End       time.Time
	Detail    string
}

// Notifier delivers notifications. Notify must not block: delivery is
// best effort, retried in the background, and never holds up a request.
type Notifier interface {
	Notify(Notification)
}

// notify sends a notification about request r when a Notifier is set.
func (s *Service) notify(event string, r Request, actor, detail string) {
	if s.cfg.Notifier == nil {
		return
	}
	n := Notification{Event: event, Time: s.now(), Request: r.ID, Policy: r.Policy, Requestor: r.Requestor, Actor: actor, Detail: clip(detail, 500)}
	seenVM := map[string]bool{}
	for _, g := range r.Grants {
		if !seenVM[g.VM] {
			seenVM[g.VM] = true
			n.VMs = append(n.VMs, g.VM)
		}
		n.Ports = append(n.Ports, g.Ports...)
		for _, src := range g.Sources {
			if !slices.Contains(n.Sources, src) {
				n.Sources = append(n.Sources, src)
			}
		}
		if g.End.After(n.End) {
			n.End = g.End
		}
	}
	n.Ports = sortedCopy(n.Ports)
	s.cfg.Notifier.Notify(n)
}
