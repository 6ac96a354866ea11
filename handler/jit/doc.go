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
package jit
