package tablestore

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"

	"jitaccess/handler/jit"
)

// policyPartition holds every policy: ListPolicies is one range query, and
// there are few policies.
const policyPartition = "policy"

// generationRow is a row of the policy partition that every policy write
// changes in the same transaction as the policy: Table Storage has no
// condition on several entities, so "no policy changed since I listed
// them" is asked of this one row's ETag instead (see writePolicy). Policy
// rows come out of escapeKey, which never puts a letter after '!', so no
// policy has this key; and '!' sorts before the digits and lower-case
// letters that policy rows start with, so a scan of the partition meets
// this row first.
const generationRow = "!generation"

// maxPolicyTries bounds the reads and transactions of one policy write
// that other writes keep overtaking.
const maxPolicyTries = 10

func policyRow(name string) (string, error) {
	if name == "" {
		return "", jit.Errorf(jit.EINVALID, "policy name is required")
	}
	k := escapeKey(strings.ToLower(name))
	if len(k) > maxKeyLen {
		return "", jit.Errorf(jit.EINVALID, "policy name is too long")
	}
	return k, nil
}

func policyNotFound(name string) error {
	return jit.Errorf(jit.ENOTFOUND, "policy %q not found", name)
}

func policyChanged(name string) error {
	return jit.Errorf(jit.ECONFLICT, "policy %q was changed by someone else: read it again and retry", name)
}

func vmTaken(vm, policy string) error {
	return jit.VMTaken(vm, policy)
}

// GetPolicy returns the policy with the given name, in any case.
func (s *Store) GetPolicy(ctx context.Context, name string) (jit.Policy, error) {
	row, err := policyRow(name)
	if err != nil {
		return jit.Policy{}, err
	}
	e, etag, ok, err := get(ctx, s.policies, policyPartition, row)
	if err != nil {
		return jit.Policy{}, storeError(err, "read policy")
	}
	if !ok {
		return jit.Policy{}, policyNotFound(name)
	}
	e["odata.etag"] = etag
	return decodePolicy(e)
}

// decodePolicy decodes a policy row. Its ETag is the Version stored in the
// row; rows written before policies had versions have none and keep the
// Table ETag as theirs, so tags handed out then still match.
func decodePolicy(e entity) (jit.Policy, error) {
	var p jit.Policy
	if err := e.payload(&p); err != nil {
		return p, err
	}
	p.ETag = e.str("Version")
	if p.ETag == "" {
		p.ETag = e.etag()
	}
	return p, nil
}

// ListPolicies returns every policy, ordered by lower-case name (the order
// of their row keys).
func (s *Store) ListPolicies(ctx context.Context) ([]jit.Policy, error) {
	_, rows, _, err := s.readPolicies(ctx)
	if err != nil {
		return nil, err
	}
	ps := make([]jit.Policy, len(rows))
	for i, r := range rows {
		ps[i] = r.p
	}
	return ps, nil
}

// storedPolicy is a policy as read, with its row key and Table ETag.
type storedPolicy struct {
	row       string
	tableETag string
	p         jit.Policy
}

// readPolicies reads the policy partition in one range query: every
// policy, and the generation row's ETag ("" when there is no such row
// yet). The generation row sorts first, so a policy write that committed
// after it was read has changed its ETag. A generation row met after a
// policy was created during the scan, by a write the scan may have missed:
// ok is then false.
func (s *Store) readPolicies(ctx context.Context) (gen string, ps []storedPolicy, ok bool, err error) {
	ok = true
	first := true
	err = s.scan(ctx, s.policies, "PartitionKey eq "+odataString(policyPartition), 0, func(e entity) (bool, error) {
		row := e.str("RowKey")
		if row == generationRow {
			gen, ok = e.etag(), first
			return true, nil
		}
		if strings.HasPrefix(row, outboxPrefix) {
			return true, nil // events on their way to the trail
		}
		first = false
		p, err := decodePolicy(e)
		if err != nil {
			return false, err
		}
		ps = append(ps, storedPolicy{row: row, tableETag: e.etag(), p: p})
		return true, nil
	})
	return gen, ps, ok, err
}

