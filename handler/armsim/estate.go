package armsim

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v8"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v9"
)

// DemoEstate is the estate a new Server starts with: one subscription, one
// resource group "demo" in westeurope, a VNet with an open and a protected
// subnet, and four VMs covering every NSG placement (NIC only, subnet only,
// both, none).
//
//go:embed testdata/demo-estate.json
var DemoEstate []byte

// Ids of the demo estate, for tests and documentation.
const (
	DemoSubscription  = "11111111-1111-1111-1111-111111111111"
	DemoResourceGroup = "demo"
	DemoLocation      = "westeurope"
)

// DemoID returns the ARM id of a resource of the demo estate's resource
// group, e.g. DemoID("Microsoft.Compute/virtualMachines", "vm-nic-nsg").
func DemoID(resourceType, name string) string {
	return "/subscriptions/" + DemoSubscription + "/resourceGroups/" + DemoResourceGroup + "/providers/" + resourceType + "/" + name
}

// The estate file has two forms, which may be mixed: a compact description
// that Load expands into consistent resources (ids, back-references, default
// rules), convenient to write by hand; and a list of raw ARM resources, which
// is what Snapshot writes so that local mode keeps its rules across restarts.
type estateFile struct {
	// Generation is set in snapshots Save writes: the journal lines of this
	// generation apply to it.
	Generation    uint64               `json:"generation,omitempty"`
	Subscriptions []estateSubscription `json:"subscriptions,omitempty"`
	Resources     []json.RawMessage    `json:"resources,omitempty"`
}

type estateSubscription struct {
	ID             string        `json:"id"`
	ResourceGroups []estateGroup `json:"resourceGroups"`
}

type estateGroup struct {
	Name                  string       `json:"name"`
	Location              string       `json:"location"`
	NetworkSecurityGroups []estateNSG  `json:"networkSecurityGroups"`
	VirtualNetworks       []estateVNet `json:"virtualNetworks"`
	VirtualMachines       []estateVM   `json:"virtualMachines"`
}

type estateNSG struct {
	Name          string                     `json:"name"`
	SecurityRules []*armnetwork.SecurityRule `json:"securityRules"`
}

type estateVNet struct {
	Name            string         `json:"name"`
	AddressPrefixes []string       `json:"addressPrefixes"`
	Subnets         []estateSubnet `json:"subnets"`
}

type estateSubnet struct {
	Name                 string `json:"name"`
	AddressPrefix        string `json:"addressPrefix"`
	NetworkSecurityGroup string `json:"networkSecurityGroup"` // name in the same group, or an id
}

type estateVM struct {
	Name   string      `json:"name"`
	VMSize string      `json:"vmSize"`
	NICs   []estateNIC `json:"nics"`
}

type estateNIC struct {
	Name                 string `json:"name"`   // default "<vm>-nic", "<vm>-nic<i>" after the first
	Subnet               string `json:"subnet"` // "vnet/subnet" in the same group, or a subnet id
	PrivateIPAddress     string `json:"privateIPAddress"`
	NetworkSecurityGroup string `json:"networkSecurityGroup"` // name in the same group, or an id
}

// state is everything the simulator knows. Maps are keyed by lower-case ARM
// id because ARM ids are case-insensitive; the values keep ARM's spelling.
type state struct {
	subs  map[string]string // lower sub id -> sub id
	rgs   map[string]string // lower "/subscriptions/x/resourcegroups/y" -> canonical rg name
	vms   map[string]*armcompute.VirtualMachine
	nics  map[string]*armnetwork.Interface
	vnets map[string]*armnetwork.VirtualNetwork
	nsgs  map[string]*armnetwork.SecurityGroup
}

func newState() state {
	return state{
		subs:  map[string]string{},
		rgs:   map[string]string{},
		vms:   map[string]*armcompute.VirtualMachine{},
		nics:  map[string]*armnetwork.Interface{},
		vnets: map[string]*armnetwork.VirtualNetwork{},
		nsgs:  map[string]*armnetwork.SecurityGroup{},
	}
}

func key(id string) string { return strings.ToLower(id) }

func rgID(sub, rg string) string { return "/subscriptions/" + sub + "/resourceGroups/" + rg }

