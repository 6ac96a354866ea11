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
//	policies  "policy" / "!generation"                     changed by every policy write
//	          "policy" / <lower-case name>                 one partition, name order
//	          "nsg"    / <vmKey(NSG id)>                   the state of one NSG
//	          "use"    / <vmKey(VM id)>                    the recent use of one VM
//	requests  "r"      / i_<id>                            the record
//	          "r"      / t_<timeKey(start)><id>            every request, newest first
//	          "r"      / v_<vm>_<timeKey(start)><id>       one VM's requests, newest first
//	audit     i_<id>   / "id"                              first append wins (idempotence)
//	          "all"    / <timeKey(time)><id>               the trail, newest first
//	          v_<vm>   / <timeKey(time)><id>               one VM's trail, newest first
//
// Ids, names and VM ids go through escapeKey, a reversible escape that
// keeps byte order and never yields the characters keys forbid (/ \ # ?,
// control characters); VM and NSG ids are lower-cased first (ARM ids
// ignore case), and an NSG state keeps the id as its first writer spelled
// it. The NSG states share the policies table so that the deployment needs
// no fourth table; ListPolicies reads the "policy" partition only.
// timeKey is 24 hex digits of the inverted time, so ascending keys are
// newest first, ties in ascending id order; it keeps nanoseconds and any
// year, where Table Storage's DateTime starts in 1601 at 100 ns.
//
// Every record is the JSON of its jit struct (the names of its json tags;
// testdata/*.golden holds each kind of entity as this version writes it)
// in string properties D0, D1, ... of at most 30,000 bytes each (a
// property holds 64 KiB); a record
// above 16 KiB of JSON is gzipped and stored as base64 in Z0, Z1, ...
// instead (a policy of 1,000 VMs, about 460 KB of JSON, takes about a
// tenth of that). What is stored may take 450,000 bytes (an entity holds
// 1 MiB, strings count as UTF-16) and a record 16 MiB of JSON; beyond
// either it is refused as EINVALID. Times are stored in UTC and come back
// to the nanosecond, zero times as zero.
//
// # What each call costs
//
//   - GetPolicy, GetRequest: one point read. ListPolicies: one range query
//     over the policy partition.
//   - CreatePolicy, UpdatePolicy: one range query over the policy partition
//     (one page per 1,000 policies), then one transaction of two operations:
//     the policy's insert, or replace If-Match its Table ETag, and the
//     replace of the generation row If-Match its ETag as read (its insert
//     the first time). A VM is in one policy at most and Table Storage has
//     no condition on several entities, so every policy write reads the
//     generation row (first in the query, since it sorts first), checks the
//     names and VMs of all policies, and commits only if the generation row
//     is unchanged, that is if no policy write committed since. When
//     another write got in (the transaction fails and the generation row's
//     ETag moved, one more point read to tell), it starts over, at most 10
//     times, then answers ECONFLICT. A mismatched name, ETag or VM is
//     ECONFLICT without any write.
//   - DeletePolicy: one point read, then one transaction: the delete If-Match
//     the Table ETag read and an unconditional replace of the generation row,
//     so that writes that listed the policy start over.
//   - A policy ETag is a version stored in the row (Version), because
//     transaction responses carry no ETags; rows written before there were
//     versions keep their Table ETag as their ETag until written again. The
//     stored version is compared before the write, and the write is
//     conditional on the Table ETag read with it, so If-Match stays exact.
//   - PutNSGState: one point read, then one replace If-Match the ETag read
//     (an insert for a new NSG), nothing when the merge changes nothing;
//     a 412 or 409 from another writer starts over (at most 30 times, then
//     EUNAVAILABLE). ListNSGStates: one range query over the "nsg"
//     partition.
//   - CreateRequest: one transaction (record and 1 + #VMs index rows).
//     UpdateRequest: a point read, then one replace of the record If-Match
//     the Table ETag read, or, when start time, status, policy, requestor or
//     VMs changed, one transaction that also swaps the index rows. A request
//     ETag is a version stored in the record, because transaction responses
//     carry no ETags; the Table ETag still guards every write, so a lost
//     update is impossible. At most 48 VMs per request keep any transaction
//     within the service's 100 operations.
//   - ScanRequests (and ListRequests on it): one range query over one
//     index (the VM's, or all), a page at a time, bounded below by Since;
//     the service filters index rows on status, policy and requestor, then
//     the store reads the records of the rows that passed, 8 at a time,
//     hands them to the caller between reads, and stops at Limit.
//   - RecordVMUse: one point read, then one replace If-Match the ETag read
//     (an insert for a new VM), nothing for an access counted already; a
//     412 or 409 starts over, as PutNSGState does. VMUses: one point read
//     per VM asked for, 8 at a time.
//   - AppendAudit: three inserts (id row, all, VM), or on a repeat a failed
//     insert, a read and two inserts that find their rows there.
//   - ScanAudit: one range query over one partition between From and To,
//     read page by page, fn called as each page arrives.
//
// # Trade-offs
//
// All policies share one partition with the generation row so that a
// policy write and the generation change atomically; every policy write
// reads every policy, which is cheap for the tens of policies a deployment
// has and serialises policy writes, which are rare. All requests share one
// partition so that a request and its index rows change atomically; a partition serves about 2,000 entities a second,
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
