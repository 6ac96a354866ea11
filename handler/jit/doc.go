// Package jit is the domain of jitaccess: policies that say which ports of
// which VMs may be opened, from where and for how long; requests that ask for
// access; the grants they turn into; the operations that open and close the
// allow rules; and the audit trail of it all.
//
// It knows nothing of Azure SDKs, HTTP or files. It defines three small
// interfaces that adapters implement: Store (tablestore, boltstore), Queue
// (servicebus, localqueue) and Network (azurenet). Use cases take a
// context and a Principal and return *Error values whose codes the front doors
// map to status codes.
//
// The service is three roles over one Core (the adapters, the settings, the
// VM inventory cache and notification delivery), built in this order by
// both modes: API (the use cases behind HTTP; it stores changes and queues
// their operations), Applier (the Worker the queue delivers operations to;
// it queues nothing, so the queue is built before it and handed it when it
// starts) and Reconciler (the sweeper and the resource events, which close
// through the Applier and revoke and re-lock through the API). Local mode
// builds them in handler/localmode, Functions mode in handler/functions.go;
// nothing else differs between the modes but the adapters.
//
// The structs that adapters store or send (Policy, Request, AuditEvent,
// NSGState, Operation and every struct inside them) carry a json tag on
// every field: those names are the stored format of both stores and of the
// local queue, and records written by earlier releases carry them. The
// golden files in the adapters' testdata hold each record as this version
// writes it. A stored field is never renamed: add a new one and read both.
// Readers ignore names they do not know, so a field nothing reads any more
// can go.
package jit