func (st *state) addGroup(sub, rg string) {
	st.subs[key(sub)] = sub
	st.rgs[key(rgID(sub, rg))] = rg
}

// parseEstate builds a state from an estate file; etag supplies fresh etags.
func parseEstate(r io.Reader, etag func() string) (state, error) {
	var f estateFile
	dec := json.NewDecoder(r)
	if err := dec.Decode(&f); err != nil {
		return state{}, fmt.Errorf("decode estate: %w", err)
	}
	return buildState(f, etag)
}

func buildState(f estateFile, etag func() string) (state, error) {
	st := newState()
	for _, sub := range f.Subscriptions {
		for _, g := range sub.ResourceGroups {
			if err := st.expandGroup(sub.ID, g, etag); err != nil {
				return state{}, err
			}
		}
	}
	for _, raw := range f.Resources {
		if err := st.addRaw(raw); err != nil {
			return state{}, err
		}
	}
	st.link()
	return st, nil
}

func (st *state) expandGroup(sub string, g estateGroup, etag func() string) error {
	if sub == "" || g.Name == "" {
		return fmt.Errorf("estate: subscription id and resource group name are required")
	}
	loc := g.Location
	if loc == "" {
		loc = DemoLocation
	}
	st.addGroup(sub, g.Name)
	base := rgID(sub, g.Name) + "/providers/"
	ref := func(kind, nameOrID string) string {
		if strings.HasPrefix(nameOrID, "/") {
			return nameOrID
		}
		return base + kind + "/" + nameOrID
	}
	for _, n := range g.NetworkSecurityGroups {
		id := base + "Microsoft.Network/networkSecurityGroups/" + n.Name
		tag := etag()
		nsg := &armnetwork.SecurityGroup{
			ID: to.Ptr(id), Name: to.Ptr(n.Name), Type: to.Ptr(typeNSG), Location: to.Ptr(loc), Etag: to.Ptr(tag),
			Properties: &armnetwork.SecurityGroupPropertiesFormat{
				ProvisioningState:    to.Ptr(armnetwork.ProvisioningStateSucceeded),
				ResourceGUID:         to.Ptr(guidFrom(id)),
				SecurityRules:        []*armnetwork.SecurityRule{},
				DefaultSecurityRules: defaultRules(id, tag),
			},
		}
		for _, rule := range n.SecurityRules {
			if rule == nil || rule.Name == nil {
				return fmt.Errorf("estate: NSG %s: rule without a name", n.Name)
			}
			if aerr := validateRule(*rule.Name, rule.Properties); aerr != nil {
				return fmt.Errorf("estate: NSG %s rule %s: %s", n.Name, *rule.Name, aerr.Message)
			}
			nsg.Properties.SecurityRules = append(nsg.Properties.SecurityRules, storedRule(id, *rule.Name, rule.Properties, tag))
		}
		if aerr := checkRuleSet(nsg.Properties.SecurityRules); aerr != nil {
			return fmt.Errorf("estate: NSG %s: %s", n.Name, aerr.Message)
		}
		st.nsgs[key(id)] = nsg
	}
	for _, v := range g.VirtualNetworks {
		id := base + "Microsoft.Network/virtualNetworks/" + v.Name
		tag := etag()
		vnet := &armnetwork.VirtualNetwork{
			ID: to.Ptr(id), Name: to.Ptr(v.Name), Type: to.Ptr(typeVNet), Location: to.Ptr(loc), Etag: to.Ptr(tag),
			Properties: &armnetwork.VirtualNetworkPropertiesFormat{
				AddressSpace:      &armnetwork.AddressSpace{AddressPrefixes: to.SliceOfPtrs(v.AddressPrefixes...)},
				ProvisioningState: to.Ptr(armnetwork.ProvisioningStateSucceeded),
				ResourceGUID:      to.Ptr(guidFrom(id)),
				Subnets:           []*armnetwork.Subnet{},
			},
		}
		for _, sn := range v.Subnets {
			sid := id + "/subnets/" + sn.Name
			subnet := &armnetwork.Subnet{
				ID: to.Ptr(sid), Name: to.Ptr(sn.Name), Type: to.Ptr(typeSubnet), Etag: to.Ptr(tag),
				Properties: &armnetwork.SubnetPropertiesFormat{
					AddressPrefix:     to.Ptr(sn.AddressPrefix),
					ProvisioningState: to.Ptr(armnetwork.ProvisioningStateSucceeded),
				},
			}
			if sn.NetworkSecurityGroup != "" {
				subnet.Properties.NetworkSecurityGroup = &armnetwork.SecurityGroup{ID: to.Ptr(ref("Microsoft.Network/networkSecurityGroups", sn.NetworkSecurityGroup))}
			}
			vnet.Properties.Subnets = append(vnet.Properties.Subnets, subnet)
		}
		st.vnets[key(id)] = vnet
	}
	for _, v := range g.VirtualMachines {
		vmID := base + "Microsoft.Compute/virtualMachines/" + v.Name
		size := v.VMSize
		if size == "" {
			size = "Standard_B1s"
		}
		vm := &armcompute.VirtualMachine{
			ID: to.Ptr(vmID), Name: to.Ptr(v.Name), Type: to.Ptr(typeVM), Location: to.Ptr(loc),
			Properties: &armcompute.VirtualMachineProperties{
				VMID:              to.Ptr(guidFrom(vmID)),
				ProvisioningState: to.Ptr("Succeeded"),
				HardwareProfile:   &armcompute.HardwareProfile{VMSize: to.Ptr(armcompute.VirtualMachineSizeTypes(size))},
				OSProfile:         &armcompute.OSProfile{ComputerName: to.Ptr(v.Name)},
				NetworkProfile:    &armcompute.NetworkProfile{NetworkInterfaces: []*armcompute.NetworkInterfaceReference{}},
			},
		}
		for i, n := range v.NICs {
			name := n.Name
			if name == "" {
				name = v.Name + "-nic"
				if i > 0 {
					name += fmt.Sprint(i)
				}
			}
			nicID := base + "Microsoft.Network/networkInterfaces/" + name
			subnetID := n.Subnet
			if !strings.HasPrefix(subnetID, "/") {
				vnetName, subnetName, ok := strings.Cut(n.Subnet, "/")
				if !ok {
					return fmt.Errorf("estate: VM %s: subnet %q is not \"vnet/subnet\"", v.Name, n.Subnet)
				}
				subnetID = base + "Microsoft.Network/virtualNetworks/" + vnetName + "/subnets/" + subnetName
			}
			tag := etag()
			nic := &armnetwork.Interface{
				ID: to.Ptr(nicID), Name: to.Ptr(name), Type: to.Ptr(typeNIC), Location: to.Ptr(loc), Etag: to.Ptr(tag),
				Properties: &armnetwork.InterfacePropertiesFormat{
					Primary:           to.Ptr(i == 0),
					ProvisioningState: to.Ptr(armnetwork.ProvisioningStateSucceeded),
					ResourceGUID:      to.Ptr(guidFrom(nicID)),
					MacAddress:        to.Ptr(macFrom(nicID)),
					VirtualMachine:    &armnetwork.SubResource{ID: to.Ptr(vmID)},
					IPConfigurations: []*armnetwork.InterfaceIPConfiguration{{
						ID: to.Ptr(nicID + "/ipConfigurations/ipconfig1"), Name: to.Ptr("ipconfig1"), Etag: to.Ptr(tag),
						Type: to.Ptr("Microsoft.Network/networkInterfaces/ipConfigurations"),
						Properties: &armnetwork.InterfaceIPConfigurationPropertiesFormat{
							Primary:                   to.Ptr(true),
							PrivateIPAddress:          to.Ptr(n.PrivateIPAddress),
							PrivateIPAddressVersion:   to.Ptr(armnetwork.IPVersionIPv4),
							PrivateIPAllocationMethod: to.Ptr(armnetwork.IPAllocationMethodStatic),
							ProvisioningState:         to.Ptr(armnetwork.ProvisioningStateSucceeded),
							Subnet:                    &armnetwork.Subnet{ID: to.Ptr(subnetID)},
						},
					}},
				},
			}
			if n.NetworkSecurityGroup != "" {
				nic.Properties.NetworkSecurityGroup = &armnetwork.SecurityGroup{ID: to.Ptr(ref("Microsoft.Network/networkSecurityGroups", n.NetworkSecurityGroup))}
			}
			st.nics[key(nicID)] = nic
			vm.Properties.NetworkProfile.NetworkInterfaces = append(vm.Properties.NetworkProfile.NetworkInterfaces,
				&armcompute.NetworkInterfaceReference{ID: to.Ptr(nicID), Properties: &armcompute.NetworkInterfaceReferenceProperties{Primary: to.Ptr(i == 0)}})
		}
		st.vms[key(vmID)] = vm
	}
	return nil
}

