package armsim

import (
	"crypto/sha256"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v9"
)

// ARM resource types as ARM spells them in the "type" field.
const (
	typeVM          = "Microsoft.Compute/virtualMachines"
	typeNIC         = "Microsoft.Network/networkInterfaces"
	typeVNet        = "Microsoft.Network/virtualNetworks"
	typeSubnet      = "Microsoft.Network/virtualNetworks/subnets"
	typeNSG         = "Microsoft.Network/networkSecurityGroups"
	typeRule        = "Microsoft.Network/networkSecurityGroups/securityRules"
	typeDefaultRule = "Microsoft.Network/networkSecurityGroups/defaultSecurityRules"
)

// Limits ARM enforces on network security groups.
const (
	MaxRulesPerNSG     = 1000
	MaxPrefixesPerRule = 4000
	MaxRuleNameLength  = 80
	MaxDescription     = 140
	MinRulePriority    = 100
	MaxRulePriority    = 4096
	// MaxPerNSG bounds, over all of an NSG's rules, the source address
	// prefixes, and separately the destination prefixes, the source port
	// ranges and the destination port ranges
	// (MaxSecurityRuleAddressesOrPortsPerSecurityGroup).
	MaxPerNSG = 4000
)

// armError is an ARM error answer: status and the {"error":{...}} body.
type armError struct {
	Status  int
	Code    string
	Message string
}

func badRequest(code, format string, args ...any) *armError {
	return &armError{Status: 400, Code: code, Message: fmt.Sprintf(format, args...)}
}

// ARM's own pattern for security rule names.
var ruleName = regexp.MustCompile(`^[a-zA-Z0-9]([a-zA-Z0-9._-]*[a-zA-Z0-9_])?$`)

// validateRule checks one rule the way ARM does before looking at its
// neighbours. SecurityRuleConflict is ARM's real code; the other codes are
// plausible, not verified against ARM.
func validateRule(name string, p *armnetwork.SecurityRulePropertiesFormat) *armError {
	if len(name) > MaxRuleNameLength || !ruleName.MatchString(name) {
		return badRequest("InvalidResourceName", "Resource name %s is invalid. The name can be up to %d characters long. It must begin with a word character, and it must end with a word character or with '_'. The name may contain word characters or '.', '-', '_'.", name, MaxRuleNameLength)
	}
	if p == nil {
		return badRequest("InvalidRequestFormat", "Security rule %s has no properties.", name)
	}
	if n := len([]rune(deref(p.Description))); n > MaxDescription {
		return badRequest("SecurityRuleDescriptionTooLong", "Security rule %s has a description of %d characters; at most %d are allowed.", name, n, MaxDescription)
	}
	if p.Priority == nil {
		return badRequest("SecurityRuleParameterMissing", "Security rule %s is missing the required parameter priority.", name)
	}
	if *p.Priority < MinRulePriority || *p.Priority > MaxRulePriority {
		return badRequest("SecurityRuleInvalidPriority", "Security rule %s has invalid priority %d. Value provided: %d Allowed range %d-%d.", name, *p.Priority, *p.Priority, MinRulePriority, MaxRulePriority)
	}
	if p.Access == nil || (*p.Access != armnetwork.SecurityRuleAccessAllow && *p.Access != armnetwork.SecurityRuleAccessDeny) {
		return badRequest("SecurityRuleInvalidAccess", "Security rule %s has invalid access %q. Allowed values: Allow, Deny.", name, derefS(p.Access))
	}
	if p.Direction == nil || (*p.Direction != armnetwork.SecurityRuleDirectionInbound && *p.Direction != armnetwork.SecurityRuleDirectionOutbound) {
		return badRequest("SecurityRuleInvalidDirection", "Security rule %s has invalid direction %q. Allowed values: Inbound, Outbound.", name, derefS(p.Direction))
	}
	if p.Protocol == nil || !validProtocol(string(*p.Protocol)) {
		return badRequest("SecurityRuleInvalidProtocol", "Security rule %s has invalid protocol %q. Allowed values: Tcp, Udp, Icmp, Esp, Ah, *.", name, derefS(p.Protocol))
	}
	for _, f := range []struct {
		what   string
		single *string
		plural []*string
		check  func(string) bool
	}{
		{"sourceAddressPrefix", p.SourceAddressPrefix, p.SourceAddressPrefixes, validPrefix},
		{"destinationAddressPrefix", p.DestinationAddressPrefix, p.DestinationAddressPrefixes, validPrefix},
		{"sourcePortRange", p.SourcePortRange, p.SourcePortRanges, validPortRange},
		{"destinationPortRange", p.DestinationPortRange, p.DestinationPortRanges, validPortRange},
	} {
		values := nonEmpty(f.single, f.plural)
		hasSingle := f.single != nil && *f.single != ""
		if hasSingle && len(values) > 1 {
			return badRequest("SecurityRuleParameterContainsMultipleValues", "Security rule %s specifies both %s and its plural form; use one of them.", name, f.what)
		}
		if len(values) == 0 && !(strings.Contains(f.what, "AddressPrefix") && hasASG(p, f.what)) {
			return badRequest("SecurityRuleParameterMissing", "Security rule %s is missing the required parameter %s.", name, f.what)
		}
		if len(values) > MaxPrefixesPerRule {
			return badRequest("SecurityRuleTooManyValues", "Security rule %s has %d values for %s; at most %d are allowed.", name, len(values), f.what, MaxPrefixesPerRule)
		}
		for _, v := range values {
			if !f.check(v) {
				return badRequest("SecurityRuleInvalidParameter", "Security rule %s has invalid %s %q.", name, f.what, v)
			}
		}
	}
	if fams := families(p); len(fams) > 1 {
		return badRequest("ResourceCannotContainAddressPrefixesFromDifferentAddressFamilies", "Resource %s contains IP addresses or prefixes that belong to different address families (%s). All IP addresses or prefixes in the resource should belong to the same address family.", name, strings.Join(fams, " and "))
	}
	return nil
}

