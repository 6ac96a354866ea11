package memstore

import (
	"context"
	"strings"

	"jitaccess/handler/jit"
)

// RecordVMUse adds a to the VM's use (jit.VMUse.With).
func (s *Store) RecordVMUse(ctx context.Context, a jit.VMAccess) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if a.VM == "" || a.Request == "" {
		return jit.Errorf(jit.EINVALID, "a VM access needs a VM and a request")
	}
	key := strings.ToLower(a.VM)
	s.mu.Lock()
	defer s.mu.Unlock()
	var u jit.VMUse
	if b, ok := s.uses[key]; ok {
		u = decode[jit.VMUse](b)
	}
	if s.uses == nil {
		s.uses = map[string][]byte{}
	}
	s.uses[key] = encode(u.With(a))
	return nil
}

// VMUses returns the use of each VM that has one, by lower-case id.
func (s *Store) VMUses(ctx context.Context, vms []string) (map[string]jit.VMUse, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]jit.VMUse{}
	for _, vm := range vms {
		if b, ok := s.uses[strings.ToLower(vm)]; ok {
			out[strings.ToLower(vm)] = decode[jit.VMUse](b)
		}
	}
	return out, nil
}
