// Package boltstore keeps jitaccess's state in one embedded bbolt file: it
// implements jit.Store for local mode, where the service runs on a laptop
// without any cloud account. The same file also holds the local queue's
// buckets (see package localqueue), which is why DB hands out its *bbolt.DB.
//
// It depends on jit and bbolt only; it must not know about HTTP, Azure or
// the queue's record format.
package boltstore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"go.etcd.io/bbolt"
)

// openTimeout bounds the wait for bbolt's file lock. A second process that
// opens the same file fails quickly with a clear message instead of hanging.
const openTimeout = time.Second

// DB is an open bbolt file.
type DB struct {
	bolt *bbolt.DB
	path string
}

// initialMmap is how much address space the file is mapped with at first.
// bbolt remaps the file when it outgrows its map, and a remap waits for
// every read transaction to end: a sweep listing tens of thousands of
// requests would hold up every write (each initiate) for as long as it
// reads. Mapping ahead makes remaps rare; it costs address space, not
// memory, because only the pages in use are resident.
const initialMmap = 1 << 30

// Open opens the bbolt file at path, creating it and its parent directory
// when missing. The file is readable by its owner only, because it holds the
// audit trail.
func Open(path string) (*DB, error) {
	if path == "" {
		return nil, errors.New("open state file: empty path")
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create state directory: %w", err)
	}
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: openTimeout, InitialMmapSize: initialMmap})
	if errors.Is(err, bbolt.ErrTimeout) {
		return nil, fmt.Errorf("open state file %s: it is in use by another process (is another `handler local` running?): %w", path, err)
	}
	if err != nil {
		return nil, fmt.Errorf("open state file %s: %w", path, err)
	}
	// Concurrent writers (queue workers, the sweeper, the API) share one
	// commit and its fsync; a lone writer waits at most this long.
	db.MaxBatchDelay = 2 * time.Millisecond
	return &DB{bolt: db, path: path}, nil
}

// Close closes the file. Stop users of Bolt (the local queue) first.
func (db *DB) Close() error {
	if err := db.bolt.Close(); err != nil {
		return fmt.Errorf("close state file %s: %w", db.path, err)
	}
	return nil
}

// Bolt returns the underlying bbolt handle, so that other local adapters can
// keep their buckets in the same file.
func (db *DB) Bolt() *bbolt.DB { return db.bolt }
