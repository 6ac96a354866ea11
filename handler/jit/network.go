package jit

import "context"

// Network is what the service needs from Azure Resource Manager: the VMs in
// scope, the NSGs that guard them, and the security rules it manages there.
// The azurenet package implements it on the armnetwork and armcompute clients.
//
// Implementations must be idempotent: PutRule with a rule that already exists
// with the same content writes nothing, DeleteRule of a missing rule or of a
// rule in a missing NSG succeeds. They must never change or delete a rule whose
// name does not start with RulePrefix.
type Network interface {
	// ListVMs returns every VM in scope with its topology. A VM that has no
	// NSG on its NICs or subnets is returned with Unsupported set.
	ListVMs(ctx context.Context) ([]VMInfo, error)
	// ResolveVM returns one VM's topology: its private IPs and the NSGs on its
	// NICs and on their subnets. A VM that does not exist is an ENOTFOUND error.
	ResolveVM(ctx context.Context, vmID string) (VMInfo, error)
	// PutRule creates or updates the managed rule rule.Name in the NSG nsgID.
	// When the rule is new, the implementation picks a free priority in the
	// band configured for rule.Access and retries on a priority clash. An
	// existing rule keeps its priority.
	PutRule(ctx context.Context, nsgID string, rule SecurityRule) error
	// DeleteRule removes the managed rule name from the NSG nsgID. A missing
	// rule or NSG is success.
	DeleteRule(ctx context.Context, nsgID, name string) error
	// ApplyRules upserts the managed rules put (as PutRule does) and removes
	// the managed rules named in del (as DeleteRule does) in the NSG nsgID
	// with one read and one write of the whole NSG, leaving every other rule
	// as it is. Nothing to change writes nothing; a name in both put and del
	// is removed.
	ApplyRules(ctx context.Context, nsgID string, put []SecurityRule, del []string) error
	// ListRules returns every inbound rule of the NSG, managed or not. A
	// missing NSG is an ENOTFOUND error.
	ListRules(ctx context.Context, nsgID string) ([]SecurityRule, error)
	// ListNSGs returns every NSG in scope with its inbound rules, with list
	// calls per subscription and page, never a read per NSG or VM.
	ListNSGs(ctx context.Context) ([]NSGInfo, error)
}

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
	ID    string // ARM id of the NSG
	Scope string // "nic" or "subnet"
}

// Rule access values.
const (
	AccessAllow = "Allow"
	AccessDeny  = "Deny"
)

// SecurityRule is an inbound security rule. Managed rules are built by the
// service (see DenyRule and AllowRule); foreign rules are only read.
type SecurityRule struct {
	Name         string
	Description  string
	Access       string   // AccessAllow or AccessDeny
	Protocol     string   // "Tcp", "Udp" or "*" (ARM spelling)
	Priority     int      // set by the Network on read; ignored on PutRule for new rules
	Ports        []string // destination port numbers or ranges ("22", "1000-2000", "*")
	Sources      []string // source prefixes ("*", "203.0.113.7", "10.0.0.0/8", service tags)
	Destinations []string // destination prefixes (the VM's private IPs)
}

// RulePrefix starts the name of every security rule the service manages.
// Rules whose names do not start with it are never changed or deleted.
const RulePrefix = "jit-"
