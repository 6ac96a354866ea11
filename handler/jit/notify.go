package jit

import (
	"context"
	"errors"
	"fmt"
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
// It is stored with the change it reports (as the Notice of that change's
// audit event) and delivered from the store, at least once: ID, the audit
// event's id, is the same on every try, so a receiver can drop repeats.
type Notification struct {
	ID        string    `json:"ID"`
	Event     string    `json:"Event"`
	Time      time.Time `json:"Time"`
	Request   string    `json:"Request"`
	Policy    string    `json:"Policy"`
	Requestor string    `json:"Requestor"`
	Actor     string    `json:"Actor"`
	VMs       []string  `json:"VMs"`
	Ports     []int     `json:"Ports"`
	Sources   []string  `json:"Sources"`
	End       time.Time `json:"End"`
	Detail    string    `json:"Detail"`
}

// Notifier delivers notifications.
type Notifier interface {
	// Deliver tries once to deliver n. An error means it should be tried
	// again later; Permanent(err) that it never will be.
	Deliver(ctx context.Context, n Notification) error
}

// Notice is a notification waiting in the store to be delivered.
type Notice struct {
	Notification Notification `json:"Notification"`
	// Attempts counts the deliveries begun.
	Attempts int `json:"Attempts"`
	// NotBefore is when it is due: its event's time at first, then the end
	// of the lease the last attempt took (see Store.ClaimNotice).
	NotBefore time.Time `json:"NotBefore"`
	// ETag is the store's version of the notice, for ClaimNotice.
	ETag string `json:"-"`
}

// permanent marks a delivery failure that retrying cannot mend.
type permanent struct{ error }

func (p permanent) Unwrap() error { return p.error }

// Permanent marks err as a delivery failure that retrying cannot mend (the
// receiver refused the message itself).
func Permanent(err error) error { return permanent{err} }

// IsPermanent reports whether err was marked by Permanent.
func IsPermanent(err error) bool {
	var p permanent
	return errors.As(err, &p)
}

// maxNoticeAttempts bounds the deliveries of one notification; after the
// last failed one it is dropped and the failure audited.
const maxNoticeAttempts = 8

// DefaultNoticeBackoff is the wait after a notification's first failed
// delivery: with 8 tries doubling up to 20 times it, a receiver may be
// down for about 35 minutes before a notification is given up.
const DefaultNoticeBackoff = 30 * time.Second

// noticeLease is how long an attempt holds a notice before another may try
// it, and so the wait after a failure: NoticeBackoff doubling, at most 20
// times it.
func (s *Core) noticeLease(attempt int) time.Duration {
	d, most := s.cfg.NoticeBackoff, 20*s.cfg.NoticeBackoff
	for i := 1; i < attempt && d < most; i++ {
		d *= 2
	}
	return min(d, most)
}

// notice is the notification about request r, to go with the event that
// records what happened; nil when no Notifier is set, so nothing waits
// for a delivery that will never come.
func (s *Core) notice(event string, r Request, actor, detail string) *Notification {
	if s.cfg.Notifier == nil {
		return nil
	}
	n := &Notification{Event: event, Time: s.now(), Request: r.ID, Policy: r.Policy, Requestor: r.Requestor, Actor: actor, Detail: clip(detail, 500)}
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
	return n
}

// withNotice returns events with n as the first one's notice.
func withNotice(events []AuditEvent, n *Notification) []AuditEvent {
	if n != nil && len(events) > 0 {
		events[0].Notice = n
	}
	return events
}

// hasNotice reports whether one of events carries a notice.
func hasNotice(events []AuditEvent) bool {
	return slices.ContainsFunc(events, func(ev AuditEvent) bool { return ev.Notice != nil })
}

// kickNotices starts a delivery of the due notices in the background,
// unless one is running, which then goes round once more.
func (s *Core) kickNotices() {
	if s.cfg.Notifier == nil {
		return
	}
	if !s.delivering.CompareAndSwap(false, true) {
		s.redeliver.Store(true)
		return
	}
	s.cfg.Go(func(ctx context.Context) {
		defer s.delivering.Store(false)
		for {
			s.redeliver.Store(false)
			if _, err := s.DeliverNotices(ctx); err != nil {
				s.cfg.Log.Warn().Err(err).Msg("delivering notifications failed; the next sweep retries")
				return
			}
			if !s.redeliver.Load() {
				return
			}
		}
	})
}

// DeliverNotices delivers the notifications that are due, each claimed
// first so that two instances do not deliver it at once. A failed one is
// tried again when its lease ends; after maxNoticeAttempts, or a permanent
// failure, it is dropped and the failure audited. Without a Notifier the
// due notices are dropped. It returns how many were delivered.
func (s *Core) DeliverNotices(ctx context.Context) (int, error) {
	delivered := 0
	for {
		now := s.now()
		due, err := s.store.DueNotices(ctx, now, 50)
		if err != nil {
			return delivered, fmt.Errorf("reading due notifications: %w", err)
		}
		if len(due) == 0 {
			return delivered, nil
		}
		for _, n := range due {
			if s.cfg.Notifier == nil {
				if err := s.store.SettleNotice(ctx, n.Notification.ID); err != nil {
					return delivered, err
				}
				continue
			}
			n.Attempts++
			claimed, err := s.store.ClaimNotice(ctx, n, now.Add(s.noticeLease(n.Attempts)))
			if ErrorCode(err) == ECONFLICT || ErrorCode(err) == ENOTFOUND {
				continue // another instance has it, or has delivered it
			} else if err != nil {
				return delivered, err
			}
			derr := s.cfg.Notifier.Deliver(ctx, claimed.Notification)
			if derr == nil {
				if err := s.store.SettleNotice(ctx, claimed.Notification.ID); err != nil {
					return delivered, err
				}
				delivered++
				continue
			}
			final := claimed.Attempts >= maxNoticeAttempts || IsPermanent(derr)
			ev := s.cfg.Log.Warn().Err(derr).Str("notification", claimed.Notification.ID).Str("event", claimed.Notification.Event).
				Str("request", claimed.Notification.Request).Int("attempt", claimed.Attempts).Bool("final", final)
			if !final {
				ev.Time("retry_at", claimed.NotBefore).Msg("notification not delivered; will retry")
				continue
			}
			ev.Msg("notification not delivered; giving up")
			n := claimed.Notification
			_ = s.audit(ctx, AuditEvent{ID: "undelivered-" + n.ID, Action: AuditFailure, Actor: System.ID, Policy: n.Policy,
				Request: n.Request, Result: ResultFailure, Detail: clip(fmt.Sprintf("the %s notification was not delivered after %d tries: %v",
					n.Event, claimed.Attempts, derr), 500)})
			if err := s.store.SettleNotice(ctx, n.ID); err != nil {
				return delivered, err
			}
		}
		if len(due) < 50 {
			return delivered, nil
		}
	}
}
