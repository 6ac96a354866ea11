// Package armsim is a stateful, in-memory simulator of the slice of Azure
// Resource Manager that jitaccess talks to: virtual machines, network
// interfaces, virtual networks and subnets (read-only), and network security
// groups with their security rules (read and write). It is an http.Handler
// that serves ARM's own paths and JSON shapes, so the real armnetwork and
// armcompute clients run against it unchanged: in tests on an
// httptest.Server, in local mode under /_arm where people can look at the
// rules the service writes.
//
// It imitates what the service must cope with in Azure: security rule
// validation (priority 100–4096 unique per direction, SecurityRuleConflict,
// 1,000 rules per NSG), long-running operations polled through
// Azure-AsyncOperation and Location, etags that change on every write, and
// injected latency and faults (429 with Retry-After, 409
// AnotherOperationInProgress, 500, failed operations), either deterministic
// (FailNext) or drawn from a seeded random source (SetChaos). It counts the
// calls it receives by kind so tests and benchmarks can report them.
//
// armsim must not import the service's packages (handler/jit and its
// adapters): it simulates Azure, not jitaccess. It depends only on the
// standard library and on the Azure SDK's model types, which fix the JSON
// shapes.
package armsim
