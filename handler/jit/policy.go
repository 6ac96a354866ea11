package jit

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Protocols a port rule may name.
const (
	ProtocolTCP = "TCP"
	ProtocolUDP = "UDP"
	ProtocolAny = "*"
)

// Duration bounds of a port rule's maximum request time.
const (
	DefaultMinDuration = 5 * time.Minute
	MaxDuration        = 24 * time.Hour
	// DefaultMaxRequest is Defender's default maximum for its default ports.
	DefaultMaxRequest = 3 * time.Hour
)

// DefaultPorts are the ports a VM gets when its policy names none, as in
// Defender for Cloud: SSH, RDP and WinRM.
var DefaultPorts = []int{22, 3389, 5985, 5986}

// Policy says which ports of which VMs may be opened, from where and for how
// long. Enabling a policy locks the ports down with deny rules.
type Policy struct {
	Name string     `json:"Name"`
	VMs  []VMPolicy `json:"VMs"`
	// Approval, when required, makes every request wait for approvers.
	Approval *Approval `json:"Approval"`
	// Requesters, when not empty, are the principal or group ids that may
	// request access under this policy (JIT.Admin always may).
	Requesters []string `json:"Requesters"`
	// State is PolicyDeleting once a DELETE was accepted and until the
	// deny rules are gone; empty otherwise. Its lockdown progress is not
	// stored: it is judged from the NSGs' states (see API.PolicyStatuses).
	State     string    `json:"State"`
	ETag      string    `json:"ETag"`
	CreatedAt time.Time `json:"CreatedAt"`
	UpdatedAt time.Time `json:"UpdatedAt"`
	UpdatedBy string    `json:"UpdatedBy"`
}

// VMPolicy is one VM of a policy: its ports, and the network path to it as
// resolved when the policy was last written (so that requests need no ARM read).
type VMPolicy struct {
	ID         string     `json:"ID"` // canonical ARM id (see ParseVMID)
	Ports      []PortRule `json:"Ports"`
	Name       string     `json:"Name"`
	PrivateIPs []string   `json:"PrivateIPs"`
	NSGs       []NSGRef   `json:"NSGs"`
}

// PolicyDeleting is Policy.State while a deletion removes the deny rules.
const PolicyDeleting = "Deleting"

// PortRule is one port of a VM that may be requested.
type PortRule struct {
	Number         int           `json:"Number"`
	Protocol       string        `json:"Protocol"`       // ProtocolTCP, ProtocolUDP or ProtocolAny
	AllowedSources []string      `json:"AllowedSources"` // canonical prefixes; ["*"] allows any
	MaxDuration    time.Duration `json:"MaxDuration"`    // longest request, between the minimum and MaxDuration
	Approval       *Approval     `json:"Approval"`       // requests for this port need approval
}

// ValidatePolicyName checks a policy name: letters, digits, '-', '_' and '.',
// 1 to 64 characters, starting with a letter or digit.
func ValidatePolicyName(name string) error {
	if name == "" || len(name) > 64 {
		return Errorf(EINVALID, "policy name must be 1 to 64 characters long")
	}
	for i, c := range name {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			i > 0 && (c == '-' || c == '_' || c == '.')
		if !ok {
			return Errorf(EINVALID, "policy name %q may contain only letters, digits, '-', '_' and '.', and must start with a letter or digit", shorten(name))
		}
	}
	return nil
}

// Normalise validates p in place and brings it into canonical form: VM ids
// canonical, protocols upper case, prefixes canonical, default ports filled
// in. minDuration is the shortest maximum a port may have.
func (p *Policy) Normalise(minDuration time.Duration) error {
	if err := ValidatePolicyName(p.Name); err != nil {
		return err
	}
	if len(p.VMs) == 0 {
		return Errorf(EINVALID, "properties.virtualMachines must name at least one VM")
	}
	if err := p.Approval.normalise("properties"); err != nil {
		return err
	}
	if len(p.Requesters) > 100 {
		return Errorf(EINVALID, "properties.requesters may list at most 100 ids")
	}
	for _, id := range p.Requesters {
		if err := validPrincipalRef(id); err != nil {
			return Errorf(EINVALID, "properties.requesters: %s", ErrorMessage(err))
		}
	}
	seen := map[string]bool{}
	for i := range p.VMs {
		vm := &p.VMs[i]
		where := fmt.Sprintf("properties.virtualMachines[%d]", i)
		id, err := ParseVMID(vm.ID)
		if err != nil {
			return Errorf(EINVALID, "%s.id: %s", where, ErrorMessage(err))
		}
		vm.ID = id.String()
		if seen[id.Key()] {
			return Errorf(EINVALID, "%s.id: VM %s is listed twice", where, vm.ID)
		}
		seen[id.Key()] = true
		if len(vm.Ports) == 0 {
			for _, n := range DefaultPorts {
				vm.Ports = append(vm.Ports, PortRule{Number: n, Protocol: ProtocolTCP, AllowedSources: []string{"*"}, MaxDuration: DefaultMaxRequest})
			}
		}
		for j := range vm.Ports {
			if err := vm.Ports[j].normalise(minDuration); err != nil {
				return Errorf(EINVALID, "%s.ports[%d]: %s", where, j, ErrorMessage(err))
			}
			if err := vm.Ports[j].Approval.normalise(fmt.Sprintf("%s.ports[%d]", where, j)); err != nil {
				return err
			}
			for k := range j {
				if vm.Ports[k].Number == vm.Ports[j].Number && protocolsOverlap(vm.Ports[k].Protocol, vm.Ports[j].Protocol) {
					return Errorf(EINVALID, "%s.ports[%d]: port %d is listed twice", where, j, vm.Ports[j].Number)
				}
			}
		}
	}
	return nil
}

