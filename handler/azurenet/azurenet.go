// Package azurenet is the jit.Network driver for Azure: it reads VMs, network
// interfaces, subnets and network security groups through Azure Resource
// Manager and writes the deployment's security rules, through the Azure SDK:
// the armcompute and armnetwork clients, and for whole NSGs azcore's ARM
// pipeline with lean JSON types (nsgdoc.go). It depends on handler/jit (whose
// interface it implements) and on the SDK; it must not depend on the store,
// the queue or any front door, and it keeps no state beyond SDK clients and
// what ARM last said of each subscription's write budgets.
//
// # NSG conventions
//
// A rule belongs to this deployment only when its name starts with
// jit.RulePrefix ("jit-") and its description starts with the deployment's
// marker, "[jit:NAME] " (Config.Owner; see jit.Owner). The driver changes
// or deletes a rule only when Config.Owner.MayChange allows it: the
// deployment's own rules, and rules from before markers (description
// "Managed by jitaccess: ..."), which it adopts under its marker when it
// rewrites them. Every other rule, whatever its name, is read (to find free
// priorities and to report rules that bypass JIT) and sent back
// byte-for-byte: a change that puts a rule under a name such a rule has
// fails with jit.ECONFLICT and writes nothing; a delete of such a name
// leaves it alone; Prune is never asked about it. The one exception is a
// name RuleChange.Ours vouches for: an exact name the service generated
// (deny rules carry a digest of the deployment's name, allow rules a
// request id only its store issued), so a rule of ours edited by hand, its
// marker gone, is still put back or removed. Two deployments sharing
// a subscription or an NSG therefore never touch each other's rules.
//
// Every change goes through ApplyRules: one read and at most one write of
// the whole NSG (a PUT with If-Match; on 412 the driver reads again and
// plans anew). The driver's rules are inbound rules in two priority bands,
// configurable through Config:
//
//   - allow rules: 1000–1999 (DefaultAllowMin–DefaultAllowMax);
//   - deny rules: 4000–4095 (DefaultDenyMin–DefaultDenyMax), below every
//     allow rule and above Azure's default rules (65000 and up).
//
// A new rule gets the lowest priority of its band that no inbound rule of
// the NSG uses, owned or not. An existing owned rule is rewritten when it
// differs from what is put in any property (direction, protocol, source
// and destination ports and prefixes, application security groups,
// access, description; compared as sets, letter case and ARM's singular
// and plural forms aside), and keeps its priority unless that lies outside
// the band for its access, when it moves to the lowest free one.
//
// # Pacing
//
// ARM throttles each subscription with token buckets: 200 writes and 200
// deletes, each refilled at 10 a second, and says in every answer how many
// are left (x-ms-ratelimit-remaining-subscription-writes and -deletes).
// Whole-NSG writes are PUTs and count against the writes. A pipeline
// policy paces the driver's writes and deletes per subscription by those
// figures before ARM has to answer 429: it spends freely down to
// Config.WriteReserve tokens (default 20), then spaces requests at
// Config.WriteRate (default 10 a second, ARM's refill), and waits for the
// refill when the bucket is dry. Until the first answer tells the budget,
// one write at a time goes. A subscription's 429 holds every write of that
// kind to the subscription until its Retry-After. Reads are not paced.
//
// # Retries
//
// azcore's retry policy retries 408, 429 and 5xx answers, honouring
// Retry-After (Config.Retry). On top of it the driver retries, with jittered
// exponential backoff and a bounded number of attempts (Config.MaxAttempts),
// what ARM's network resource provider answers to overlapping writes on one
// NSG (409 AnotherOperationInProgress, RetryableErrorDueToAnotherOperation,
// CanceledAndSupersededDueToAnotherOperation), failed long-running
// operations, and 429s whose Retry-After exceeds azcore's maximum delay (up
// to 30 s). No retry on any path comes before the Retry-After of the answer
// it follows. Errors that remain after the retries are jit.EUNAVAILABLE.
package azurenet

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v8"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v9"
	"github.com/rs/zerolog"

	"jitaccess/handler/jit"
)

// Default priority bands (inclusive).
const (
	DefaultAllowMin = 1000
	DefaultAllowMax = 1999
	DefaultDenyMin  = 4000
	DefaultDenyMax  = 4095
)

