package tablestore

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"

	"jitaccess/handler/jit"
)

// usePartition holds each VM's recent use (jit.VMUse), in the policies
// table beside the NSG states, row key vmKey(VM id).
const usePartition = "use"

// RecordVMUse adds a to the VM's stored use (jit.VMUse.With): it reads the
// record, adds, and writes If-Match the ETag read (inserts a new one); a
// writer that got in between makes it start over, so no access is lost.
// An access counted already writes nothing.
func (s *Store) RecordVMUse(ctx context.Context, a jit.VMAccess) error {
	if a.VM == "" || a.Request == "" {
		return jit.Errorf(jit.EINVALID, "a VM access needs a VM and a request")
	}
	return s.mergeRow(ctx, usePartition, vmKey(a.VM), "VM use", func(old entity, exists bool) (entity, error) {
		var u jit.VMUse
		if exists {
			if err := old.payload(&u); err != nil {
				return nil, err
			}
		}
		if slices.Contains(u.Recent, a.Request) {
			return nil, nil // counted already
		}
		return vmUseEntity(u.With(a))
	}, func() error {
		return jit.Errorf(jit.EUNAVAILABLE, "the use of VM %s is being recorded by many writers at once: try again", a.VM)
	})
}

// vmUseEntity returns the entity of u.
func vmUseEntity(u jit.VMUse) (entity, error) {
	e := newEntity(usePartition, vmKey(u.VM))
	e["Id"] = u.VM // for people browsing the table
	if err := e.setPayload(u, fmt.Sprintf("use of VM %s", u.VM)); err != nil {
		return nil, err
	}
	return e, nil
}

// VMUses reads the use of each VM by key, a few point reads at a time.
func (s *Store) VMUses(ctx context.Context, vms []string) (map[string]jit.VMUse, error) {
	out := make(map[string]jit.VMUse, len(vms))
	var mu sync.Mutex
	var firstErr error
	sem := make(chan struct{}, fetchParallel)
	var wg sync.WaitGroup
	for _, vm := range vms {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			e, _, ok, err := get(ctx, s.policies, usePartition, vmKey(vm))
			var u jit.VMUse
			if err == nil && ok {
				err = e.payload(&u)
			}
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil && firstErr == nil:
				firstErr = storeError(err, "read VM use")
			case err == nil && ok && strings.EqualFold(u.VM, vm): // a hashed key shared by another id reads as none
				out[strings.ToLower(vm)] = u
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	return out, nil
}