func (r *PortRule) normalise(minDuration time.Duration) error {
	if r.Number < 1 || r.Number > 65535 {
		return Errorf(EINVALID, "port number %d is out of range: it must be between 1 and 65535", r.Number)
	}
	proto, err := ParseProtocol(r.Protocol)
	if err != nil {
		return err
	}
	r.Protocol = proto
	if len(r.AllowedSources) == 0 {
		r.AllowedSources = []string{"*"}
	}
	srcs, err := CanonicalPrefixes(r.AllowedSources)
	if err != nil {
		return err
	}
	r.AllowedSources = srcs
	if r.MaxDuration == 0 {
		r.MaxDuration = DefaultMaxRequest
	}
	if r.MaxDuration < minDuration || r.MaxDuration > MaxDuration {
		return Errorf(EINVALID, "maxRequestAccessDuration %s is out of range: it must be between %s and %s",
			FormatDuration(r.MaxDuration), FormatDuration(minDuration), FormatDuration(MaxDuration))
	}
	return nil
}

// ParseProtocol accepts TCP, UDP and * in any case. An empty protocol is TCP.
func ParseProtocol(s string) (string, error) {
	switch strings.ToUpper(s) {
	case "", ProtocolTCP:
		return ProtocolTCP, nil
	case ProtocolUDP:
		return ProtocolUDP, nil
	case ProtocolAny:
		return ProtocolAny, nil
	}
	return "", Errorf(EINVALID, "protocol %q is not supported: use TCP, UDP or *", shorten(s))
}

func protocolsOverlap(a, b string) bool {
	return a == b || a == ProtocolAny || b == ProtocolAny
}

// VM returns the policy's entry for the VM with the given id.
func (p *Policy) VM(id string) (*VMPolicy, bool) {
	for i := range p.VMs {
		if len(p.VMs[i].ID) == len(id) && strings.EqualFold(p.VMs[i].ID, id) {
			return &p.VMs[i], true
		}
	}
	return nil, false
}

// Port returns the VM's rule for port number and protocol. A rule for "*"
// serves requests for TCP and UDP.
func (v *VMPolicy) Port(number int, protocol string) (*PortRule, bool) {
	for i := range v.Ports {
		r := &v.Ports[i]
		if r.Number == number && (protocol == "" || r.Protocol == protocol || r.Protocol == ProtocolAny) {
			return r, true
		}
	}
	return nil, false
}

// PortNumbers returns the VM's policy ports in ascending order, without duplicates.
func (v *VMPolicy) PortNumbers() []int {
	var ns []int
	for _, r := range v.Ports {
		ns = append(ns, r.Number)
	}
	slices.Sort(ns)
	return slices.Compact(ns)
}

// Clone returns a deep copy of p, so a cached policy can be handed out and
// changed without changing the cache.
func (p Policy) Clone() Policy {
	q := p
	q.Approval = p.Approval.clone()
	q.Requesters = slices.Clone(p.Requesters)
	q.VMs = make([]VMPolicy, len(p.VMs))
	for i, vm := range p.VMs {
		v := vm
		v.PrivateIPs = slices.Clone(vm.PrivateIPs)
		v.NSGs = slices.Clone(vm.NSGs)
		v.Ports = make([]PortRule, len(vm.Ports))
		for j, r := range vm.Ports {
			r.AllowedSources = slices.Clone(r.AllowedSources)
			r.Approval = r.Approval.clone()
			v.Ports[j] = r
		}
		q.VMs[i] = v
	}
	if p.VMs == nil {
		q.VMs = nil
	}
	return q
}

func (a *Approval) clone() *Approval {
	if a == nil {
		return nil
	}
	c := *a
	c.Approvers = slices.Clone(a.Approvers)
	return &c
}