// families lists the address families of a rule's IP prefixes; service tags
// and "*" belong to neither.
func families(p *armnetwork.SecurityRulePropertiesFormat) []string {
	var v4, v6 bool
	for _, v := range append(nonEmpty(p.SourceAddressPrefix, p.SourceAddressPrefixes), nonEmpty(p.DestinationAddressPrefix, p.DestinationAddressPrefixes)...) {
		if a, ok := ipOf(v); ok {
			v4, v6 = v4 || a.Is4(), v6 || !a.Is4()
		}
	}
	var out []string
	if v4 {
		out = append(out, "IPv4")
	}
	if v6 {
		out = append(out, "IPv6")
	}
	return out
}

// ipOf is the address of an IP prefix or address; false for a service tag.
func ipOf(v string) (netip.Addr, bool) {
	if p, err := netip.ParsePrefix(v); err == nil {
		return p.Addr().Unmap(), true
	}
	if a, err := netip.ParseAddr(v); err == nil {
		return a.Unmap(), true
	}
	return netip.Addr{}, false
}

// perNSG names the values that MaxPerNSG counts, as ARM names them.
var perNSG = [4]string{"SourceAddressPrefixes", "DestinationAddressPrefixes", "SourcePortRanges", "DestinationPortRanges"}

// addValues adds a rule's values to the counts of perNSG.
func addValues(n *[4]int, p *armnetwork.SecurityRulePropertiesFormat) {
	n[0] += len(nonEmpty(p.SourceAddressPrefix, p.SourceAddressPrefixes))
	n[1] += len(nonEmpty(p.DestinationAddressPrefix, p.DestinationAddressPrefixes))
	n[2] += len(nonEmpty(p.SourcePortRange, p.SourcePortRanges))
	n[3] += len(nonEmpty(p.DestinationPortRange, p.DestinationPortRanges))
}

func hasASG(p *armnetwork.SecurityRulePropertiesFormat, what string) bool {
	if strings.HasPrefix(what, "source") {
		return len(p.SourceApplicationSecurityGroups) > 0
	}
	return len(p.DestinationApplicationSecurityGroups) > 0
}

// checkRuleSet checks what ARM checks across an NSG's rules: the rule count
// and one priority per direction.
func checkRuleSet(rules []*armnetwork.SecurityRule) *armError {
	if len(rules) > MaxRulesPerNSG {
		return badRequest("SecurityRuleCountLimitReached", "A security group cannot have more than %d security rules.", MaxRulesPerNSG)
	}
	seen := map[string]*armnetwork.SecurityRule{}
	names := map[string]bool{}
	var values [4]int
	for _, r := range rules {
		addValues(&values, r.Properties)
		n := strings.ToLower(deref(r.Name))
		if names[n] {
			return badRequest("InvalidRequestFormat", "Security rule %s appears more than once.", deref(r.Name))
		}
		names[n] = true
		k := fmt.Sprintf("%s/%d", *r.Properties.Direction, *r.Properties.Priority)
		if other := seen[k]; other != nil {
			return conflict(deref(r.Name), deref(other.Name))
		}
		seen[k] = r
	}
	for i, n := range values {
		if n > MaxPerNSG {
			return badRequest("SecurityRuleAddressesOrPortsPerSecurityGroupLimitReached", "Security group has %d %s. A security group cannot have more than %d %s as per the limit MaxSecurityRuleAddressesOrPortsPerSecurityGroup.", n, perNSG[i], MaxPerNSG, perNSG[i])
		}
	}
	return nil
}

// conflict is ARM's real answer to a duplicate priority in one direction.
func conflict(name, other string) *armError {
	return badRequest("SecurityRuleConflict", "Security rule %s conflicts with rule %s. Rules cannot have the same Priority and Direction. To learn more, see aka.ms/nsgrules.", name, other)
}

func validProtocol(p string) bool {
	switch p {
	case "Tcp", "Udp", "Icmp", "Esp", "Ah", "*":
		return true
	}
	return false
}