// Default pacing of writes per subscription (Config.WriteReserve and
// WriteRate): ARM refills 10 write and 10 delete tokens a second.
const (
	DefaultWriteReserve = 20
	DefaultWriteRate    = 10.0
)

// Band is an inclusive range of security rule priorities.
type Band struct{ Min, Max int }

// Config configures a Driver. Zero fields take the defaults documented on
// each.
type Config struct {
	// Owner is the deployment whose rules the driver writes: it changes
	// and deletes only rules Owner.MayChange allows, and writes only rules
	// whose descriptions start with Owner.Marker(). Required.
	Owner jit.Owner
	// Subscriptions is the scope of ListVMs.
	Subscriptions []string
	// AllowBand and DenyBand are where new allow and deny rules go; default
	// 1000–1999 and 4000–4095. Both must lie within ARM's 100–4096.
	AllowBand, DenyBand Band
	// Log receives one event per write, retry and no-op; the zero value
	// logs nothing.
	Log zerolog.Logger
	// Retry is azcore's retry policy for 408/429/5xx. When zero, the
	// arm.ClientOptions' Retry is used if set, else 4 retries from 1s with
	// Retry-After honoured up to 60s.
	Retry policy.RetryOptions
	// MaxAttempts bounds the driver's own attempts at one write (busy NSG,
	// failed operation, priority clash); default 5.
	MaxAttempts int
	// RetryDelay and MaxRetryDelay shape the driver's jittered exponential
	// backoff between those attempts; default 1s and 15s.
	RetryDelay, MaxRetryDelay time.Duration
	// PollFrequency is how often a long-running operation is polled when
	// ARM sends no Retry-After; default 2s (azcore's floor is 1s outside
	// tests).
	PollFrequency time.Duration
	// WriteReserve is how many of a subscription's ARM write tokens (and,
	// separately, delete tokens) the driver leaves for others: while ARM's
	// last answer (x-ms-ratelimit-remaining-subscription-writes or
	// -deletes) less the driver's requests in flight says no more than
	// that remain, the driver spaces its PUTs (DELETEs) at WriteRate
	// instead of sending them at once. Default 20, a tenth of ARM's bucket
	// of 200; negative turns pacing off (a 429 is still never retried
	// before its Retry-After).
	WriteReserve int
	// WriteRate is the pace, in requests per second and subscription, of
	// writes (and of deletes) within the reserve: ARM's refill rate, 10 a
	// second, by default. A higher rate than ARM refills runs the bucket
	// dry.
	WriteRate float64
}

// Driver implements jit.Network on Azure Resource Manager. It is safe for
// concurrent use.
type Driver struct {
	cfg  Config
	cred azcore.TokenCredential
	opts arm.ClientOptions
	log  zerolog.Logger
	pace *pacer // nil when pacing is off

	mu      sync.Mutex
	clients map[string]*clients // by lower-case subscription id
	opTime  opTimer             // how long NSG writes take, for the first poll
	raw     *arm.Client         // for the lean NSG list, reads and writes (list.go, nsgdoc.go)
}

var _ jit.Network = (*Driver)(nil)

// clients are the SDK clients for one subscription; the SDK binds a client
// to a subscription at construction.
type clients struct {
	vms     *armcompute.VirtualMachinesClient
	nics    *armnetwork.InterfacesClient
	vnets   *armnetwork.VirtualNetworksClient
	subnets *armnetwork.SubnetsClient
}

