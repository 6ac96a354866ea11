package httpapi

import (
	"encoding/json"
	"time"

	"jitaccess/handler/jit"
)

// The bodies follow Microsoft Defender for Cloud's jitNetworkAccessPolicies
// API (2020-01-01), so that existing scripts' bodies work unchanged. Our
// additions are extra fields.

type policyBody struct {
	// Read-only in Defender's model: accepted and ignored on PUT so that what
	// a GET returns can be PUT back.
	ID       json.RawMessage `json:"id,omitempty"`
	Name     json.RawMessage `json:"name,omitempty"`
	Type     json.RawMessage `json:"type,omitempty"`
	Location json.RawMessage `json:"location,omitempty"`
	Etag     json.RawMessage `json:"etag,omitempty"`
	Kind     json.RawMessage `json:"kind,omitempty"`

	Properties *policyProperties `json:"properties"`
}

type policyProperties struct {
	VirtualMachines   []policyVMBody  `json:"virtualMachines"`
	Approval          *approvalBody   `json:"approval,omitempty"`   // ours
	Requesters        []string        `json:"requesters,omitempty"` // ours
	ProvisioningState json.RawMessage `json:"provisioningState,omitempty"`
	Requests          json.RawMessage `json:"requests,omitempty"`
	UpdatedTimeUtc    json.RawMessage `json:"updatedTimeUtc,omitempty"` // ours, read-only
	UpdatedBy         json.RawMessage `json:"updatedBy,omitempty"`      // ours, read-only
}

type policyVMBody struct {
	ID              string           `json:"id"`
	Ports           []policyPortBody `json:"ports"`
	PublicIPAddress json.RawMessage  `json:"publicIpAddress,omitempty"` // Defender's; ignored
	// Ours, read-only: what a GET shows of the VM's network.
	PrivateIPAddresses    json.RawMessage `json:"privateIpAddresses,omitempty"`
	NetworkSecurityGroups json.RawMessage `json:"networkSecurityGroups,omitempty"`
	LockdownState         json.RawMessage `json:"lockdownState,omitempty"`
	LockdownReason        json.RawMessage `json:"lockdownReason,omitempty"`
	Warnings              json.RawMessage `json:"warnings,omitempty"`
}

type policyPortBody struct {
	Number                       int           `json:"number"`
	Protocol                     string        `json:"protocol"`
	AllowedSourceAddressPrefix   prefixList    `json:"allowedSourceAddressPrefix,omitempty"`
	AllowedSourceAddressPrefixes []string      `json:"allowedSourceAddressPrefixes,omitempty"`
	MaxRequestAccessDuration     string        `json:"maxRequestAccessDuration"`
	Approval                     *approvalBody `json:"approval,omitempty"` // ours
}

// approvalBody is our extension: who must approve requests.
type approvalBody struct {
	Required     bool     `json:"required"`
	Approvers    []string `json:"approvers,omitempty"`
	MinApprovals int      `json:"minApprovals,omitempty"`
}

func (a *approvalBody) toApproval() *jit.Approval {
	if a == nil {
		return nil
	}
	return &jit.Approval{Required: a.Required, Approvers: a.Approvers, MinApprovals: a.MinApprovals}
}

func approvalToOut(a *jit.Approval) *approvalBody {
	if a == nil || !a.Required {
		return nil
	}
	return &approvalBody{Required: true, Approvers: a.Approvers, MinApprovals: a.MinApprovals}
}

