package tablestore

import (
	"context"
	"fmt"
	"strings"
	"time"

	"jitaccess/handler/jit"
)

// The audit table holds each event three times, each a full copy:
//
//	PartitionKey        RowKey                 for
//	i_<id>              "id"                   idempotence: the first append wins
//	all                 <timeKey(time)><id>    the whole trail, newest first
//	v_<vmKey(vm)>       <timeKey(time)><id>    one VM's trail, newest first
//
// (<id> is escapeKey(id).) The id row is written first with AddEntity,
// which fails when it exists; the trail rows are then copied from whatever
// the id row holds. A redelivered or concurrent append of the same id thus
// writes the first append's event (AddEntity again, conflicts ignored), and
// also completes the trail rows of an append that failed half-way.
const (
	auditAll      = "all"
	auditIDPrefix = "i_"
	auditVMPrefix = "v_"
	auditIDRow    = "id"
)

// AppendAudit stores ev once: an event whose ID is stored already is left as
// it is, even if ev differs.
func (s *Store) AppendAudit(ctx context.Context, ev jit.AuditEvent) error {
	id, err := checkEvent(&ev)
	if err != nil {
		return err
	}
	idRow, err := auditIDEntity(ev, id)
	if err != nil {
		return err
	}
	if ev.Notice != nil {
		// First, so that an append cut short after it is completed by the
		// next append of the event (at least once).
		if err := s.addNotice(ctx, ev, id); err != nil {
			return err
		}
	}
	_, err = s.audit.AddEntity(ctx, idRow.marshal(), nil)
	if isConflict(err) {
		stored, _, ok, gerr := get(ctx, s.audit, auditIDPrefix+id, auditIDRow)
		if gerr != nil {
			return storeError(gerr, "read audit event")
		}
		if !ok {
			return fmt.Errorf("audit event %q: id row vanished", ev.ID)
		}
		if err := stored.payload(&ev); err != nil {
			return err
		}
		idRow = stored
	} else if err != nil {
		return storeError(err, "append audit event")
	}
	for _, row := range auditTrailEntities(ev, id, idRow) {
		if _, err := s.audit.AddEntity(ctx, row.marshal(), nil); err != nil && !isConflict(err) {
			return storeError(err, "append audit event")
		}
	}
	return nil
}

// auditIDEntity returns the id row of ev, whose key is id (checkEvent's).
func auditIDEntity(ev jit.AuditEvent, id string) (entity, error) {
	row := newEntity(auditIDPrefix+id, auditIDRow)
	if err := row.setPayload(ev, fmt.Sprintf("audit event %q", ev.ID)); err != nil {
		return nil, err
	}
	return row, nil
}

// auditTrailEntities returns the trail rows of ev (all, then its VM's),
// each holding the record of idRow.
func auditTrailEntities(ev jit.AuditEvent, id string, idRow entity) []entity {
	partitions := []string{auditAll}
	if ev.VM != "" {
		partitions = append(partitions, auditVMPrefix+vmKey(ev.VM))
	}
	rows := make([]entity, len(partitions))
	for i, pk := range partitions {
		rows[i] = newEntity(pk, timeKey(ev.Time)+id)
		for _, name := range idRow.payloadProps() {
			rows[i][name] = idRow[name]
		}
	}
	return rows
}

// ScanAudit calls fn for each event that matches f, newest first, ties in
// ascending id order. It reads one partition (the VM's, or all) over the
// row-key range of [From, To), page by page, and calls fn as it goes, so
// memory does not grow with the trail.
func (s *Store) ScanAudit(ctx context.Context, f jit.AuditFilter, fn func(jit.AuditEvent) error) error {
	pk := auditAll
	if f.VM != "" {
		pk = auditVMPrefix + vmKey(f.VM)
	}
	filter := "PartitionKey eq " + odataString(pk)
	if !f.To.IsZero() {
		// Newest first: the first row is the newest before To.
		filter += " and RowKey ge " + odataString(timeKey(f.To.Add(-time.Nanosecond)))
	}
	if !f.From.IsZero() {
		filter += " and RowKey lt " + odataString(timeKey(f.From.Add(-time.Nanosecond)))
	}
	if !f.After.IsZero() {
		filter += " and RowKey gt " + odataString(positionKey(f.After))
	}
	seen := 0
	return s.scan(ctx, s.audit, filter, f.Limit, func(e entity) (bool, error) {
		var ev jit.AuditEvent
		if err := e.payload(&ev); err != nil {
			return false, err
		}
		if f.VM != "" && !strings.EqualFold(ev.VM, f.VM) {
			return true, nil // a hashed VM key shared by another id
		}
		if err := fn(ev); err != nil {
			return false, err
		}
		seen++
		return f.Limit <= 0 || seen < f.Limit, nil
	})
}