// New returns a Driver that reaches ARM with cred and opts (nil for public
// Azure with the SDK's defaults).
func New(cfg Config, cred azcore.TokenCredential, opts *arm.ClientOptions) (*Driver, error) {
	if err := jit.ValidateDeployment(cfg.Owner.Deployment); err != nil {
		return nil, fmt.Errorf("azurenet: Config.Owner: %w (every rule the driver writes carries the deployment's name, so that it never touches another deployment's rules)", err)
	}
	if cfg.AllowBand == (Band{}) {
		cfg.AllowBand = Band{DefaultAllowMin, DefaultAllowMax}
	}
	if cfg.DenyBand == (Band{}) {
		cfg.DenyBand = Band{DefaultDenyMin, DefaultDenyMax}
	}
	for _, b := range []Band{cfg.AllowBand, cfg.DenyBand} {
		if b.Min < 100 || b.Max > 4096 || b.Min > b.Max {
			return nil, fmt.Errorf("azurenet: priority band %d–%d is not within 100–4096", b.Min, b.Max)
		}
	}
	if cfg.AllowBand.Max >= cfg.DenyBand.Min {
		return nil, fmt.Errorf("azurenet: allow band %d–%d must lie above (lower numbers than) deny band %d–%d",
			cfg.AllowBand.Min, cfg.AllowBand.Max, cfg.DenyBand.Min, cfg.DenyBand.Max)
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 5
	}
	if cfg.RetryDelay <= 0 {
		cfg.RetryDelay = time.Second
	}
	if cfg.MaxRetryDelay <= 0 {
		cfg.MaxRetryDelay = 15 * time.Second
	}
	if cfg.PollFrequency <= 0 {
		cfg.PollFrequency = 2 * time.Second
	}
	if cfg.WriteReserve == 0 {
		cfg.WriteReserve = DefaultWriteReserve
	}
	if cfg.WriteRate <= 0 {
		cfg.WriteRate = DefaultWriteRate
	}
	var o arm.ClientOptions
	if opts != nil {
		o = *opts
	}
	var pace *pacer
	if cfg.WriteReserve > 0 {
		// Per retry, so that azcore's retries are paced too and wait out a
		// 429 that another request of the subscription received.
		pace = newPacer(cfg.WriteReserve, cfg.WriteRate)
		o.PerRetryPolicies = append(slices.Clip(o.PerRetryPolicies), pace)
	}
	switch {
	case !zeroRetry(cfg.Retry):
		o.Retry = cfg.Retry
	case zeroRetry(o.Retry):
		o.Retry = policy.RetryOptions{MaxRetries: 4, RetryDelay: time.Second, MaxRetryDelay: 60 * time.Second}
	}
	return &Driver{cfg: cfg, cred: cred, opts: o, log: cfg.Log, pace: pace, clients: map[string]*clients{}}, nil
}

func zeroRetry(r policy.RetryOptions) bool {
	return r.MaxRetries == 0 && r.TryTimeout == 0 && r.RetryDelay == 0 && r.MaxRetryDelay == 0 && r.StatusCodes == nil && r.ShouldRetry == nil
}

func (d *Driver) clientsFor(sub string) (*clients, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if c := d.clients[strings.ToLower(sub)]; c != nil {
		return c, nil
	}
	var c clients
	var err error
	if c.vms, err = armcompute.NewVirtualMachinesClient(sub, d.cred, &d.opts); err != nil {
		return nil, fmt.Errorf("create virtual machines client: %w", err)
	}
	nf, err := armnetwork.NewClientFactory(sub, d.cred, &d.opts)
	if err != nil {
		return nil, fmt.Errorf("create network clients: %w", err)
	}
	c.nics, c.vnets, c.subnets = nf.NewInterfacesClient(), nf.NewVirtualNetworksClient(), nf.NewSubnetsClient()
	d.clients[strings.ToLower(sub)] = &c
	return &c, nil
}

// ref is a parsed ARM id of a resource in a resource group.
type ref struct {
	sub, rg, name, parent string
}

// parseID parses id and checks its type (case-insensitive, as ARM is).
func parseID(id, wantType string) (ref, bool) {
	rid, err := arm.ParseResourceID(id)
	if err != nil || rid.ResourceGroupName == "" || !strings.EqualFold(rid.ResourceType.String(), wantType) {
		return ref{}, false
	}
	r := ref{sub: rid.SubscriptionID, rg: rid.ResourceGroupName, name: rid.Name}
	if rid.Parent != nil {
		r.parent = rid.Parent.Name
	}
	return r, true
}

const (
	typeVM     = "Microsoft.Compute/virtualMachines"
	typeNIC    = "Microsoft.Network/networkInterfaces"
	typeSubnet = "Microsoft.Network/virtualNetworks/subnets"
	typeNSG    = "Microsoft.Network/networkSecurityGroups"
)