func (b *policyBody) toPolicy(name string) (jit.Policy, error) {
	if b.Properties == nil {
		return jit.Policy{}, jit.Errorf(jit.EINVALID, "properties is required")
	}
	pol := jit.Policy{Name: name, Approval: b.Properties.Approval.toApproval(), Requesters: b.Properties.Requesters}
	for i, vb := range b.Properties.VirtualMachines {
		vm := jit.VMPolicy{ID: vb.ID}
		for j, pb := range vb.Ports {
			pr := jit.PortRule{Number: pb.Number, Protocol: pb.Protocol, Approval: pb.Approval.toApproval()}
			if len(pb.AllowedSourceAddressPrefix) > 0 && len(pb.AllowedSourceAddressPrefixes) > 0 {
				return jit.Policy{}, jit.Errorf(jit.EINVALID, "properties.virtualMachines[%d].ports[%d]: give allowedSourceAddressPrefix or allowedSourceAddressPrefixes, not both", i, j)
			}
			pr.AllowedSources = append([]string(pb.AllowedSourceAddressPrefix), pb.AllowedSourceAddressPrefixes...)
			if pb.MaxRequestAccessDuration != "" {
				d, err := jit.ParseDuration(pb.MaxRequestAccessDuration)
				if err != nil {
					return jit.Policy{}, jit.Errorf(jit.EINVALID, "properties.virtualMachines[%d].ports[%d].maxRequestAccessDuration: %s", i, j, jit.ErrorMessage(err))
				}
				pr.MaxDuration = d
			}
			if pb.Number == 0 {
				return jit.Policy{}, jit.Errorf(jit.EINVALID, "properties.virtualMachines[%d].ports[%d].number is required and must be between 1 and 65535", i, j)
			}
			vm.Ports = append(vm.Ports, pr)
		}
		pol.VMs = append(pol.VMs, vm)
	}
	return pol, nil
}

type policyOut struct {
	ID         string        `json:"id"`
	Name       string        `json:"name"`
	Type       string        `json:"type"`
	Kind       string        `json:"kind"`
	Etag       string        `json:"etag"`
	Properties policyPropOut `json:"properties"`
}

type policyPropOut struct {
	VirtualMachines   []policyVMOut `json:"virtualMachines"`
	Approval          *approvalBody `json:"approval,omitempty"`
	Requesters        []string      `json:"requesters,omitempty"`
	ProvisioningState string        `json:"provisioningState"`
	UpdatedTimeUtc    time.Time     `json:"updatedTimeUtc"`
	UpdatedBy         string        `json:"updatedBy"`
}

type policyVMOut struct {
	ID    string        `json:"id"`
	Ports []portRuleOut `json:"ports"`
	// Ours: what JIT found guarding the VM when the policy was written.
	PrivateIPAddresses    []string `json:"privateIpAddresses,omitempty"`
	NetworkSecurityGroups []nsgOut `json:"networkSecurityGroups,omitempty"`
	// Ours: the VM's lockdown as last seen in ARM (see jit.VMLockdown).
	LockdownState  string   `json:"lockdownState"`
	LockdownReason string   `json:"lockdownReason,omitempty"`
	Warnings       []string `json:"warnings,omitempty"`
}

type portRuleOut struct {
	Number                       int           `json:"number"`
	Protocol                     string        `json:"protocol"`
	AllowedSourceAddressPrefix   string        `json:"allowedSourceAddressPrefix,omitempty"`
	AllowedSourceAddressPrefixes []string      `json:"allowedSourceAddressPrefixes,omitempty"`
	MaxRequestAccessDuration     string        `json:"maxRequestAccessDuration"`
	Approval                     *approvalBody `json:"approval,omitempty"`
}

type nsgOut struct {
	ID    string `json:"id"`
	Scope string `json:"scope"`
}

func policyToOut(p jit.Policy, st jit.PolicyStatus) policyOut {
	out := policyOut{ID: "/api/v1/policies/" + p.Name, Name: p.Name, Type: "jitaccess/policies", Kind: "Basic", Etag: p.ETag,
		Properties: policyPropOut{VirtualMachines: []policyVMOut{}, ProvisioningState: st.ProvisioningState, UpdatedTimeUtc: p.UpdatedAt, UpdatedBy: p.UpdatedBy,
			Approval: approvalToOut(p.Approval), Requesters: p.Requesters}}
	for i, vm := range p.VMs {
		vo := policyVMOut{ID: vm.ID, Ports: portRulesOut(vm.Ports), PrivateIPAddresses: vm.PrivateIPs}
		if i < len(st.VMs) {
			vo.LockdownState, vo.LockdownReason, vo.Warnings = st.VMs[i].State, st.VMs[i].Reason, st.VMs[i].Warnings
		}
		for _, n := range vm.NSGs {
			vo.NetworkSecurityGroups = append(vo.NetworkSecurityGroups, nsgOut(n))
		}
		out.Properties.VirtualMachines = append(out.Properties.VirtualMachines, vo)
	}
	return out
}