// CreatePolicy stores a new policy; ECONFLICT when one with the same name
// (in any case) exists, or when another policy names one of its VMs.
func (s *Store) CreatePolicy(ctx context.Context, p jit.Policy, events ...jit.AuditEvent) (jit.Policy, error) {
	e, p, err := policyEntity(p)
	if err != nil {
		return jit.Policy{}, err
	}
	row := e.str("RowKey")
	err = s.writePolicy(ctx, "create policy", events, func(ps []storedPolicy) (aztables.TransactionAction, error) {
		if old := findPolicy(ps, row); old != nil {
			return aztables.TransactionAction{}, jit.Errorf(jit.ECONFLICT, "policy %q already exists", old.p.Name)
		}
		if err := checkVMsFree(ps, row, p); err != nil {
			return aztables.TransactionAction{}, err
		}
		return aztables.TransactionAction{ActionType: aztables.TransactionTypeAdd, Entity: e.marshal()}, nil
	})
	if err != nil {
		return jit.Policy{}, err
	}
	return p, nil
}

// UpdatePolicy replaces a policy. A non-empty p.ETag must match the stored
// one; ECONFLICT as well when another policy names one of its VMs.
func (s *Store) UpdatePolicy(ctx context.Context, p jit.Policy, events ...jit.AuditEvent) (jit.Policy, error) {
	want := p.ETag
	e, p, err := policyEntity(p)
	if err != nil {
		return jit.Policy{}, err
	}
	row := e.str("RowKey")
	err = s.writePolicy(ctx, "update policy", events, func(ps []storedPolicy) (aztables.TransactionAction, error) {
		old := findPolicy(ps, row)
		if old == nil {
			return aztables.TransactionAction{}, policyNotFound(p.Name)
		}
		if want != "" && want != old.p.ETag {
			return aztables.TransactionAction{}, policyChanged(old.p.Name)
		}
		if err := checkVMsFree(ps, row, p); err != nil {
			return aztables.TransactionAction{}, err
		}
		match := azcore.ETag(old.tableETag)
		return aztables.TransactionAction{ActionType: aztables.TransactionTypeUpdateReplace, Entity: e.marshal(), IfMatch: &match}, nil
	})
	if err != nil {
		return jit.Policy{}, err
	}
	return p, nil
}

// writePolicy writes one policy so that no two policies ever name one VM,
// whoever writes at the same time. It lists the policies (generation row
// first); plan checks them and returns the write of the policy row; that
// write and a new generation row, If-Match the generation ETag read, go in
// one transaction. The transaction commits only if no policy write
// committed since the listing, so plan's checks still hold; if one did,
// the generation ETag has changed and everything starts over, at most
// maxPolicyTries times. A plan's error is returned as it is. The outbox
// row of events goes in the same transaction.
func (s *Store) writePolicy(ctx context.Context, doing string, events []jit.AuditEvent, plan func([]storedPolicy) (aztables.TransactionAction, error)) error {
	ob, err := newOutbox(s.policies, policyPartition, events)
	if err != nil {
		return err
	}
	for try := range maxPolicyTries {
		if try > 0 {
			if err := backoff(ctx, try); err != nil {
				return err
			}
		}
		gen, ps, ok, err := s.readPolicies(ctx)
		if err != nil {
			return err
		}
		if !ok {
			continue
		}
		act, err := plan(ps)
		if err != nil {
			return err
		}
		bump := aztables.TransactionAction{ActionType: aztables.TransactionTypeAdd, Entity: generationEntity().marshal()}
		if gen != "" {
			match := azcore.ETag(gen)
			bump = aztables.TransactionAction{ActionType: aztables.TransactionTypeUpdateReplace, Entity: generationEntity().marshal(), IfMatch: &match}
		}
		actions := []aztables.TransactionAction{act, bump}
		if ob != nil {
			actions = append(actions, ob.action())
		}
		_, err = s.policies.SubmitTransaction(ctx, actions, nil)
		if err == nil {
			s.deliver(ctx, ob)
			return nil
		}
		if code := status(err); code == 0 || code == 429 || code >= 500 {
			// It may have committed: the caller retries and finds out.
			return storeError(err, doing)
		}
		// A failed transaction's error does not say which operation
		// failed: the generation row tells whether another write got in.
		_, now, exists, gerr := get(ctx, s.policies, policyPartition, generationRow)
		if gerr != nil {
			return storeError(gerr, doing)
		}
		if exists == (gen != "") && now == gen {
			// Nobody overtook us, yet the policy's own write failed: a
			// writer that does not bump the generation, or a bad entity.
			return storeError(err, doing)
		}
	}
	return jit.Errorf(jit.ECONFLICT, "policies were changed concurrently; try again")
}