// addRaw adds one raw ARM resource (Snapshot's form), dispatching on its type.
func (st *state) addRaw(raw json.RawMessage) error {
	var head struct {
		ID   string `json:"id"`
		Type string `json:"type"`
	}
	if err := json.Unmarshal(raw, &head); err != nil {
		return fmt.Errorf("estate: decode resource: %w", err)
	}
	p, aerr := parseRoute(head.ID)
	if aerr != nil || p.rg == "" || p.name == "" || p.child != "" {
		return fmt.Errorf("estate: resource id %q is not a resource group's resource", head.ID)
	}
	st.addGroup(p.sub, p.rg)
	var target any
	switch strings.ToLower(head.Type) {
	case strings.ToLower(typeVM):
		v := &armcompute.VirtualMachine{}
		st.vms[key(head.ID)], target = v, v
	case strings.ToLower(typeNIC):
		v := &armnetwork.Interface{}
		st.nics[key(head.ID)], target = v, v
	case strings.ToLower(typeVNet):
		v := &armnetwork.VirtualNetwork{}
		st.vnets[key(head.ID)], target = v, v
	case strings.ToLower(typeNSG):
		v := &armnetwork.SecurityGroup{}
		st.nsgs[key(head.ID)], target = v, v
	case "microsoft.resources/resourcegroups":
		return nil
	default:
		return fmt.Errorf("estate: resource %s has unsupported type %q", head.ID, head.Type)
	}
	if err := json.Unmarshal(raw, target); err != nil {
		return fmt.Errorf("estate: decode %s: %w", head.ID, err)
	}
	return nil
}

