package tablestore

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"

	"jitaccess/handler/jit"
)

// Notifications waiting for delivery live in one partition of the audit
// table, a row per event:
//
//	PartitionKey   RowKey   holds
//	notices        <id>     the notice (payload), NotBefore as a sortable string
//
// (<id> is escapeKey(event id).) A delivered notice's row is deleted, so
// the partition holds what is waiting.
const noticePartition = "notices"

// noticeTime formats a time so that the strings sort as the times do.
func noticeTime(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000000000Z") }

func noticeEntity(n jit.Notice, id string) (entity, error) {
	e := newEntity(noticePartition, id)
	if err := e.setPayload(n, fmt.Sprintf("notification %q", n.Notification.ID)); err != nil {
		return nil, err
	}
	e["NotBefore"] = noticeTime(n.NotBefore)
	return e, nil
}

// addNotice keeps ev's notice due from ev's time; a notice already there
// stays as it is.
func (s *Store) addNotice(ctx context.Context, ev jit.AuditEvent, id string) error {
	e, err := noticeEntity(jit.Notice{Notification: *ev.Notice, NotBefore: ev.Time}, id)
	if err != nil {
		return err
	}
	if _, err := s.audit.AddEntity(ctx, e.marshal(), nil); err != nil && !isConflict(err) {
		return storeError(err, "keep notification")
	}
	return nil
}

// DueNotices returns up to limit notices due at now, earliest first.
func (s *Store) DueNotices(ctx context.Context, now time.Time, limit int) ([]jit.Notice, error) {
	filter := "PartitionKey eq " + odataString(noticePartition) + " and NotBefore le " + odataString(noticeTime(now))
	var due []jit.Notice
	err := s.scan(ctx, s.audit, filter, 0, func(e entity) (bool, error) {
		var n jit.Notice
		if err := e.payload(&n); err != nil {
			return false, err
		}
		n.ETag = e.etag()
		due = append(due, n)
		return true, nil
	})
	if err != nil {
		return nil, storeError(err, "read notifications")
	}
	slices.SortStableFunc(due, func(a, b jit.Notice) int { return a.NotBefore.Compare(b.NotBefore) })
	if len(due) > limit {
		due = due[:limit]
	}
	return due, nil
}

// ClaimNotice stores n's attempts and a NotBefore of until, If-Match the
// row's ETag as read.
func (s *Store) ClaimNotice(ctx context.Context, n jit.Notice, until time.Time) (jit.Notice, error) {
	id := n.Notification.ID
	match := azcore.ETag(n.ETag)
	n.NotBefore, n.ETag = until.UTC(), ""
	e, err := noticeEntity(n, escapeKey(id))
	if err != nil {
		return jit.Notice{}, err
	}
	resp, err := s.audit.UpdateEntity(ctx, e.marshal(), &aztables.UpdateEntityOptions{UpdateMode: aztables.UpdateModeReplace, IfMatch: &match})
	switch {
	case isNotFound(err):
		return jit.Notice{}, jit.Errorf(jit.ENOTFOUND, "notification %q is not waiting", id)
	case isPreconditionFailed(err):
		return jit.Notice{}, jit.Errorf(jit.ECONFLICT, "notification %q was claimed meanwhile", id)
	case err != nil:
		return jit.Notice{}, storeError(err, "claim notification")
	}
	n.ETag = string(resp.ETag)
	return n, nil
}

// SettleNotice deletes a notice's row.
func (s *Store) SettleNotice(ctx context.Context, id string) error {
	_, err := s.audit.DeleteEntity(ctx, noticePartition, escapeKey(id), nil)
	if err != nil && !isNotFound(err) {
		return storeError(err, "settle notification")
	}
	return nil
}