func portRulesOut(rules []jit.PortRule) []portRuleOut {
	out := make([]portRuleOut, 0, len(rules))
	for _, r := range rules {
		po := portRuleOut{Number: r.Number, Protocol: r.Protocol, MaxRequestAccessDuration: jit.FormatDuration(r.MaxDuration), Approval: approvalToOut(r.Approval)}
		if len(r.AllowedSources) == 1 {
			po.AllowedSourceAddressPrefix = r.AllowedSources[0]
		} else {
			po.AllowedSourceAddressPrefixes = r.AllowedSources
		}
		out = append(out, po)
	}
	return out
}

type initiateBody struct {
	VirtualMachines []initiateVMBody `json:"virtualMachines"`
	Justification   string           `json:"justification"`
	OnBehalfOf      string           `json:"onBehalfOf,omitempty"` // ours: a delegate asks for this person
}

type initiateVMBody struct {
	ID    string             `json:"id"`
	Ports []initiatePortBody `json:"ports"`
}

type initiatePortBody struct {
	Number                       int        `json:"number"`
	Protocol                     string     `json:"protocol,omitempty"`
	EndTimeUtc                   string     `json:"endTimeUtc,omitempty"`
	Duration                     string     `json:"duration,omitempty"`
	AllowedSourceAddressPrefix   prefixList `json:"allowedSourceAddressPrefix,omitempty"`
	AllowedSourceAddressPrefixes []string   `json:"allowedSourceAddressPrefixes,omitempty"`
}

func (b *initiateBody) toInput() (jit.InitiateInput, error) {
	in := jit.InitiateInput{Justification: b.Justification, OnBehalfOf: b.OnBehalfOf}
	for i, vb := range b.VirtualMachines {
		vm := jit.InitiateVM{ID: vb.ID}
		for j, pb := range vb.Ports {
			where := func(field string) string { return fieldPath("virtualMachines", i, j, field) }
			if pb.Number == 0 {
				return in, jit.Errorf(jit.EINVALID, "%s is required and must be between 1 and 65535", where("number"))
			}
			ip := jit.InitiatePort{Number: pb.Number, Protocol: pb.Protocol}
			if pb.EndTimeUtc != "" {
				t, err := time.Parse(time.RFC3339Nano, pb.EndTimeUtc)
				if err != nil {
					return in, jit.Errorf(jit.EINVALID, "%s: %q is not a date and time such as 2026-01-02T15:04:05Z", where("endTimeUtc"), clip(pb.EndTimeUtc))
				}
				ip.End = t
			}
			if pb.Duration != "" {
				d, err := jit.ParseDuration(pb.Duration)
				if err != nil {
					return in, jit.Errorf(jit.EINVALID, "%s: %s", where("duration"), jit.ErrorMessage(err))
				}
				if d <= 0 {
					return in, jit.Errorf(jit.EINVALID, "%s must be longer than zero", where("duration"))
				}
				ip.Duration = d
			}
			if len(pb.AllowedSourceAddressPrefix) > 0 && len(pb.AllowedSourceAddressPrefixes) > 0 {
				return in, jit.Errorf(jit.EINVALID, "%s: give allowedSourceAddressPrefix or allowedSourceAddressPrefixes, not both", fieldPath("virtualMachines", i, j, ""))
			}
			ip.Sources = append([]string(pb.AllowedSourceAddressPrefix), pb.AllowedSourceAddressPrefixes...)
			vm.Ports = append(vm.Ports, ip)
		}
		in.VMs = append(in.VMs, vm)
	}
	return in, nil
}

// requestOut is Defender's JitNetworkAccessRequest plus our id, status and
// per-NSG detail.
type requestOut struct {
	ID              string         `json:"id"`
	Policy          string         `json:"policy"`
	Status          string         `json:"status"`
	VirtualMachines []requestVMOut `json:"virtualMachines"`
	StartTimeUtc    time.Time      `json:"startTimeUtc"`
	Requestor       string         `json:"requestor"`
	RequestorID     string         `json:"requestorId"`
	Justification   string         `json:"justification"`
	SubmittedBy     string         `json:"submittedBy,omitempty"`
	Approval        *approvalOut   `json:"approval,omitempty"`
	Grants          []grantOut     `json:"grants"`
}