// link recomputes the read-only back-references ARM keeps: which NICs and
// subnets an NSG is attached to, and which IP configurations use a subnet.
func (st *state) link() {
	for _, nsg := range st.nsgs {
		if nsg.Properties == nil {
			nsg.Properties = &armnetwork.SecurityGroupPropertiesFormat{}
		}
		nsg.Properties.NetworkInterfaces = nil
		nsg.Properties.Subnets = nil
	}
	subnets := map[string]*armnetwork.Subnet{}
	for _, vnet := range st.vnets {
		if vnet.Properties == nil {
			continue
		}
		for _, sn := range vnet.Properties.Subnets {
			if sn.Properties == nil {
				sn.Properties = &armnetwork.SubnetPropertiesFormat{}
			}
			sn.Properties.IPConfigurations = nil
			subnets[key(deref(sn.ID))] = sn
			if ref := sn.Properties.NetworkSecurityGroup; ref != nil && ref.ID != nil {
				if nsg := st.nsgs[key(*ref.ID)]; nsg != nil {
					nsg.Properties.Subnets = append(nsg.Properties.Subnets, &armnetwork.Subnet{ID: sn.ID})
				}
			}
		}
	}
	for _, nic := range sortedValues(st.nics) {
		if nic.Properties == nil {
			continue
		}
		if ref := nic.Properties.NetworkSecurityGroup; ref != nil && ref.ID != nil {
			if nsg := st.nsgs[key(*ref.ID)]; nsg != nil {
				nsg.Properties.NetworkInterfaces = append(nsg.Properties.NetworkInterfaces, &armnetwork.Interface{ID: nic.ID})
			}
		}
		for _, ipc := range nic.Properties.IPConfigurations {
			if ipc.Properties == nil || ipc.Properties.Subnet == nil || ipc.Properties.Subnet.ID == nil {
				continue
			}
			if sn := subnets[key(*ipc.Properties.Subnet.ID)]; sn != nil {
				sn.Properties.IPConfigurations = append(sn.Properties.IPConfigurations, &armnetwork.IPConfiguration{ID: ipc.ID})
			}
		}
	}
	for _, nsg := range st.nsgs {
		sort.Slice(nsg.Properties.Subnets, func(i, j int) bool {
			return key(deref(nsg.Properties.Subnets[i].ID)) < key(deref(nsg.Properties.Subnets[j].ID))
		})
	}
}

