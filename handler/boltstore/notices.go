package boltstore

import (
	"context"
	"slices"
	"time"

	"go.etcd.io/bbolt"

	"jitaccess/handler/jit"
)

// storedNotice is a notice as the notices bucket keeps it: Version is its
// ETag, new at every write.
type storedNotice struct {
	jit.Notice
	Version string `json:"Version"`
}

// DueNotices returns up to limit notices due at now, earliest first. The
// bucket holds only what is not delivered yet, so it is read whole.
func (s *Store) DueNotices(ctx context.Context, now time.Time, limit int) ([]jit.Notice, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var due []jit.Notice
	err := s.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketNotices).ForEach(func(k, v []byte) error {
			var n storedNotice
			if err := decode(v, &n); err != nil {
				return err
			}
			if !n.NotBefore.After(now) {
				n.ETag = n.Version
				due = append(due, n.Notice)
			}
			return nil
		})
	})
	slices.SortStableFunc(due, func(a, b jit.Notice) int { return a.NotBefore.Compare(b.NotBefore) })
	if len(due) > limit {
		due = due[:limit]
	}
	return due, err
}

// ClaimNotice stores n's attempts and a NotBefore of until if the notice
// is as read.
func (s *Store) ClaimNotice(ctx context.Context, n jit.Notice, until time.Time) (jit.Notice, error) {
	if err := ctx.Err(); err != nil {
		return jit.Notice{}, err
	}
	id, want := n.Notification.ID, n.ETag
	n.NotBefore = until.UTC()
	stored := storedNotice{Notice: n, Version: newETag()}
	stored.ETag = ""
	err := s.db.Batch(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketNotices)
		v := b.Get([]byte(id))
		if v == nil {
			return jit.Errorf(jit.ENOTFOUND, "notification %q is not waiting", id)
		}
		var old storedNotice
		if err := decode(v, &old); err != nil {
			return err
		}
		if old.Version != want {
			return jit.Errorf(jit.ECONFLICT, "notification %q was claimed meanwhile", id)
		}
		return put(b, []byte(id), stored)
	})
	if err != nil {
		return jit.Notice{}, err
	}
	n.ETag = stored.Version
	return n, nil
}

// SettleNotice removes a notice.
func (s *Store) SettleNotice(ctx context.Context, id string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.db.Batch(func(tx *bbolt.Tx) error { return tx.Bucket(bucketNotices).Delete([]byte(id)) })
}
