package jit

import (
	"context"
	"fmt"
	"slices"
	"strings"
)

// Resource event types (Azure Resource Manager events via Event Grid).
const (
	EventWriteSuccess  = "Microsoft.Resources.ResourceWriteSuccess"
	EventDeleteSuccess = "Microsoft.Resources.ResourceDeleteSuccess"
)

// TagPolicy on a VM names the policy it joins with Defender's defaults.
const TagPolicy = "jit-policy"

// ResourceEvent is an Azure Resource Manager event about one resource.
type ResourceEvent struct {
	ID      string // event id, for the log
	Type    string // EventWriteSuccess or EventDeleteSuccess
	Subject string // ARM id of the resource
	// Caller is the client id (appid claim) that made the change, when the
	// event says; a change to an NSG made by this service itself
	// (Config.Self) was recorded as it was written and needs no reconcile.
	Caller string
}

// HandleResourceEvent reacts at once to a change in Azure: a change to an
// NSG or one of its rules reconciles that NSG; a VM written with the
// jit-policy tag joins that policy; a deleted VM leaves its policy and its
// grants end; a changed NIC or VM refreshes what the policies know of its
// network. Every reaction is state-based, so duplicate and out-of-order
// events are harmless. Events about other resources are ignored.
func (s *Reconciler) HandleResourceEvent(ctx context.Context, ev ResourceEvent) error {
	id := ev.Subject
	s.forgetInventory()
	lower := strings.ToLower(id)
	switch {
	case strings.Contains(lower, "/providers/microsoft.network/networksecuritygroups/"):
		nsg := id[:nsgEnd(lower)]
		if ev.Caller != "" && slices.ContainsFunc(s.cfg.Self, func(c string) bool { return strings.EqualFold(c, ev.Caller) }) {
			// Our own write, echoed: what it wrote was recorded as it was
			// written (a read and a reconcile per echo would double the
			// ARM reads of every change).
			s.cfg.Log.Debug().Str("event", ev.ID).Str("nsg", nsg).Msg("our own write echoed; nothing to reconcile")
			return nil
		}
		_, err := s.ReconcileNSG(ctx, nsg)
		return err
	case strings.Contains(lower, "/providers/microsoft.compute/virtualmachines/"):
		vmID, err := ParseVMID(id)
		if err != nil {
			return nil // a VM's child resource (extension, ...): nothing to do
		}
		if ev.Type == EventDeleteSuccess {
			return s.vmDeleted(ctx, vmID.String())
		}
		return s.vmWritten(ctx, vmID.String())
	case strings.Contains(lower, "/providers/microsoft.network/networkinterfaces/"):
		return s.refreshTopology(ctx)
	}
	return nil
}

// nsgEnd is where the NSG's own id ends in the id of it or its rule.
func nsgEnd(lower string) int {
	i := strings.Index(lower, "/networksecuritygroups/") + len("/networksecuritygroups/")
	if j := strings.IndexByte(lower[i:], '/'); j >= 0 {
		return i + j
	}
	return len(lower)
}

// policyOf returns the policy that protects the VM.
func (s *Reconciler) policyOf(ctx context.Context, vmID string) (Policy, bool, error) {
	pols, err := s.store.ListPolicies(ctx)
	if err != nil {
		return Policy{}, false, err
	}
	for _, p := range pols {
		if _, ok := p.VM(vmID); ok {
			return p, true, nil
		}
	}
	return Policy{}, false, nil
}

// vmDeleted takes a deleted VM out of its policy and ends its grants, once
// ARM confirms the VM is gone: a delete event that arrives after the VM was
// created again, or one that did not come from Event Grid, must not lift
// its lockdown.
func (s *Reconciler) vmDeleted(ctx context.Context, vmID string) error {
	pol, ok, err := s.policyOf(ctx, vmID)
	if err != nil || !ok {
		return err
	}
	if _, err := s.net.ResolveVM(ctx, vmID); err == nil {
		s.cfg.Log.Info().Str("vm", vmID).Msg("delete event for a VM that exists ignored")
		return nil
	} else if ErrorCode(err) != ENOTFOUND {
		return fmt.Errorf("checking that VM %s is gone: %w", vmID, err)
	}
	vm, _ := pol.VM(vmID)
	if err := s.api.revokeVM(ctx, System, *vm); err != nil {
		return err
	}
	var keep []VMPolicy
	for _, v := range pol.VMs {
		if !SameID(v.ID, vmID) {
			keep = append(keep, v)
		}
	}
	ev := s.stamp([]AuditEvent{{Action: AuditPolicyPut, Actor: System.ID, Policy: pol.Name, VM: vmID, Result: ResultSuccess,
		Detail: "the VM was deleted: it left the policy and its grants were revoked"}})
	if len(keep) == 0 {
		if err := s.store.DeletePolicy(ctx, pol.Name, pol.ETag, ev...); err != nil {
			return fmt.Errorf("deleting policy %s of the deleted VM: %w", pol.Name, err)
		}
	} else {
		pol.VMs = keep
		if _, err := s.store.UpdatePolicy(ctx, pol, ev...); err != nil {
			return fmt.Errorf("taking the deleted VM out of policy %s: %w", pol.Name, err)
		}
	}
	// Its deny rules go from its NSGs (its addresses may be reused).
	s.api.queueSync(ctx, nsgsOf(Policy{VMs: []VMPolicy{*vm}}))
	return nil
}