// resourceKind says which of the state's maps holds a resource.
type resourceKind uint8

const (
	kindNSG resourceKind = iota
	kindVNet
	kindNIC
	kindVM
)

// resourceKey names a resource of the state: its map and its key there.
type resourceKey struct {
	kind resourceKind
	id   string // lower-case ARM id
}

// lookup returns the resource a key names and its id as ARM spells it.
func (st *state) lookup(rk resourceKey) (v any, id string, ok bool) {
	switch rk.kind {
	case kindNSG:
		if r := st.nsgs[rk.id]; r != nil {
			return r, deref(r.ID), true
		}
	case kindVNet:
		if r := st.vnets[rk.id]; r != nil {
			return r, deref(r.ID), true
		}
	case kindNIC:
		if r := st.nics[rk.id]; r != nil {
			return r, deref(r.ID), true
		}
	case kindVM:
		if r := st.vms[rk.id]; r != nil {
			return r, deref(r.ID), true
		}
	}
	return nil, "", false
}

// saveCache is what Save last wrote of each resource, so that local mode,
// which saves the estate after every write, pays for what changed instead
// of the thousands of VMs, NICs and NSGs of the estate. Every writer that
// changes or deletes a resource records it (markChangedLocked): an entry
// not in dirty is the resource's JSON as it is now. A journal save marshals
// the dirty resources alone; a new snapshot, and reads, reuse the JSON of
// the rest. A nil json means nothing is saved as the estate is now: the
// next Save writes a whole snapshot, and writers need not record anything.
type saveCache struct {
	json  map[resourceKey][]byte   // each resource as last saved
	dirty map[resourceKey]struct{} // changed or deleted since
}

// markChangedLocked records that a writer changed or deleted a resource in
// the state; callers hold s.mu. Writers call it before s.changed, so a Save
// that counts the change finds it.
func (s *Server) markChangedLocked(kind resourceKind, k string) {
	if s.cache.json == nil {
		return
	}
	if s.cache.dirty == nil {
		s.cache.dirty = map[resourceKey]struct{}{}
	}
	s.cache.dirty[resourceKey{kind, k}] = struct{}{}
}

// resourceJSONLocked returns a resource's JSON: the bytes Save last wrote
// when it has not changed since, so that in local mode reading a large
// estate does not marshal it again; callers hold s.mu and do not modify
// the bytes.
func (s *Server) resourceJSONLocked(rk resourceKey, v any) ([]byte, error) {
	if _, dirty := s.cache.dirty[rk]; !dirty {
		if b, ok := s.cache.json[rk]; ok {
			return b, nil
		}
	}
	return json.Marshal(v)
}

// snapshotLocked writes the state as raw ARM resources, one per line, with
// the journal generation it starts; callers hold s.mu. For Save (save
// true) it reuses the JSON of the resources saved and not changed since,
// and leaves the cache holding what it wrote; otherwise it marshals every
// resource and leaves the cache alone.
func (s *Server) snapshotLocked(buf *bytes.Buffer, generation uint64, save bool) ([]byte, error) {
	buf.Reset()
	fmt.Fprintf(buf, "{\n  \"generation\": %d,\n  \"resources\": [", generation)
	var written map[resourceKey][]byte
	if save {
		written = make(map[resourceKey][]byte, len(s.st.nsgs)+len(s.st.vnets)+len(s.st.nics)+len(s.st.vms))
	}
	first := true
	add := func(rk resourceKey, v any) error {
		var b []byte
		var err error
		if save {
			b, err = s.resourceJSONLocked(rk, v)
		} else {
			b, err = json.Marshal(v)
		}
		if err != nil {
			return err
		}
		if save {
			written[rk] = b
		}
		if !first {
			buf.WriteByte(',')
		}
		first = false
		buf.WriteString("\n    ")
		buf.Write(b)
		return nil
	}
	if err := eachSorted(s.st.nsgs, kindNSG, add); err != nil {
		return nil, err
	}
	if err := eachSorted(s.st.vnets, kindVNet, add); err != nil {
		return nil, err
	}
	if err := eachSorted(s.st.nics, kindNIC, add); err != nil {
		return nil, err
	}
	if err := eachSorted(s.st.vms, kindVM, add); err != nil {
		return nil, err
	}
	buf.WriteString("\n  ]\n}\n")
	if save {
		s.cache.json = written
		clear(s.cache.dirty)
	}
	return buf.Bytes(), nil
}

