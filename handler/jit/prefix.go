package jit

import (
	"net/netip"
	"strings"
)

// AnySource is the source prefix that allows every address.
const AnySource = "*"

// CanonicalPrefix validates a source address prefix and returns its canonical
// form: "*" for any source of either IP version (also for "Any" and
// "Internet"), a bare address for a single host (203.0.113.7, 2001:db8::1),
// otherwise a CIDR with its host bits cleared (10.1.2.3/8 becomes
// 10.0.0.0/8, 10.0.0.0/0 becomes 0.0.0.0/0). A /0 is any source of its own
// IP version only: 0.0.0.0/0 allows no IPv6 source and ::/0 no IPv4 one, so
// neither may become "*".
func CanonicalPrefix(s string) (string, error) {
	t := strings.TrimSpace(s)
	switch strings.ToLower(t) {
	case "*", "any", "internet":
		return AnySource, nil
	case "":
		return "", Errorf(EINVALID, "a source address prefix is empty")
	}
	if strings.Contains(t, "/") {
		p, err := netip.ParsePrefix(t)
		if err != nil {
			return "", Errorf(EINVALID, "source %q is not an IP address or CIDR prefix", shorten(s))
		}
		p = p.Masked()
		if p.Addr().Is4In6() {
			return "", Errorf(EINVALID, "source %q is an IPv4-mapped IPv6 prefix: give the IPv4 prefix", shorten(s))
		}
		if p.IsSingleIP() {
			return p.Addr().String(), nil
		}
		return p.String(), nil
	}
	a, err := netip.ParseAddr(t)
	if err != nil || a.Zone() != "" {
		return "", Errorf(EINVALID, "source %q is not an IP address or CIDR prefix", shorten(s))
	}
	return a.Unmap().String(), nil
}

// CanonicalPrefixes canonicalises each prefix, drops duplicates and keeps
// order. A list that contains "*" becomes just "*".
func CanonicalPrefixes(in []string) ([]string, error) {
	if len(in) > 100 {
		return nil, Errorf(EINVALID, "at most 100 source prefixes may be given, not %d", len(in))
	}
	out := make([]string, 0, len(in))
	seen := map[string]bool{}
	for _, s := range in {
		c, err := CanonicalPrefix(s)
		if err != nil {
			return nil, err
		}
		if c == AnySource {
			return []string{AnySource}, nil
		}
		if !seen[c] {
			seen[c] = true
			out = append(out, c)
		}
	}
	return out, nil
}

// PrefixAllowed reports whether the canonical prefix req lies inside one of
// the canonical prefixes allowed. A single address or narrower CIDR inside an
// allowed CIDR of its IP version is allowed (0.0.0.0/0 holds IPv4 sources
// only, ::/0 IPv6 ones); "*" only where "*" is allowed.
func PrefixAllowed(req string, allowed []string) bool {
	for _, a := range allowed {
		if a == AnySource {
			return true
		}
	}
	if req == AnySource {
		return false
	}
	rp, err := toPrefix(req)
	if err != nil {
		return false
	}
	for _, a := range allowed {
		ap, err := toPrefix(a)
		if err == nil && ap.Bits() <= rp.Bits() && ap.Contains(rp.Addr()) {
			return true
		}
	}
	return false
}

func toPrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		return netip.ParsePrefix(s)
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// Shorten returns s as a user message may quote it: at most n bytes of it,
// cut at a character boundary, with "..." when something was cut. Outside
// input can be megabytes long; an error message that echoed it whole would be
// as long.
func Shorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return clip(s, n) + "..."
}

func shorten(s string) string { return Shorten(s, 64) }
