package tablestore

import (
	"context"
	"fmt"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"

	"jitaccess/handler/jit"
)

// policyPartition holds every policy: ListPolicies is one range query, and
// there are few policies.
const policyPartition = "policy"

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
	var p jit.Policy
	if err := e.payload(&p); err != nil {
		return jit.Policy{}, err
	}
	p.ETag = etag
	return p, nil
}

// ListPolicies returns every policy, ordered by lower-case name (the order
// of their row keys).
func (s *Store) ListPolicies(ctx context.Context) ([]jit.Policy, error) {
	var ps []jit.Policy
	err := s.scan(ctx, s.policies, "PartitionKey eq "+odataString(policyPartition), 0, func(e entity) (bool, error) {
		var p jit.Policy
		if err := e.payload(&p); err != nil {
			return false, err
		}
		p.ETag = e.etag()
		ps = append(ps, p)
		return true, nil
	})
	return ps, err
}

// CreatePolicy stores a new policy; ECONFLICT when one with the same name
// (in any case) exists.
func (s *Store) CreatePolicy(ctx context.Context, p jit.Policy) (jit.Policy, error) {
	e, p, err := policyEntity(p)
	if err != nil {
		return jit.Policy{}, err
	}
	resp, err := s.policies.AddEntity(ctx, e.marshal(), nil)
	if isConflict(err) {
		return jit.Policy{}, jit.Errorf(jit.ECONFLICT, "policy %q already exists", p.Name)
	}
	if err != nil {
		return jit.Policy{}, storeError(err, "create policy")
	}
	p.ETag = string(resp.ETag)
	return p, nil
}

// UpdatePolicy replaces a policy. A non-empty p.ETag must match the stored
// one: the write is conditional (If-Match), so a lost update is impossible.
func (s *Store) UpdatePolicy(ctx context.Context, p jit.Policy) (jit.Policy, error) {
	want := p.ETag
	e, p, err := policyEntity(p)
	if err != nil {
		return jit.Policy{}, err
	}
	if want != "" && !isTableETag(want) {
		return jit.Policy{}, s.policyMismatch(ctx, p.Name)
	}
	match := azcore.ETagAny
	if want != "" {
		match = azcore.ETag(want)
	}
	resp, err := s.policies.UpdateEntity(ctx, e.marshal(), &aztables.UpdateEntityOptions{UpdateMode: aztables.UpdateModeReplace, IfMatch: &match})
	switch {
	case isNotFound(err):
		return jit.Policy{}, policyNotFound(p.Name)
	case isPreconditionFailed(err):
		return jit.Policy{}, policyChanged(p.Name)
	case err != nil:
		return jit.Policy{}, storeError(err, "update policy")
	}
	p.ETag = string(resp.ETag)
	return p, nil
}

// DeletePolicy removes a policy. A non-empty etag must match the stored one.
func (s *Store) DeletePolicy(ctx context.Context, name, etag string) error {
	row, err := policyRow(name)
	if err != nil {
		return err
	}
	if etag != "" && !isTableETag(etag) {
		return s.policyMismatch(ctx, name)
	}
	match := azcore.ETagAny
	if etag != "" {
		match = azcore.ETag(etag)
	}
	_, err = s.policies.DeleteEntity(ctx, policyPartition, row, &aztables.DeleteEntityOptions{IfMatch: &match})
	switch {
	case isNotFound(err):
		return policyNotFound(name)
	case isPreconditionFailed(err):
		return policyChanged(name)
	}
	return storeError(err, "delete policy")
}

// policyMismatch answers a write whose ETag cannot match: ENOTFOUND when
// the policy is missing, ECONFLICT otherwise.
func (s *Store) policyMismatch(ctx context.Context, name string) error {
	if _, err := s.GetPolicy(ctx, name); err != nil {
		return err
	}
	return policyChanged(name)
}

// policyEntity returns the entity of p, and p as it will read back: times
// in UTC, no ETag.
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
	return e, p, nil
}
