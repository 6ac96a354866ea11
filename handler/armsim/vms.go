package armsim

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
)

// The simulator lets tags be set on a VM (PATCH, as the portal's tag editor
// does) and a VM be deleted, so that the events these changes cause can be
// tried on a laptop. Both complete synchronously.

// patchVM applies {"tags": {...}} to a VM and answers the VM.
func (s *Server) patchVM(w http.ResponseWriter, r *http.Request, rt route) {
	var body struct {
		Tags map[string]*string `json:"tags"`
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err == nil {
		err = json.Unmarshal(b, &body)
	}
	if err != nil {
		writeError(w, badRequest("InvalidRequestContent", "The request content was invalid and could not be deserialized: %v", err))
		return
	}
	id, err := s.SetVMTags(rt.id(typeVM), body.Tags)
	if err != nil {
		writeError(w, resourceNotFound(typeVM, rt.name, rt.rg))
		return
	}
	s.mu.Lock()
	out, _ := json.Marshal(s.st.vms[key(id)])
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, out)
}

// deleteVM removes a VM (its NICs stay, as in Azure by default).
func (s *Server) deleteVM(w http.ResponseWriter, r *http.Request, rt route) {
	if err := s.DeleteVM(rt.id(typeVM)); err != nil {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	w.WriteHeader(http.StatusOK)
}

// SetVMTags replaces a VM's tags and reports the change. It returns the
// VM's id as stored.
func (s *Server) SetVMTags(vmID string, tags map[string]*string) (string, error) {
	k := key(vmID)
	s.mu.Lock()
	vm, ok := s.st.vms[k]
	if !ok {
		s.mu.Unlock()
		return "", fmt.Errorf("armsim: no VM %s", vmID)
	}
	vm.Tags = tags
	s.markChangedLocked(kindVM, k)
	id := deref(vm.ID)
	s.mu.Unlock()
	s.changed(Change{ID: id, Type: typeVM, Operation: "write"})
	return id, nil
}

// DeleteVM removes a VM and reports the change.
func (s *Server) DeleteVM(vmID string) error {
	k := key(vmID)
	s.mu.Lock()
	vm, ok := s.st.vms[k]
	if !ok {
		s.mu.Unlock()
		return fmt.Errorf("armsim: no VM %s", vmID)
	}
	id := deref(vm.ID)
	delete(s.st.vms, k)
	s.markChangedLocked(kindVM, k)
	s.mu.Unlock()
	s.changed(Change{ID: id, Type: typeVM, Operation: "delete"})
	return nil
}
