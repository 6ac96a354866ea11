package boltstore

import (
	"context"
	"strings"

	"go.etcd.io/bbolt"

	"jitaccess/handler/jit"
)

// bucketVMUse holds each VM's recent use (jit.VMUse) by lower-case VM id.
var bucketVMUse = []byte("vm_use")

// RecordVMUse adds a to the VM's stored use (jit.VMUse.With) in one write
// transaction, which bbolt runs one at a time.
func (s *Store) RecordVMUse(ctx context.Context, a jit.VMAccess) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if a.VM == "" || a.Request == "" {
		return jit.Errorf(jit.EINVALID, "a VM access needs a VM and a request")
	}
	key := []byte(strings.ToLower(a.VM))
	return s.db.Batch(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketVMUse)
		var u jit.VMUse
		if v := b.Get(key); v != nil {
			if err := decode(v, &u); err != nil {
				return err
			}
		}
		return put(b, key, u.With(a))
	})
}

// VMUses reads the use of each VM by key, in one read transaction.
func (s *Store) VMUses(ctx context.Context, vms []string) (map[string]jit.VMUse, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	out := map[string]jit.VMUse{}
	err := s.db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketVMUse)
		for _, vm := range vms {
			key := strings.ToLower(vm)
			if v := b.Get([]byte(key)); v != nil {
				var u jit.VMUse
				if err := decode(v, &u); err != nil {
					return err
				}
				out[key] = u
			}
		}
		return nil
	})
	return out, err
}