// nsgRef parses the id of an NSG.
func nsgRef(nsgID string) (ref, error) {
	r, ok := parseID(nsgID, typeNSG)
	if !ok {
		return ref{}, jit.Errorf(jit.EINVALID, "%q is not the id of a network security group", nsgID)
	}
	return r, nil
}

// ResolveVM reads one VM, its NICs and their subnets.
func (d *Driver) ResolveVM(ctx context.Context, vmID string) (jit.VMInfo, error) {
	r, ok := parseID(vmID, typeVM)
	if !ok {
		return jit.VMInfo{}, jit.Errorf(jit.ENOTFOUND, "%q is not the id of a virtual machine", vmID)
	}
	c, err := d.clientsFor(r.sub)
	if err != nil {
		return jit.VMInfo{}, err
	}
	resp, err := c.vms.Get(ctx, r.rg, r.name, nil)
	if err != nil {
		if isNotFound(err) {
			return jit.VMInfo{}, jit.Wrap(jit.ENOTFOUND, err, fmt.Sprintf("virtual machine %s not found", vmID))
		}
		return jit.VMInfo{}, classify(err, "read virtual machine "+vmID)
	}
	return d.topology(ctx, &resp.VirtualMachine, &lookup{d: d})
}

// ListVMs lists every VM of the configured subscriptions. It lists NICs and
// VNets (with their subnets) once per subscription and joins them in memory,
// so an inventory costs a few list pages, not reads per VM.
func (d *Driver) ListVMs(ctx context.Context) ([]jit.VMInfo, error) {
	var out []jit.VMInfo
	for _, sub := range d.cfg.Subscriptions {
		c, err := d.clientsFor(sub)
		if err != nil {
			return nil, err
		}
		lk := &lookup{d: d, nics: map[string]*armnetwork.Interface{}, subnets: map[string]*armnetwork.Subnet{}}
		nics := c.nics.NewListAllPager(nil)
		for nics.More() {
			page, err := nics.NextPage(ctx)
			if err != nil {
				return nil, classify(err, "list network interfaces of subscription "+sub)
			}
			for _, n := range page.Value {
				if n != nil && n.ID != nil {
					lk.nics[strings.ToLower(*n.ID)] = n
				}
			}
		}
		vnets := c.vnets.NewListAllPager(nil)
		for vnets.More() {
			page, err := vnets.NextPage(ctx)
			if err != nil {
				return nil, classify(err, "list virtual networks of subscription "+sub)
			}
			for _, v := range page.Value {
				if v == nil || v.Properties == nil {
					continue
				}
				for _, sn := range v.Properties.Subnets {
					if sn != nil && sn.ID != nil {
						lk.subnets[strings.ToLower(*sn.ID)] = sn
					}
				}
			}
		}
		vms := c.vms.NewListAllPager(nil)
		for vms.More() {
			page, err := vms.NextPage(ctx)
			if err != nil {
				return nil, classify(err, "list virtual machines of subscription "+sub)
			}
			for _, vm := range page.Value {
				if vm == nil || vm.ID == nil {
					continue
				}
				info, err := d.topology(ctx, vm, lk)
				if err != nil {
					return nil, err
				}
				out = append(out, info)
			}
		}
	}
	return out, nil
}

// lookup finds NICs and subnets: in what ListVMs prefetched, else with one
// read each (remembered, as VMs share subnets).
type lookup struct {
	d       *Driver
	nics    map[string]*armnetwork.Interface
	subnets map[string]*armnetwork.Subnet
}

func (l *lookup) nic(ctx context.Context, id string) (*armnetwork.Interface, error) {
	if n, ok := l.nics[strings.ToLower(id)]; ok {
		return n, nil
	}
	r, ok := parseID(id, typeNIC)
	if !ok {
		return nil, fmt.Errorf("%q is not a network interface id", id)
	}
	c, err := l.d.clientsFor(r.sub)
	if err != nil {
		return nil, err
	}
	resp, err := c.nics.Get(ctx, r.rg, r.name, nil)
	if err != nil {
		return nil, err
	}
	if l.nics == nil {
		l.nics = map[string]*armnetwork.Interface{}
	}
	l.nics[strings.ToLower(id)] = &resp.Interface
	return &resp.Interface, nil
}