type approvalOut struct {
	MinApprovals    int           `json:"minApprovals"`
	Approvers       []string      `json:"approvers,omitempty"`
	PendingUntilUtc time.Time     `json:"pendingUntilUtc"`
	Decisions       []decisionOut `json:"decisions"`
}

type decisionOut struct {
	By      string    `json:"by"`
	ByName  string    `json:"byName,omitempty"`
	TimeUtc time.Time `json:"timeUtc"`
	Approve bool      `json:"approve"`
	Comment string    `json:"comment,omitempty"`
}

type requestVMOut struct {
	ID    string           `json:"id"`
	Ports []requestPortOut `json:"ports"`
}

type requestPortOut struct {
	Number                       int       `json:"number"`
	Protocol                     string    `json:"protocol"`
	EndTimeUtc                   time.Time `json:"endTimeUtc"`
	AllowedSourceAddressPrefix   string    `json:"allowedSourceAddressPrefix,omitempty"`
	AllowedSourceAddressPrefixes []string  `json:"allowedSourceAddressPrefixes,omitempty"`
	Status                       string    `json:"status"`
	StatusReason                 string    `json:"statusReason,omitempty"`
}

type grantOut struct {
	VM           string        `json:"vm"`
	RuleName     string        `json:"ruleName"`
	Protocol     string        `json:"protocol"`
	Ports        []int         `json:"ports"`
	Sources      []string      `json:"sources"`
	Destinations []string      `json:"destinations"`
	EndTimeUtc   time.Time     `json:"endTimeUtc"`
	Status       string        `json:"status"`
	StatusReason string        `json:"statusReason,omitempty"`
	ClosedAt     *time.Time    `json:"closedTimeUtc,omitempty"`
	NSGs         []grantNSGOut `json:"networkSecurityGroups"`
}

type grantNSGOut struct {
	ID       string     `json:"id"`
	State    string     `json:"state"`
	OpenedAt *time.Time `json:"openedTimeUtc,omitempty"`
	ClosedAt *time.Time `json:"closedTimeUtc,omitempty"`
	Error    string     `json:"error,omitempty"`
}

func requestToOut(r jit.Request) requestOut {
	out := requestOut{ID: r.ID, Policy: r.Policy, Status: r.Status, StartTimeUtc: r.StartTime, Requestor: r.RequestorName,
		RequestorID: r.Requestor, Justification: r.Justification, SubmittedBy: r.SubmittedBy, VirtualMachines: []requestVMOut{}, Grants: []grantOut{}}
	if a := r.Approval; a != nil {
		out.Approval = &approvalOut{MinApprovals: a.MinApprovals, Approvers: a.Approvers, PendingUntilUtc: a.PendingUntil, Decisions: []decisionOut{}}
		for _, d := range a.Decisions {
			out.Approval.Decisions = append(out.Approval.Decisions, decisionOut{By: d.By, ByName: d.ByName, TimeUtc: d.At, Approve: d.Approve, Comment: d.Comment})
		}
	}
	if out.Requestor == "" {
		out.Requestor = r.Requestor
	}
	vmIndex := map[string]int{}
	for i, g := range r.Grants {
		k, ok := vmIndex[g.VM]
		if !ok {
			k = len(out.VirtualMachines)
			vmIndex[g.VM] = k
			out.VirtualMachines = append(out.VirtualMachines, requestVMOut{ID: g.VM})
		}
		status := g.Status
		if r.Status == jit.RequestPending {
			status = jit.RequestPending
		} else if status == jit.GrantClosed {
			status = jit.GrantRevoked // Defender reports an expired port as Revoked/Expired
		}
		for _, n := range g.Ports {
			po := requestPortOut{Number: n, Protocol: g.Protocol, EndTimeUtc: g.End, Status: status, StatusReason: g.StatusReason}
			if len(g.Sources) == 1 {
				po.AllowedSourceAddressPrefix = g.Sources[0]
			} else {
				po.AllowedSourceAddressPrefixes = g.Sources
			}
			out.VirtualMachines[k].Ports = append(out.VirtualMachines[k].Ports, po)
		}
		gout := grantOut{VM: g.VM, RuleName: jit.RuleName(r.ID, i), Protocol: g.Protocol, Ports: g.Ports, Sources: g.Sources,
			Destinations: g.Destinations, EndTimeUtc: g.End, Status: g.Status, StatusReason: g.StatusReason, ClosedAt: timePtr(g.ClosedAt)}
		for _, n := range g.NSGs {
			gout.NSGs = append(gout.NSGs, grantNSGOut{ID: n.ID, State: n.State, OpenedAt: timePtr(n.OpenedAt), ClosedAt: timePtr(n.ClosedAt), Error: n.Error})
		}
		out.Grants = append(out.Grants, gout)
	}
	return out
}

