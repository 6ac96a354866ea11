// Package tablestore keeps jitaccess's state in Azure Table Storage: it
// implements jit.Store for the Azure deployment, and passes the same
// behaviour suite (storetest) as the bbolt store, against Azurite.
//
// It depends on jit and the aztables SDK only; it must not know about HTTP,
// the queue or ARM.
//
// # Tables and keys
//
// Three tables, <prefix>policies, <prefix>requests and <prefix>audit,
// created when missing. Table Storage keeps entities sorted by PartitionKey
// then RowKey and answers range queries on them, so keys are chosen for the
// API's queries:
//
//	policies  "policy" / <lower-case name>                 one partition, name order
//	requests  "r"      / i_<id>                            the record
//	          "r"      / t_<timeKey(start)><id>            every request, newest first
//	          "r"      / v_<vm>_<timeKey(start)><id>       one VM's requests, newest first
//	audit     i_<id>   / "id"                              first append wins (idempotence)
//	          "all"    / <timeKey(time)><id>               the trail, newest first
//	          v_<vm>   / <timeKey(time)><id>               one VM's trail, newest first
//
// Ids, names and VM ids go through escapeKey, a reversible escape that
// keeps byte order and never yields the characters keys forbid (/ \ # ?,
// control characters); VM ids are lower-cased first (ARM ids ignore
// case). timeKey is 24 hex digits of the inverted time, so ascending keys
// are newest first, ties in ascending id order; it keeps nanoseconds and
// any year, where Table Storage's DateTime starts in 1601 at 100 ns.
//
// Every record is the JSON of its jit struct in string properties D0, D1,
// ... of at most 30,000 bytes each (a property holds 64 KiB), so a policy
// of many VMs fits; a record above 450,000 bytes of JSON (an entity holds
// 1 MiB, strings count as UTF-16) is refused as EINVALID. Times are stored
// in UTC and come back to the nanosecond, zero times as zero.
//
// # What each call costs
//
//   - GetPolicy, GetRequest: one point read. ListPolicies: one range query
//     over the policy partition.
//   - CreatePolicy: one insert (409 is ECONFLICT). UpdatePolicy and
//     DeletePolicy: one conditional write, If-Match the policy's ETag (412
//     is ECONFLICT); the policy ETag is the Table ETag.
//   - CreateRequest: one transaction (record and 1 + #VMs index rows).
//     UpdateRequest: a point read, then one replace of the record If-Match
//     the Table ETag read, or, when start time, status, policy, requestor or
//     VMs changed, one transaction that also swaps the index rows. A request
//     ETag is a version stored in the record, because transaction responses
//     carry no ETags; the Table ETag still guards every write, so a lost
//     update is impossible. At most 48 VMs per request keep any transaction
//     within the service's 100 operations.
//   - ListRequests: one range query over one index (the VM's, or all),
//     bounded below by Since; the service filters index rows on status,
//     policy and requestor, then the store reads the records of the rows
//     that passed, 8 at a time, and stops at Limit.
//   - AppendAudit: three inserts (id row, all, VM), or on a repeat a failed
//     insert, a read and two inserts that find their rows there.
//   - ScanAudit: one range query over one partition between From and To,
//     read page by page, fn called as each page arrives.
//
// # Trade-offs
//
// All requests share one partition so that a request and its index rows
// change atomically; a partition serves about 2,000 entities a second,
// far above the rate people ask for access. Index rows hold no payload, so
// listing costs a read per request returned, but an update that only
// records an NSG's progress rewrites one entity. The audit trail is written
// twice (plus the id row) so that both "all events" and "one VM's events"
// are single-partition range queries; its "all" partition is likewise
// bounded by the per-partition rate, which the audit rate of a JIT service
// does not approach. Filters name only index fields, with values quoted
// as OData literals (quotes doubled); user values never reach a filter
// except there, and keys are escaped.
package tablestore