// generationEntity is the generation row as every write replaces it: only
// its ETag matters.
func generationEntity() entity {
	e := newEntity(policyPartition, generationRow)
	e["Purpose"] = "changed by every policy write, so that writes can tell they raced"
	return e
}

// backoff waits a random time that grows with try, so that writers that
// keep overtaking each other spread out.
func backoff(ctx context.Context, try int) error {
	return jit.Sleep(ctx, time.Duration(rand.Int64N(int64(min(try, 10))*int64(5*time.Millisecond))))
}

func findPolicy(ps []storedPolicy, row string) *storedPolicy {
	for i := range ps {
		if ps[i].row == row {
			return &ps[i]
		}
	}
	return nil
}

// checkVMsFree refuses p, stored under row, when another of ps names one
// of its VMs.
func checkVMsFree(ps []storedPolicy, row string, p jit.Policy) error {
	mine := make(map[string]string, len(p.VMs))
	for _, vm := range p.VMs {
		mine[strings.ToLower(vm.ID)] = vm.ID
	}
	for _, other := range ps {
		if other.row == row {
			continue
		}
		for _, vm := range other.p.VMs {
			if id, ok := mine[strings.ToLower(vm.ID)]; ok {
				return vmTaken(id, other.p.Name)
			}
		}
	}
	return nil
}

// DeletePolicy removes a policy. A non-empty etag must match the stored one.
//
// It reads the policy, then deletes it If-Match the Table ETag read and
// replaces the generation row in one transaction. Unconditionally: a
// deletion frees VMs and cannot break the one-policy rule, but it must
// still make writes that listed the policy start over.
func (s *Store) DeletePolicy(ctx context.Context, name, etag string, events ...jit.AuditEvent) error {
	row, err := policyRow(name)
	if err != nil {
		return err
	}
	ob, err := newOutbox(s.policies, policyPartition, events)
	if err != nil {
		return err
	}
	e, tableETag, ok, err := get(ctx, s.policies, policyPartition, row)
	if err != nil {
		return storeError(err, "read policy")
	}
	if !ok {
		return policyNotFound(name)
	}
	e["odata.etag"] = tableETag
	old, err := decodePolicy(e)
	if err != nil {
		return err
	}
	if etag != "" && etag != old.ETag {
		return policyChanged(old.Name)
	}
	match := azcore.ETag(tableETag)
	actions := []aztables.TransactionAction{
		{ActionType: aztables.TransactionTypeDelete, Entity: newEntity(policyPartition, row).marshal(), IfMatch: &match},
		{ActionType: aztables.TransactionTypeInsertReplace, Entity: generationEntity().marshal()},
	}
	if ob != nil {
		actions = append(actions, ob.action())
	}
	_, err = s.policies.SubmitTransaction(ctx, actions, nil)
	if err == nil {
		s.deliver(ctx, ob)
		return nil
	}
	if code := status(err); code == 0 || code == 429 || code >= 500 {
		return storeError(err, "delete policy") // it may have committed
	}
	_, now, exists, gerr := get(ctx, s.policies, policyPartition, row)
	switch {
	case gerr == nil && !exists:
		return policyNotFound(name)
	case gerr == nil && now != tableETag:
		return policyChanged(old.Name)
	}
	return storeError(err, "delete policy")
}

// policyEntity returns the entity of p with a new version, and p as it
// will read back: times in UTC, the version as its ETag. The version is
// stored rather than the Table ETag used because writes are transactions,
// whose responses carry no ETags.
func policyEntity(p jit.Policy) (entity, jit.Policy, error) {
	row, err := policyRow(p.Name)
	if err != nil {
		return nil, p, err
	}
	p.ETag = ""
	p.CreatedAt = p.CreatedAt.UTC()
	p.UpdatedAt = p.UpdatedAt.UTC()
	e := newEntity(policyPartition, row)
	e["Name"] = p.Name // for people browsing the table
	if err := e.setPayload(p, fmt.Sprintf("policy %q", p.Name)); err != nil {
		return nil, p, err
	}
	p.ETag = newVersion()
	e["Version"] = p.ETag
	return e, p, nil
}