// Service tags and "*"; ARM knows a fixed list, a name pattern is enough here.
var serviceTag = regexp.MustCompile(`^(\*|[A-Za-z][A-Za-z0-9]*([.-][A-Za-z0-9]+)*)$`)

func validPrefix(v string) bool {
	if _, err := netip.ParsePrefix(v); err == nil {
		return true
	}
	if _, err := netip.ParseAddr(v); err == nil {
		return true
	}
	return serviceTag.MatchString(v)
}

func validPortRange(v string) bool {
	if v == "*" {
		return true
	}
	lo, hi, isRange := strings.Cut(v, "-")
	if !isRange {
		hi = lo
	}
	a, err1 := strconv.Atoi(lo)
	b, err2 := strconv.Atoi(hi)
	return err1 == nil && err2 == nil && a >= 0 && b <= 65535 && a <= b
}

func nonEmpty(single *string, plural []*string) []string {
	var out []string
	if single != nil && *single != "" {
		out = append(out, *single)
	}
	for _, p := range plural {
		if p != nil && *p != "" {
			out = append(out, *p)
		}
	}
	return out
}

// storedRule is the rule as ARM keeps it: the writable properties of the
// request, ARM's id, name and type, and the empty plural lists ARM always
// answers with.
func storedRule(nsgID, name string, p *armnetwork.SecurityRulePropertiesFormat, etag string) *armnetwork.SecurityRule {
	q := *p
	q.ProvisioningState = to.Ptr(armnetwork.ProvisioningStateSucceeded)
	for _, l := range []*[]*string{&q.SourceAddressPrefixes, &q.DestinationAddressPrefixes, &q.SourcePortRanges, &q.DestinationPortRanges} {
		if *l == nil {
			*l = []*string{}
		}
	}
	return &armnetwork.SecurityRule{
		ID: to.Ptr(nsgID + "/securityRules/" + name), Name: to.Ptr(name), Type: to.Ptr(typeRule), Etag: to.Ptr(etag),
		Properties: &q,
	}
}

// defaultRules are the six rules ARM puts in every NSG.
func defaultRules(nsgID, etag string) []*armnetwork.SecurityRule {
	mk := func(name, desc string, access armnetwork.SecurityRuleAccess, dir armnetwork.SecurityRuleDirection, prio int32, src, dst string) *armnetwork.SecurityRule {
		r := storedRule(nsgID, name, &armnetwork.SecurityRulePropertiesFormat{
			Description: to.Ptr(desc), Protocol: to.Ptr(armnetwork.SecurityRuleProtocolAsterisk),
			SourcePortRange: to.Ptr("*"), DestinationPortRange: to.Ptr("*"),
			SourceAddressPrefix: to.Ptr(src), DestinationAddressPrefix: to.Ptr(dst),
			Access: to.Ptr(access), Priority: to.Ptr(prio), Direction: to.Ptr(dir),
		}, etag)
		r.ID = to.Ptr(nsgID + "/defaultSecurityRules/" + name)
		r.Type = to.Ptr(typeDefaultRule)
		return r
	}
	in, out := armnetwork.SecurityRuleDirectionInbound, armnetwork.SecurityRuleDirectionOutbound
	allow, deny := armnetwork.SecurityRuleAccessAllow, armnetwork.SecurityRuleAccessDeny
	return []*armnetwork.SecurityRule{
		mk("AllowVnetInBound", "Allow inbound traffic from all VMs in VNET", allow, in, 65000, "VirtualNetwork", "VirtualNetwork"),
		mk("AllowAzureLoadBalancerInBound", "Allow inbound traffic from azure load balancer", allow, in, 65001, "AzureLoadBalancer", "*"),
		mk("DenyAllInBound", "Deny all inbound traffic", deny, in, 65500, "*", "*"),
		mk("AllowVnetOutBound", "Allow outbound traffic from all VMs to all VMs in VNET", allow, out, 65000, "VirtualNetwork", "VirtualNetwork"),
		mk("AllowInternetOutBound", "Allow outbound traffic from all VMs to Internet", allow, out, 65001, "*", "Internet"),
		mk("DenyAllOutBound", "Deny all outbound traffic", deny, out, 65500, "*", "*"),
	}
}

// guidFrom derives a stable GUID-shaped value from an id, so that an estate
// loads to the same bytes every time.
func guidFrom(s string) string {
	h := sha256.Sum256([]byte(strings.ToLower(s)))
	return fmt.Sprintf("%x-%x-%x-%x-%x", h[0:4], h[4:6], h[6:8], h[8:10], h[10:16])
}

func macFrom(s string) string {
	h := sha256.Sum256([]byte(strings.ToLower(s)))
	return fmt.Sprintf("00-0D-3A-%02X-%02X-%02X", h[0], h[1], h[2])
}

func deref(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

func derefS[T ~string](p *T) string {
	if p == nil {
		return ""
	}
	return string(*p)
}