func (l *lookup) subnet(ctx context.Context, id string) (*armnetwork.Subnet, error) {
	if s, ok := l.subnets[strings.ToLower(id)]; ok {
		return s, nil
	}
	r, ok := parseID(id, typeSubnet)
	if !ok {
		return nil, fmt.Errorf("%q is not a subnet id", id)
	}
	c, err := l.d.clientsFor(r.sub)
	if err != nil {
		return nil, err
	}
	resp, err := c.subnets.Get(ctx, r.rg, r.parent, r.name, nil)
	if err != nil {
		return nil, err
	}
	if l.subnets == nil {
		l.subnets = map[string]*armnetwork.Subnet{}
	}
	l.subnets[strings.ToLower(id)] = &resp.Subnet
	return &resp.Subnet, nil
}

// Reasons a VM cannot be protected.
const (
	reasonNoNSG = "no network security group on its network interfaces or their subnets"
	reasonNoNIC = "no network interfaces (scale set VMs configured through networkInterfaceConfigurations are not supported)"
)

// topology follows VM → NICs → IP configurations → subnets and collects the
// private IPs and the NSGs, NIC-level first, without duplicates.
func (d *Driver) topology(ctx context.Context, vm *armcompute.VirtualMachine, lk *lookup) (jit.VMInfo, error) {
	info := jit.VMInfo{ID: deref(vm.ID), Name: deref(vm.Name), Location: deref(vm.Location)}
	if len(vm.Tags) > 0 {
		info.Tags = make(map[string]string, len(vm.Tags))
		for k, v := range vm.Tags {
			info.Tags[k] = deref(v)
		}
	}
	seen := map[string]bool{}
	addNSG := func(sg *armnetwork.SecurityGroup, scope string) {
		if sg == nil || sg.ID == nil || seen[strings.ToLower(*sg.ID)] {
			return
		}
		seen[strings.ToLower(*sg.ID)] = true
		info.NSGs = append(info.NSGs, jit.NSGRef{ID: *sg.ID, Scope: scope})
	}
	var refs []*armcompute.NetworkInterfaceReference
	if vm.Properties != nil && vm.Properties.NetworkProfile != nil {
		refs = vm.Properties.NetworkProfile.NetworkInterfaces
	}
	for _, nref := range refs {
		if nref == nil || nref.ID == nil {
			continue
		}
		nic, err := lk.nic(ctx, *nref.ID)
		if err != nil {
			if isNotFound(err) {
				// A VM being deleted can briefly point at a NIC that is gone.
				d.log.Warn().Str("vm", info.ID).Str("nic", *nref.ID).Msg("network interface of VM not found")
				continue
			}
			return jit.VMInfo{}, classify(err, "read network interface "+*nref.ID)
		}
		if nic.Properties == nil {
			continue
		}
		addNSG(nic.Properties.NetworkSecurityGroup, "nic")
		for _, ipc := range nic.Properties.IPConfigurations {
			if ipc == nil || ipc.Properties == nil {
				continue
			}
			if ip := deref(ipc.Properties.PrivateIPAddress); ip != "" {
				info.PrivateIPs = append(info.PrivateIPs, ip)
			}
			if ipc.Properties.Subnet == nil || ipc.Properties.Subnet.ID == nil {
				continue
			}
			sn, err := lk.subnet(ctx, *ipc.Properties.Subnet.ID)
			if err != nil {
				if isNotFound(err) {
					continue
				}
				return jit.VMInfo{}, classify(err, "read subnet "+*ipc.Properties.Subnet.ID)
			}
			if sn.Properties != nil {
				addNSG(sn.Properties.NetworkSecurityGroup, "subnet")
			}
		}
	}
	switch {
	case len(refs) == 0:
		info.Unsupported = reasonNoNIC
	case len(info.NSGs) == 0:
		info.Unsupported = reasonNoNSG
	}
	return info, nil
}