// eachSorted visits a map's resources in the order of their keys.
func eachSorted[T any](m map[string]*T, kind resourceKind, visit func(resourceKey, any) error) error {
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if err := visit(resourceKey{kind, k}, m[k]); err != nil {
			return err
		}
	}
	return nil
}

// The estate on disk is a snapshot (the estate file) and a journal beside it
// (path + ".journal"). Save appends to the journal the resources that
// changed since the last save, one JSON line each, and writes a new snapshot
// only when the journal has grown to the snapshot's size: a rule write on a
// 5,000-VM estate costs a line, not megabytes. Each snapshot starts a new
// generation and journal lines carry theirs, so lines left over from an
// older snapshot (a crash between the rename and the truncation) are never
// applied to a newer one.

// journalLine is one resource as it is after a change; a null resource was
// deleted.
type journalLine struct {
	Generation uint64          `json:"generation"`
	ID         string          `json:"id"`
	Resource   json.RawMessage `json:"resource"`
}

// saveState is what the files at path hold; under saveMu.
type saveState struct {
	path        string
	generation  uint64
	changes     uint64 // writes included
	snapSize    int
	journalSize int
}

// minJournal is the journal size below which no snapshot is rewritten.
const minJournal = 1 << 20

func journalPath(path string) string { return path + ".journal" }

// LoadFile replaces the simulator's resources with the estate in the file,
// and the journal beside it when the file is a snapshot Save wrote.
func (s *Server) LoadFile(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("open estate: %w", err)
	}
	var f estateFile
	if err := json.Unmarshal(b, &f); err != nil {
		return fmt.Errorf("decode estate: %w", err)
	}
	if f.Generation != 0 {
		j, err := os.ReadFile(journalPath(path))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("read estate journal: %w", err)
		}
		if err := f.applyJournal(j); err != nil {
			return err
		}
	}
	return s.replaceEstate(f)
}

// replaceEstate makes f the simulator's resources.
func (s *Server) replaceEstate(f estateFile) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, err := buildState(f, s.newEtag)
	if err != nil {
		return err
	}
	s.st = st
	s.cache = saveCache{}
	return nil
}

// applyJournal brings the snapshot's resources up to date with the journal
// lines of its generation. A torn last line (a crash mid-append) ends it.
func (f *estateFile) applyJournal(journal []byte) error {
	index := make(map[string]int, len(f.Resources))
	for i, raw := range f.Resources {
		var head struct {
			ID string `json:"id"`
		}
		if err := json.Unmarshal(raw, &head); err != nil {
			return fmt.Errorf("estate: decode resource: %w", err)
		}
		index[strings.ToLower(head.ID)] = i
	}
	for len(journal) > 0 {
		line, rest, _ := bytes.Cut(journal, []byte("\n"))
		journal = rest
		var l journalLine
		if json.Unmarshal(line, &l) != nil {
			break
		}
		if l.Generation != f.Generation {
			continue
		}
		k := strings.ToLower(l.ID)
		i, ok := index[k]
		switch {
		case len(l.Resource) == 0 || string(l.Resource) == "null":
			if ok {
				f.Resources[i] = nil
				delete(index, k)
			}
		case ok:
			f.Resources[i] = l.Resource
		default:
			index[k] = len(f.Resources)
			f.Resources = append(f.Resources, l.Resource)
		}
	}
	f.Resources = slices.DeleteFunc(f.Resources, func(r json.RawMessage) bool { return r == nil })
	return nil
}

// Load replaces the simulator's resources with the estate read from r, in
// either of its forms (see testdata/demo-estate.json and Snapshot).
func (s *Server) Load(r io.Reader) error {
	var f estateFile
	if err := json.NewDecoder(r).Decode(&f); err != nil {
		return fmt.Errorf("decode estate: %w", err)
	}
	return s.replaceEstate(f)
}