type vmOut struct {
	ID                    string        `json:"id"`
	Name                  string        `json:"name"`
	Location              string        `json:"location"`
	State                 string        `json:"state"`
	Reason                string        `json:"reason,omitempty"`
	Policy                string        `json:"policy,omitempty"`
	PrivateIPAddresses    []string      `json:"privateIpAddresses"`
	NetworkSecurityGroups []nsgOut      `json:"networkSecurityGroups"`
	Ports                 []portRuleOut `json:"ports,omitempty"`
	ApprovedRequests      int           `json:"approvedRequestsLast7Days"`
	LastAccessUtc         *time.Time    `json:"lastAccessTimeUtc,omitempty"`
	LastUser              string        `json:"lastUser,omitempty"`
	OpenPorts             []openPortOut `json:"openPorts"`
	Warnings              []string      `json:"warnings,omitempty"`
}

type openPortOut struct {
	Number     int       `json:"number"`
	Protocol   string    `json:"protocol"`
	Sources    []string  `json:"sources"`
	EndTimeUtc time.Time `json:"endTimeUtc"`
	Request    string    `json:"request"`
}

func vmToOut(v jit.VMStatus) vmOut {
	out := vmOut{ID: v.ID, Name: v.Name, Location: v.Location, State: v.State, Reason: v.Reason, Policy: v.Policy,
		PrivateIPAddresses: nonNil(v.PrivateIPs), NetworkSecurityGroups: []nsgOut{}, ApprovedRequests: v.RequestsLast7Days,
		LastAccessUtc: timePtr(v.LastAccess), LastUser: v.LastUser, OpenPorts: []openPortOut{}, Warnings: v.Warnings}
	for _, n := range v.NSGs {
		out.NetworkSecurityGroups = append(out.NetworkSecurityGroups, nsgOut(n))
	}
	if v.Policy != "" {
		out.Ports = portRulesOut(v.Ports)
	}
	for _, p := range v.OpenPorts {
		out.OpenPorts = append(out.OpenPorts, openPortOut{Number: p.Number, Protocol: p.Protocol, Sources: p.Sources, EndTimeUtc: p.End, Request: p.Request})
	}
	return out
}

type auditOut struct {
	ID       string    `json:"id"`
	Time     time.Time `json:"timeUtc"`
	Action   string    `json:"action"`
	Result   string    `json:"result"`
	Actor    string    `json:"actor"`
	Policy   string    `json:"policy,omitempty"`
	Request  string    `json:"request,omitempty"`
	VM       string    `json:"vm,omitempty"`
	NSG      string    `json:"nsg,omitempty"`
	Protocol string    `json:"protocol,omitempty"`
	Ports    []int     `json:"ports,omitempty"`
	Sources  []string  `json:"sources,omitempty"`
	Detail   string    `json:"detail,omitempty"`
}

func auditToOut(e jit.AuditEvent) auditOut {
	return auditOut{ID: e.ID, Time: e.Time, Action: e.Action, Result: e.Result, Actor: e.Actor, Policy: e.Policy,
		Request: e.Request, VM: e.VM, NSG: e.NSG, Protocol: e.Protocol, Ports: e.Ports, Sources: e.Sources, Detail: e.Detail}
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func clip(s string) string { return jit.Shorten(s, 64) }

func fieldPath(list string, i, j int, field string) string {
	p := list + "[" + itoa(i) + "].ports[" + itoa(j) + "]"
	if field != "" {
		p += "." + field
	}
	return p
}