// ListRules returns the NSG's inbound rules by priority.
func (d *Driver) ListRules(ctx context.Context, nsgID string) ([]jit.SecurityRule, error) {
	r, err := nsgRef(nsgID)
	if err != nil {
		return nil, err
	}
	doc, err := d.readNSG(ctx, r)
	if err != nil {
		if isNotFound(err) {
			return nil, jit.Wrap(jit.ENOTFOUND, err, fmt.Sprintf("network security group %s not found", nsgID))
		}
		return nil, classify(err, "read network security group "+nsgID)
	}
	return inboundRules(doc.rules), nil
}

// ScanNSGs hands fn every NSG of every subscription in scope with its
// inbound rules, a page of ARM's NSG list at a time: fn runs between page
// reads, never during one. An error of fn, or the end of ctx, stops the
// scan and comes back as it is.
func (d *Driver) ScanNSGs(ctx context.Context, fn func(jit.NSGInfo) error) error {
	for _, sub := range d.cfg.Subscriptions {
		err := d.scanNSGs(ctx, sub, fn)
		var le listError
		if errors.As(err, &le) {
			return classify(le.err, "list network security groups of subscription "+sub)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// backoff sleeps before attempt+1: exponential from RetryDelay, capped, with
// jitter so that workers contending for one NSG spread out, and never less
// than the Retry-After of the answer that failed (a 429, or a busy NSG's
// 409).
func (d *Driver) backoff(ctx context.Context, attempt int, cause error) error {
	delay := d.cfg.RetryDelay << min(attempt-1, 16)
	if delay > d.cfg.MaxRetryDelay || delay <= 0 {
		delay = d.cfg.MaxRetryDelay
	}
	delay = delay/2 + rand.N(delay/2+1)
	return jit.Sleep(ctx, max(delay, answerRetryAfter(cause)))
}

// freePriority is the lowest priority of band not in used.
func freePriority(used map[int]bool, band Band) (int, bool) {
	for p := band.Min; p <= band.Max; p++ {
		if !used[p] {
			return p, true
		}
	}
	return 0, false
}

func toARM(rule jit.SecurityRule, priority int32) armnetwork.SecurityRule {
	p := &armnetwork.SecurityRulePropertiesFormat{
		Access:    ptr(armnetwork.SecurityRuleAccess(rule.Access)),
		Direction: ptr(armnetwork.SecurityRuleDirectionInbound),
		Priority:  ptr(priority),
		Protocol:  ptr(armnetwork.SecurityRuleProtocol(rule.Protocol)),
	}
	if rule.Description != "" {
		p.Description = ptr(rule.Description)
	}
	oneOrMany(&p.SourcePortRange, &p.SourcePortRanges, sourcePorts(rule))
	oneOrMany(&p.DestinationPortRange, &p.DestinationPortRanges, rule.Ports)
	oneOrMany(&p.SourceAddressPrefix, &p.SourceAddressPrefixes, rule.Sources)
	oneOrMany(&p.DestinationAddressPrefix, &p.DestinationAddressPrefixes, rule.Destinations)
	return armnetwork.SecurityRule{Properties: p}
}

// oneOrMany uses ARM's singular field for one value and the plural for
// more, as the portal does; ARM rejects both at once.
func oneOrMany(single **string, plural *[]*string, values []string) {
	if len(values) == 1 {
		*single = ptr(values[0])
		return
	}
	for _, v := range values {
		*plural = append(*plural, ptr(v))
	}
}

func sameSet(a, b []string) bool {
	norm := func(v []string) []string {
		out := make([]string, len(v))
		for i, s := range v {
			out[i] = strings.ToLower(strings.TrimSpace(s))
		}
		sort.Strings(out)
		return compact(out)
	}
	x, y := norm(a), norm(b)
	if len(x) != len(y) {
		return false
	}
	for i := range x {
		if x[i] != y[i] {
			return false
		}
	}
	return true
}

func compact(s []string) []string {
	out := s[:0]
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}

// lroError marks a failure reported by a long-running operation's polling
// rather than by the initial request.
type lroError struct{ err error }

func (e lroError) Error() string { return "operation failed: " + e.err.Error() }
func (e lroError) Unwrap() error { return e.err }

// Codes NRP answers when writes to one NSG overlap; a later attempt succeeds.
var busyCodes = map[string]bool{
	"AnotherOperationInProgress":                 true,
	"RetryableErrorDueToAnotherOperation":        true,
	"CanceledAndSupersededDueToAnotherOperation": true,
}

func responseError(err error) *azcore.ResponseError {
	var re *azcore.ResponseError
	if errors.As(err, &re) {
		return re
	}
	return nil
}

func isNotFound(err error) bool {
	re := responseError(err)
	return re != nil && re.StatusCode == http.StatusNotFound
}

func isPriorityClash(err error) bool {
	re := responseError(err)
	return re != nil && re.StatusCode == http.StatusBadRequest && re.ErrorCode == "SecurityRuleConflict"
}

// maxThrottleWait is the longest Retry-After the driver waits out itself.
// azcore retries a 429 only while its Retry-After is within azcore's own
// maximum delay (MaxRetryDelay) and returns it at once otherwise; the driver
// waits out those up to this bound. Beyond it the operation fails and is
// retried later by its queue (or the sweeper).
const maxThrottleWait = 30 * time.Second

// throttledFor is how long a 429 answer asked to wait, or 0.
func throttledFor(err error) time.Duration {
	re := responseError(err)
	if re == nil || re.StatusCode != http.StatusTooManyRequests || re.RawResponse == nil {
		return 0
	}
	return retryAfter(re.RawResponse)
}

// answerRetryAfter is the Retry-After of the ARM answer behind err, or 0.
func answerRetryAfter(err error) time.Duration {
	re := responseError(err)
	if re == nil || re.RawResponse == nil {
		return 0
	}
	return retryAfter(re.RawResponse)
}

// isTransient reports whether the driver's own retry should try again:
// NSG write conflicts, failed long-running operations, and throttling that
// azcore did not wait for (a Retry-After beyond its maximum delay), as long
// as the answer's Retry-After is within maxThrottleWait. Other 429s and 5xx
// were already retried by azcore.
func (d *Driver) isTransient(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	if answerRetryAfter(err) > maxThrottleWait {
		// Waiting that long holds a worker; the queue delivers again later.
		return false
	}
	var lro lroError
	if errors.As(err, &lro) && !isNotFound(err) {
		return true
	}
	azcoreMax := d.opts.Retry.MaxRetryDelay
	if azcoreMax == 0 {
		azcoreMax = 60 * time.Second // azcore's default
	}
	if ra := throttledFor(err); ra > azcoreMax && ra <= maxThrottleWait {
		return true
	}
	re := responseError(err)
	return re != nil && busyCodes[re.ErrorCode]
}

// classify wraps an ARM failure in the jit error its cause deserves; what
// says what was being done and is safe to show.
func classify(err error, what string) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%s: %w", what, err)
	}
	var lro lroError
	if errors.As(err, &lro) {
		return jit.Wrap(jit.EUNAVAILABLE, err, what+": the operation failed in Azure; try again later")
	}
	var te throttledError
	if errors.As(err, &te) {
		return jit.Wrap(jit.EUNAVAILABLE, err, what+": "+te.Error()+"; try again later")
	}
	re := responseError(err)
	if re == nil {
		var ne net.Error
		if errors.As(err, &ne) {
			return jit.Wrap(jit.EUNAVAILABLE, err, what+": Azure Resource Manager is unreachable")
		}
		return fmt.Errorf("%s: %w", what, err)
	}
	switch {
	case re.StatusCode == http.StatusNotFound:
		return jit.Wrap(jit.ENOTFOUND, err, what+": not found")
	case re.StatusCode == http.StatusUnauthorized || re.StatusCode == http.StatusForbidden:
		return jit.Wrap(jit.EFORBIDDEN, err, what+": the service's identity is not allowed to do this")
	case re.StatusCode == http.StatusBadRequest:
		return jit.Wrap(jit.EINVALID, err, what+": rejected by Azure ("+re.ErrorCode+")")
	case busyCodes[re.ErrorCode], re.StatusCode == http.StatusTooManyRequests, re.StatusCode == http.StatusRequestTimeout, re.StatusCode >= 500:
		return jit.Wrap(jit.EUNAVAILABLE, err, what+": Azure Resource Manager is busy or unavailable; try again later")
	}
	return fmt.Errorf("%s: %w", what, err)
}

func ptr[T any](v T) *T { return &v }

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}
