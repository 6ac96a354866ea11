package jit

import (
	"context"
	"strings"
)

// Network is what the service needs from Azure Resource Manager: the VMs in
// scope, the NSGs that guard them, and one way to change an NSG.
// The azurenet package implements it on the armnetwork and armcompute clients.
//
// Every change to an NSG goes through ApplyRules: one read and one write of
// the whole NSG, so that everything due for an NSG at one moment (grant
// opens and closes, deny rules, repairs) costs one ARM write. Implementations
// never change or delete a rule this deployment does not own (see Owner),
// except one with a name RuleChange.Ours vouches for.
type Network interface {
	// ListVMs returns every VM in scope with its topology. A VM that has no
	// NSG on its NICs or subnets is returned with Unsupported set.
	ListVMs(ctx context.Context) ([]VMInfo, error)
	// ResolveVM returns one VM's topology: its private IPs and the NSGs on its
	// NICs and on their subnets. A VM that does not exist is an ENOTFOUND error.
	ResolveVM(ctx context.Context, vmID string) (VMInfo, error)
	// ApplyRules makes one change to the NSG nsgID with one read and at most
	// one write of the whole NSG (If-Match its etag, read again on 412). See
	// RuleChange for what it does; every rule it does not change goes back
	// as it was read. Nothing to change writes nothing. A missing NSG is
	// ENOTFOUND when there is something to put, else success with Missing set.
	ApplyRules(ctx context.Context, nsgID string, c RuleChange) (Applied, error)
	// ListRules returns every inbound rule of the NSG, owned or not. A
	// missing NSG is an ENOTFOUND error.
	ListRules(ctx context.Context, nsgID string) ([]SecurityRule, error)
	// ScanNSGs calls fn for every NSG in scope with its inbound rules, with
	// list calls per subscription and page, never a read per NSG or VM. It
	// reads a page, hands fn its NSGs, then reads the next, whoever calls
	// it: fn runs between reads, so the time it takes is its own and the
	// time between two calls of fn is the listing's. An error of fn stops
	// the scan and is returned as it is, as is ctx.Err() when ctx ends; a
	// failure to list stops it with the listing's error. The scan
	// is not one snapshot: an NSG changed while it runs (by fn too) may be
	// seen before or after the change.
	ScanNSGs(ctx context.Context, fn func(NSGInfo) error) error
}

// RuleChange is one change to one NSG.
//
// Put creates or updates rules: a new rule gets the lowest free priority of
// the band for its access; an existing one keeps its priority unless that
// priority is outside the band, and is rewritten when any property differs
// (direction, protocol, source and destination ports and prefixes,
// application security groups, access, description). Delete removes rules
// by name. Prune, when set, is asked about every other rule the deployment
// owns, and removes it when it answers true. A name in Put that a rule the
// deployment does not own already has fails the whole change with
// ECONFLICT; a name in Delete that such a rule has is left alone.
//
// Ours, when set, vouches for names: a rule with a name it accepts is the
// deployment's even without the marker (the service's exact generated
// names: a rule of its own edited by hand, its marker gone, is still put
// back or removed rather than left as a foreign rule under its name).
//
// Refresh, when set, is called after every read of the NSG and its answer
// replaces the change (its own Refresh ignored): the service decides its
// deny rules from the policies read after the NSG, so a change is never
// planned from policies older than the NSG it is applied to.
type RuleChange struct {
	Put     []SecurityRule
	Delete  []string
	Prune   func(SecurityRule) bool
	Ours    func(name string) bool
	Refresh func() (RuleChange, error)
}

// Applied says what ApplyRules did.
type Applied struct {
	Created, Updated, Removed []string // rule names
	// Rules are the NSG's inbound rules as written (or as read when nothing
	// was written), by priority.
	Rules []SecurityRule
	// Missing: the NSG does not exist (and nothing was to be put).
	Missing bool
}

// Wrote reports whether ApplyRules wrote the NSG.
func (a Applied) Wrote() bool { return len(a.Created)+len(a.Updated)+len(a.Removed) > 0 }

// NSGInfo is an NSG and its inbound rules.
type NSGInfo struct {
	ID    string
	Rules []SecurityRule
}

