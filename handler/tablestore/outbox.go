package tablestore

import (
	"context"
	"fmt"

	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"

	"jitaccess/handler/jit"
)

// The audit trail is another table than the policies and requests it
// records, and a transaction spans one partition of one table. So the
// events of a change travel in an outbox row, written in the change's own
// transaction, in the change's partition:
//
//	PartitionKey           RowKey             holds
//	r (requests table)     o_<first event id>  the events of a request change
//	policy (policies)      o_<first event id>  the events of a policy change
//
// After the transaction commits, the writer appends the events to the
// trail (AppendAudit: each id once) and deletes the row. A crash or an
// outage in between leaves the row; RecoverAudit appends and deletes what
// it finds. The change and its events are therefore kept together or not
// at all, and the trail can lag a change but never miss it. Escaped keys
// never hold '_', so no policy or request row can take an outbox row's key.
const outboxPrefix = "o_"

// checkEvent refuses an event that cannot be stored and puts its time in
// UTC. It returns the event's id as a key.
func checkEvent(ev *jit.AuditEvent) (string, error) {
	if ev.ID == "" {
		return "", jit.Errorf(jit.EINVALID, "audit event id is required")
	}
	if ev.Time.IsZero() {
		return "", jit.Errorf(jit.EINVALID, "audit event %q has no time", ev.ID)
	}
	id := escapeKey(ev.ID)
	if timeKeyLen+len(id) > maxKeyLen {
		return "", jit.Errorf(jit.EINVALID, "audit event id is too long to store")
	}
	ev.Time = ev.Time.UTC()
	return id, nil
}

// outbox is the outbox row of a change's events; nil when there are none.
type outbox struct {
	client *aztables.Client
	row    entity
	events []jit.AuditEvent
}

// newOutbox checks events and returns the outbox row that carries them in
// partition pk of c, or nil when there are no events.
func newOutbox(c *aztables.Client, pk string, events []jit.AuditEvent) (*outbox, error) {
	if len(events) == 0 {
		return nil, nil
	}
	evs := make([]jit.AuditEvent, len(events))
	var first string
	for i, ev := range events {
		id, err := checkEvent(&ev)
		if err != nil {
			return nil, err
		}
		if i == 0 {
			first = id
		}
		evs[i] = ev
	}
	row := newEntity(pk, outboxPrefix+first)
	if err := row.setPayload(evs, fmt.Sprintf("audit events of %q", events[0].ID)); err != nil {
		return nil, err
	}
	return &outbox{client: c, row: row, events: evs}, nil
}

// action is the write of the outbox row in the change's transaction; an
// upsert, so that a change retried with the same events is not refused.
func (o *outbox) action() aztables.TransactionAction {
	return aztables.TransactionAction{ActionType: aztables.TransactionTypeInsertReplace, Entity: o.row.marshal()}
}

// deliver appends the events of a committed change to the trail and
// deletes the outbox row. A failure leaves the row for RecoverAudit: the
// change stands, so it is not the writer's failure.
func (s *Store) deliver(ctx context.Context, o *outbox) {
	if o == nil {
		return
	}
	_ = s.drain(ctx, o.client, o.row, o.events)
}

// drain appends events to the trail, then deletes their outbox row.
func (s *Store) drain(ctx context.Context, c *aztables.Client, row entity, events []jit.AuditEvent) error {
	for _, ev := range events {
		if err := s.AppendAudit(ctx, ev); err != nil {
			return err
		}
	}
	_, err := c.DeleteEntity(ctx, row.str("PartitionKey"), row.str("RowKey"), nil)
	if err != nil && !isNotFound(err) {
		return storeError(err, "delete audit outbox row")
	}
	return nil
}

// RecoverAudit appends the events of every outbox row left by a writer
// that stopped between its change and the trail, and deletes the rows.
// It returns how many rows it completed; the first failure stops it.
func (s *Store) RecoverAudit(ctx context.Context) (int, error) {
	n := 0
	for _, part := range []struct {
		c  *aztables.Client
		pk string
	}{{s.requests, requestPartition}, {s.policies, policyPartition}} {
		filter := "PartitionKey eq " + odataString(part.pk) +
			" and RowKey ge " + odataString(outboxPrefix) + " and RowKey lt " + odataString(prefixEnd(outboxPrefix))
		var rows []entity
		if err := s.scan(ctx, part.c, filter, 0, func(e entity) (bool, error) {
			rows = append(rows, e)
			return len(rows) < 1000, nil
		}); err != nil {
			return n, storeError(err, "read audit outbox")
		}
		for _, row := range rows {
			var events []jit.AuditEvent
			if err := row.payload(&events); err != nil {
				return n, err
			}
			if err := s.drain(ctx, part.c, row, events); err != nil {
				return n, err
			}
			n++
		}
	}
	return n, nil
}
