package tablestore

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"

	"jitaccess/handler/jit"
)

// nsgPartition holds the NSG states, in the policies table so that no
// table is added to the deployment. Its row keys are nsgRow of the ids.
const nsgPartition = "nsg"

// maxStateTries bounds the read-merge-write rounds of one PutNSGState
// that other writers of the same NSG keep overtaking.
const maxStateTries = 30

// nsgRow is the row key of an NSG's state. An NSG id is an ARM id like a
// VM's, so vmKey's lower-casing, escaping and hashing of overlong ids
// serve it too.
func nsgRow(id string) string { return vmKey(id) }

// PutNSGState merges st into the stored state of its NSG
// (jit.NSGState.Merge). It reads the state, merges, and writes the result
// If-Match the ETag read (or inserts it when there was none); a writer
// that got in between makes it start over, so no writer's later part is
// lost. A merge that changes nothing writes nothing. The state keeps the
// id as its first writer spelled it.
func (s *Store) PutNSGState(ctx context.Context, st jit.NSGState) (jit.NSGState, error) {
	if st.ID == "" {
		return jit.NSGState{}, jit.Errorf(jit.EINVALID, "NSG id is required")
	}
	st.SeenAt = st.SeenAt.UTC()
	st.ErrorAt = st.ErrorAt.UTC()
	var prev jit.NSGState
	err := s.mergeRow(ctx, nsgPartition, nsgRow(st.ID), "NSG state", func(old entity, exists bool) (entity, error) {
		var stored jit.NSGState
		defer func() { prev = stored }() // of the last round, the one written
		if exists {
			if err := old.payload(&stored); err != nil {
				return nil, err
			}
		}
		merged := stored.Merge(st)
		if exists && sameJSON(stored, merged) {
			return nil, nil
		}
		return nsgStateEntity(merged)
	}, func() error {
		return jit.Errorf(jit.EUNAVAILABLE, "the state of NSG %s is being changed by many writers at once: try again", st.ID)
	})
	if err != nil {
		return jit.NSGState{}, err
	}
	return prev, nil
}

// mergeRow reads row (pk, rk) of the policies table, lets merge make the
// entity to write from it (nil: nothing to write), and writes that If-Match
// the ETag read, or inserts it when there was none. A writer that got in
// between makes it start over, so no writer's change is lost; after
// maxStateTries rounds it gives up with busy().
func (s *Store) mergeRow(ctx context.Context, pk, rk, what string, merge func(old entity, exists bool) (entity, error), busy func() error) error {
	for try := range maxStateTries {
		if try > 0 {
			if err := backoff(ctx, try); err != nil {
				return err
			}
		}
		old, etag, exists, err := get(ctx, s.policies, pk, rk)
		if err != nil {
			return storeError(err, "read "+what)
		}
		e, err := merge(old, exists)
		if err != nil || e == nil {
			return err
		}
		if exists {
			match := azcore.ETag(etag)
			_, err = s.policies.UpdateEntity(ctx, e.marshal(), &aztables.UpdateEntityOptions{UpdateMode: aztables.UpdateModeReplace, IfMatch: &match})
		} else {
			_, err = s.policies.AddEntity(ctx, e.marshal(), nil)
		}
		switch {
		case err == nil:
			return nil
		case isPreconditionFailed(err), isConflict(err), isNotFound(err):
			continue // another writer got in: merge with what it wrote
		}
		return storeError(err, "write "+what)
	}
	return busy()
}

// nsgStateEntity returns the entity of st.
func nsgStateEntity(st jit.NSGState) (entity, error) {
	e := newEntity(nsgPartition, nsgRow(st.ID))
	e["Id"] = st.ID // for people browsing the table
	if err := e.setPayload(st, fmt.Sprintf("state of NSG %s", st.ID)); err != nil {
		return nil, err
	}
	return e, nil
}

func sameJSON(a, b jit.NSGState) bool {
	ja, errA := json.Marshal(a)
	jb, errB := json.Marshal(b)
	return errA == nil && errB == nil && bytes.Equal(ja, jb)
}

// ListNSGStates returns every NSG state, in row key order.
func (s *Store) ListNSGStates(ctx context.Context) ([]jit.NSGState, error) {
	var sts []jit.NSGState
	err := s.scan(ctx, s.policies, "PartitionKey eq "+odataString(nsgPartition), 0, func(e entity) (bool, error) {
		var st jit.NSGState
		if err := e.payload(&st); err != nil {
			return false, err
		}
		sts = append(sts, st)
		return true, nil
	})
	return sts, err
}