// Snapshot returns the simulator's resources as an estate file of raw ARM
// resources, which Load accepts.
func (s *Server) Snapshot() ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var buf bytes.Buffer // s.saveBuf is Save's, under saveMu
	b, err := s.snapshotLocked(&buf, 0, false)
	return bytes.Clone(b), err
}

// Save brings the estate at path up to date: the changes since the last
// save appended to its journal, or a new snapshot written atomically (a
// temporary file renamed over it) when there is none yet or the journal has
// grown large. A crash never leaves half an estate behind. When it returns,
// every write that completed before the call is in the files (written, not
// fsynced: the simulator outlives a process kill, not a power cut).
//
// Concurrent calls are coalesced: OnChange hooks call Save after every write,
// and a caller that waited for another's save finds its change already saved
// when that save looked at the estate after the change, so N concurrent
// writers cost about two saves, not N.
func (s *Server) Save(path string) error {
	want := s.changes.Load()
	s.saveMu.Lock()
	defer s.saveMu.Unlock()
	sv := &s.saved
	if sv.path == path && sv.changes >= want {
		return nil
	}
	s.mu.Lock()
	changes := s.changes.Load()
	if sv.path != path || s.cache.json == nil || sv.journalSize > max(sv.snapSize, minJournal) {
		// Unique across lives, so no journal line of another snapshot matches.
		gen := max(sv.generation+1, uint64(time.Now().UnixNano()))
		b, err := s.snapshotLocked(&s.saveBuf, gen, true)
		s.mu.Unlock()
		if err == nil {
			tmp := path + ".tmp"
			if err = os.WriteFile(tmp, b, 0o600); err == nil {
				err = os.Rename(tmp, path)
			}
			if err != nil {
				err = fmt.Errorf("write estate: %w", err)
			}
		}
		if err == nil {
			// The snapshot on disk is the new generation from here on, even
			// if the journal cannot be started: its old lines do not apply.
			*sv = saveState{path: path, generation: gen, changes: changes, snapSize: len(b)}
			if err = os.WriteFile(journalPath(path), nil, 0o600); err != nil {
				err = fmt.Errorf("start estate journal: %w", err)
			}
		}
		if err != nil {
			s.forgetSaved() // the cache holds what did not reach the disk
			return err
		}
		return nil
	}
	buf := &s.saveBuf
	buf.Reset()
	line := func(id string, b []byte) {
		quoted, _ := json.Marshal(id) // a string always marshals
		fmt.Fprintf(buf, "{\"generation\":%d,\"id\":%s,\"resource\":", sv.generation, quoted)
		buf.Write(b)
		buf.WriteString("}\n")
	}
	err := s.journalLocked(line)
	s.mu.Unlock()
	if err != nil {
		s.forgetSaved()
		return fmt.Errorf("journal estate: %w", err)
	}
	if buf.Len() > 0 {
		f, err := os.OpenFile(journalPath(path), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err == nil {
			_, err = f.Write(buf.Bytes())
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
		if err != nil {
			s.forgetSaved()
			return fmt.Errorf("append to estate journal: %w", err)
		}
	}
	sv.changes = changes
	sv.journalSize += buf.Len()
	return nil
}

// journalLocked passes to line each resource changed since the last save,
// as it is now or null when it was deleted, and updates the cache to match;
// callers hold s.mu.
func (s *Server) journalLocked(line func(id string, b []byte)) error {
	c := &s.cache
	for rk := range c.dirty {
		v, id, ok := s.st.lookup(rk)
		if !ok {
			if _, saved := c.json[rk]; saved {
				delete(c.json, rk)
				line(rk.id, []byte("null"))
			}
			continue
		}
		b, err := json.Marshal(v)
		if err != nil {
			return fmt.Errorf("marshal %s: %w", id, err)
		}
		c.json[rk] = b
		line(id, b)
	}
	clear(c.dirty)
	return nil
}

// forgetSaved drops the cache of what was saved, after a save that did not
// reach the disk: the next Save writes a whole snapshot.
func (s *Server) forgetSaved() {
	s.mu.Lock()
	s.cache = saveCache{}
	s.mu.Unlock()
}
