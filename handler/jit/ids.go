package jit

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/hex"
	"regexp"
	"strconv"
	"strings"
)

// VMID is a parsed ARM id of a virtual machine.
type VMID struct {
	Subscription  string
	ResourceGroup string
	Name          string
}

var vmIDPattern = regexp.MustCompile(`(?i)^/subscriptions/([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})/resourcegroups/([-\w._()]{1,90})/providers/microsoft\.compute/virtualmachines/([A-Za-z0-9][-A-Za-z0-9_.]{0,63})$`)

// ParseVMID parses an ARM VM id such as
// /subscriptions/SUB/resourceGroups/RG/providers/Microsoft.Compute/virtualMachines/NAME.
func ParseVMID(s string) (VMID, error) {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			// (?i) would fold Unicode letters (the Kelvin sign into k):
			// ARM ids are ASCII.
			return VMID{}, Errorf(EINVALID, "%q is not an ARM VM id: it contains non-ASCII characters", shorten(s))
		}
	}
	m := vmIDPattern.FindStringSubmatch(s)
	if m == nil {
		return VMID{}, Errorf(EINVALID, "%q is not an ARM VM id: expected /subscriptions/{subscription id}/resourceGroups/{group}/providers/Microsoft.Compute/virtualMachines/{name}", Shorten(s, 200))
	}
	if strings.HasSuffix(m[2], ".") {
		return VMID{}, Errorf(EINVALID, "resource group name %q must not end with a period", m[2])
	}
	return VMID{Subscription: strings.ToLower(m[1]), ResourceGroup: m[2], Name: m[3]}, nil
}

// String returns the canonical spelling of the id.
func (id VMID) String() string {
	return "/subscriptions/" + id.Subscription + "/resourceGroups/" + id.ResourceGroup +
		"/providers/Microsoft.Compute/virtualMachines/" + id.Name
}

// Key is the id in lower case, for comparisons and map keys: ARM ids are
// case-insensitive.
func (id VMID) Key() string { return strings.ToLower(id.String()) }

// SameID reports whether two ARM ids name the same resource.
func SameID(a, b string) bool { return strings.EqualFold(a, b) }

// ResourceName returns the last segment of an ARM id.
func ResourceName(id string) string {
	return id[strings.LastIndexByte(id, '/')+1:]
}

// ShortHash is a short stable digest of an ARM id (case-insensitive), used
// where ids are too long for names and keys.
func ShortHash(id string) string {
	sum := sha256.Sum256([]byte(strings.ToLower(id)))
	return hex.EncodeToString(sum[:5])
}

var idEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// NewRequestID returns an unguessable request id: 128 random bits in 26
// lower-case base32 characters.
func NewRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return idEncoding.EncodeToString(b[:])
}

// ValidRequestID reports whether s has the shape of a request id.
func ValidRequestID(s string) bool {
	if len(s) != 26 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= 'a' && c <= 'z' || c >= '2' && c <= '7') {
			return false
		}
	}
	// The last character carries only 3 bits: the rest must be zero, so
	// each id has exactly one spelling.
	_, err := idEncoding.DecodeString(s)
	return err == nil && idEncoding.EncodeToString(mustDecode(s)) == s
}

func mustDecode(s string) []byte {
	b, _ := idEncoding.DecodeString(s)
	return b
}

func itoa(n int) string { return strconv.Itoa(n) }