// VMInfo is a VM and the network path to it, as the Network reports it.
type VMInfo struct {
	ID         string   // ARM id of the VM, as ARM spells it
	Name       string   // the VM's name
	Location   string   // Azure region
	PrivateIPs []string // private IPv4/IPv6 addresses of all its NICs
	NSGs       []NSGRef // NSGs on its NICs and on the subnets of its NICs, without duplicates
	// Tags are the VM's Azure tags (jit-policy=<name> enrols it).
	Tags map[string]string
	// Unsupported, when not empty, says in words why JIT cannot protect this
	// VM (for example "no network security group on its network interfaces or their subnets").
	Unsupported string
}

// NSGRef is one network security group guarding a VM.
type NSGRef struct {
	ID    string `json:"ID"`    // ARM id of the NSG
	Scope string `json:"Scope"` // "nic" or "subnet"
}

// Rule access values.
const (
	AccessAllow = "Allow"
	AccessDeny  = "Deny"
)

// SecurityRule is an inbound security rule. Owned rules are built by the
// service (see the lockdown and grant rules); foreign rules are only read.
type SecurityRule struct {
	Name        string `json:"Name"`
	Description string `json:"Description"`
	Access      string `json:"Access"`   // AccessAllow or AccessDeny
	Protocol    string `json:"Protocol"` // "Tcp", "Udp" or "*" (ARM spelling)
	Priority    int    `json:"Priority"` // set by the Network on read; chosen by it on write
	// SourcePorts are the source port ranges; owned rules use ["*"] (nil
	// means ["*"] when writing).
	SourcePorts  []string `json:"SourcePorts"`
	Ports        []string `json:"Ports"`        // destination port numbers or ranges ("22", "1000-2000", "*")
	Sources      []string `json:"Sources"`      // source prefixes ("*", "203.0.113.7", "10.0.0.0/8", service tags)
	Destinations []string `json:"Destinations"` // destination prefixes (the VM's private IPs)
	// SourceASGs and DestinationASGs are the ids of application security
	// groups the rule names instead of prefixes; owned rules name none.
	SourceASGs      []string `json:"SourceASGs"`
	DestinationASGs []string `json:"DestinationASGs"`
}

// RulePrefix starts the name of every security rule the service writes.
// A name alone never makes a rule the service's: see Owner.
const RulePrefix = "jit-"

// markerStart and markerEnd enclose the deployment's name at the start of
// every owned rule's description: "[jit:NAME] ...".
const (
	markerStart = "[jit:"
	markerEnd   = "] "
)

// legacyDescription starts the descriptions of rules written by versions
// before deployment markers. Such rules are adopted only where the service
// recognises their exact names (see Owner.Legacy).
const legacyDescription = "Managed by jitaccess: "

// Owner decides which rules a deployment owns: a rule is the deployment's
// only when its name starts with RulePrefix and its description starts
// with the deployment's marker. Two deployments in one subscription never
// touch each other's rules.
type Owner struct {
	Deployment string
}

// ValidateDeployment checks a deployment name: 1 to 40 lower-case letters,
// digits and '-', starting with a letter or digit.
func ValidateDeployment(name string) error {
	if name == "" || len(name) > 40 {
		return Errorf(EINVALID, "deployment name %q must be 1 to 40 characters long", shorten(name))
	}
	for i, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || i > 0 && c == '-') {
			return Errorf(EINVALID, "deployment name %q may contain only lower-case letters, digits and '-', and must start with a letter or digit", shorten(name))
		}
	}
	return nil
}

// Marker is what starts the description of every rule o owns.
func (o Owner) Marker() string { return markerStart + o.Deployment + markerEnd }

// Owns reports whether rule was written by this deployment.
func (o Owner) Owns(rule SecurityRule) bool {
	return strings.HasPrefix(strings.ToLower(rule.Name), RulePrefix) && strings.HasPrefix(rule.Description, o.Marker())
}

// Legacy reports whether rule was written by a version before deployment
// markers: a RulePrefix name, a description starting "Managed by
// jitaccess: " and no marker. The service removes such a rule only where
// it recognises its exact name (a grant it knows, a VM it protects).
func (o Owner) Legacy(rule SecurityRule) bool {
	return strings.HasPrefix(strings.ToLower(rule.Name), RulePrefix) && strings.HasPrefix(rule.Description, legacyDescription)
}

// MayChange reports whether ApplyRules may change or delete rule: owned, or
// legacy.
func (o Owner) MayChange(rule SecurityRule) bool { return o.Owns(rule) || o.Legacy(rule) }

// describe returns the description of an owned rule: the marker, then text,
// within ARM's 140 characters.
func (o Owner) describe(text string) string { return clip(o.Marker()+text, 140) }