// vmWritten enrols a VM tagged jit-policy=<name> with Defender's defaults,
// and refreshes what its policy knows of a protected VM's network.
func (s *Reconciler) vmWritten(ctx context.Context, vmID string) error {
	pol, ok, err := s.policyOf(ctx, vmID)
	if err != nil {
		return err
	}
	if ok {
		return s.refreshVM(ctx, pol, vmID)
	}
	info, err := s.net.ResolveVM(ctx, vmID)
	if ErrorCode(err) == ENOTFOUND {
		return nil // deleted again since: out of order
	} else if err != nil {
		return err
	}
	name := info.Tags[TagPolicy]
	if name == "" {
		return nil
	}
	if ValidatePolicyName(name) != nil || info.Unsupported != "" {
		s.drift(ctx, Request{Policy: name}, vmID, "", fmt.Sprintf("VM tagged %s=%s cannot join: %s", TagPolicy, shorten(name),
			firstNonEmpty(info.Unsupported, "the tag is not a valid policy name")))
		return nil
	}
	target, err := s.getPolicy(ctx, name)
	exists := err == nil
	if err != nil && ErrorCode(err) != ENOTFOUND {
		return err
	}
	next := target
	if !exists {
		next = Policy{Name: name}
	}
	next.VMs = append(next.VMs, VMPolicy{ID: vmID})
	etag := ""
	if exists {
		etag = target.ETag
	}
	if _, err := s.api.PutPolicy(ctx, System, next, etag); err != nil {
		return fmt.Errorf("enrolling VM %s in policy %s: %w", info.Name, name, err)
	}
	s.cfg.Log.Info().Str("vm", vmID).Str("policy", name).Msg("VM joined its tagged policy")
	return nil
}

// refreshVM re-resolves a protected VM's network; when its NSGs or IPs
// changed, the policy is rewritten so the deny rules follow.
func (s *Reconciler) refreshVM(ctx context.Context, pol Policy, vmID string) error {
	vm, ok := pol.VM(vmID)
	if !ok {
		return nil // taken out of the policy meanwhile
	}
	info, err := s.net.ResolveVM(ctx, vmID)
	if ErrorCode(err) == ENOTFOUND {
		return s.vmDeleted(ctx, vmID)
	} else if err != nil {
		return err
	}
	if sameTopology(*vm, info) {
		return nil
	}
	if info.Unsupported != "" {
		s.drift(ctx, Request{Policy: pol.Name}, vmID, "", "VM lost its network security groups: "+info.Unsupported)
		return nil
	}
	_, err = s.api.PutPolicy(ctx, System, pol, pol.ETag)
	return err
}

// refreshTopology follows a NIC change (its NSG or subnet may be another
// now): one inventory, read in list calls per page, says which protected VMs
// moved, and only their policies are looked at VM by VM.
func (s *Reconciler) refreshTopology(ctx context.Context) error {
	pols, err := s.store.ListPolicies(ctx)
	if err != nil || len(pols) == 0 {
		return err
	}
	vms, err := s.readInventory(ctx)
	if err != nil {
		return err
	}
	byID := make(map[string]VMInfo, len(vms))
	for _, v := range vms {
		byID[strings.ToLower(v.ID)] = v
	}
	moved := func(p Policy) bool {
		for _, vm := range p.VMs {
			if info, ok := byID[strings.ToLower(vm.ID)]; !ok || !sameTopology(vm, info) {
				return true
			}
		}
		return false
	}
	for _, p := range pols {
		if p.State == PolicyDeleting || !moved(p) {
			continue // a policy being deleted is not followed: its rules go
		}
		for _, vm := range p.VMs {
			if err := s.refreshVM(ctx, p, vm.ID); err != nil {
				return err
			}
			if p, err = s.store.GetPolicy(ctx, p.Name); ErrorCode(err) == ENOTFOUND {
				break // its last VM was deleted: the policy went with it
			} else if err != nil {
				return err
			}
		}
	}
	return nil
}

func sameTopology(vm VMPolicy, info VMInfo) bool {
	if len(vm.NSGs) != len(info.NSGs) || len(vm.PrivateIPs) != len(info.PrivateIPs) {
		return false
	}
	for i := range vm.NSGs {
		if !SameID(vm.NSGs[i].ID, info.NSGs[i].ID) {
			return false
		}
	}
	for i := range vm.PrivateIPs {
		if vm.PrivateIPs[i] != info.PrivateIPs[i] {
			return false
		}
	}
	return true
}

func firstNonEmpty(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
