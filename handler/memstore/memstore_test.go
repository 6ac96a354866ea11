package memstore_test

import (
	"testing"

	"jitaccess/handler/jit"
	"jitaccess/handler/memstore"
	"jitaccess/handler/storetest"
)

// The in-memory store keeps the same contract as bbolt and Table Storage.
func TestStore(t *testing.T) {
	storetest.Run(t, func(t *testing.T) jit.Store { return memstore.New() })
}
