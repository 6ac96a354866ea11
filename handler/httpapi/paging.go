package httpapi

import (
	"encoding/base64"
	"encoding/json"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"jitaccess/handler/jit"
)

// Every list answers one page, as ARM does: {"value": [...], "nextLink":
// URL} where nextLink, present only when more follow, is this URL with an
// opaque $skipToken that says where the next page starts. A client that
// wants everything follows nextLink until there is none. A page holds
// `limit` items (or `$top`): a list's default when absent, its maximum at
// most, so no answer grows with the store.
type pageRule struct {
	kind        string // what the tokens of this list point into
	def, max    int
	description string // for error messages: "requests"
}

var (
	requestPages = pageRule{kind: "requests", def: 100, max: 1000, description: "requests"}
	policyPages  = pageRule{kind: "policies", def: 100, max: 1000, description: "policies"}
	vmPages      = pageRule{kind: "vms", def: 100, max: 1000, description: "VMs"}
	// The audit trail streams in constant memory and is read in bulk by
	// reviewers and scripts: its pages may be the largest.
	auditPages = pageRule{kind: "audit", def: 1000, max: 10000, description: "audit events"}
	// A CSV download has no place for a nextLink: it is one larger page.
	auditCSVPages = pageRule{kind: "audit", def: 100000, max: 100000, description: "audit events (CSV)"}
)

// pageToken is what a $skipToken carries: the position of the last item
// of the page before. It is opaque to clients.
type pageToken struct {
	Kind string    `json:"k"`
	Time time.Time `json:"t,omitzero"`
	ID   string    `json:"i"`
}

// page is a list call's page: its size and where it starts.
type page struct {
	rule  pageRule
	size  int
	after pageToken
}

// position is where the page starts, for store listings.
func (p page) position() jit.Position { return jit.Position{Time: p.after.Time, ID: p.after.ID} }

// pageOf reads the page a list call asks for (parsePage).
func pageOf(r *http.Request, rule pageRule) (page, error) {
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return page{}, jit.Errorf(jit.EINVALID, "the query string is not valid: escape %% as %%25 and & inside values as %%26")
	}
	return parsePage(q, rule)
}

// parsePage reads limit (or $top) and $skipToken. Bad values are 400s that
// say what is accepted.
func parsePage(q url.Values, rule pageRule) (page, error) {
	p := page{rule: rule, size: rule.def}
	v, name := q.Get("limit"), "limit"
	if t := q.Get("$top"); t != "" {
		if v != "" {
			return p, jit.Errorf(jit.EINVALID, "give limit or $top, not both")
		}
		v, name = t, "$top"
	}
	if v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > rule.max {
			return p, jit.Errorf(jit.EINVALID, "%s must be a whole number between 1 and %d: a page holds at most %d %s; follow nextLink for more",
				name, rule.max, rule.max, rule.description)
		}
		p.size = n
	}
	if tok := q.Get("$skipToken"); tok != "" {
		t, ok := decodeToken(tok)
		if !ok || t.Kind != rule.kind {
			return p, jit.Errorf(jit.EINVALID, "$skipToken is not one this list gave out: follow the nextLink of the page before as it is, or leave $skipToken out to start from the first page")
		}
		p.after = t
	}
	return p, nil
}

// maxTokenLen bounds a $skipToken: the lists' positions (request ids, VM
// ids, policy names) take a few hundred characters at most.
const maxTokenLen = 2048

func encodeToken(t pageToken) string {
	b, _ := json.Marshal(t)
	return base64.RawURLEncoding.EncodeToString(b)
}

func decodeToken(s string) (pageToken, bool) {
	var t pageToken
	if len(s) > maxTokenLen {
		return t, false
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || json.Unmarshal(b, &t) != nil || t.Kind == "" || len(t.ID) > 1024 {
		return t, false
	}
	return t, true
}

// nextLink is the URL of the page after the one whose last item is at t:
// the request's own URL with $skipToken replaced. Behind a trusted proxy,
// X-Forwarded-Proto and X-Forwarded-Host name the URL the client used.
func (s *Server) nextLink(r *http.Request, t pageToken) string {
	q := r.URL.Query()
	q.Del("$skipToken")
	query := q.Encode()
	if query != "" {
		query += "&"
	}
	query += "$skipToken=" + encodeToken(t)
	scheme, host := "http", r.Host
	if r.TLS != nil {
		scheme = "https"
	}
	if s.peerTrusted(r) {
		if p := r.Header.Get("X-Forwarded-Proto"); p == "https" || p == "http" {
			scheme = p
		}
		if h := r.Header.Get("X-Forwarded-Host"); h != "" && !strings.ContainsAny(h, "/?#@ ,") {
			host = h
		}
	}
	return scheme + "://" + host + r.URL.EscapedPath() + "?" + query
}

func (s *Server) peerTrusted(r *http.Request) bool {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return false
	}
	a, err := netip.ParseAddr(host)
	return err == nil && s.trusted(a.Unmap())
}

// writePage answers a page in ARM's shape, {"value": [...], "nextLink":
// ...}, nextLink only when more follow.
func writePage[T, O any](w http.ResponseWriter, items []T, conv func(T) O, next string) {
	out := make([]O, 0, len(items))
	for _, it := range items {
		out = append(out, conv(it))
	}
	body := map[string]any{"value": out}
	if next != "" {
		body["nextLink"] = next
	}
	writeJSON(w, http.StatusOK, body)
}

// pageByKey returns the page of items (ordered by key) that follow the
// page's token, and whether more follow it.
func pageByKey[T any](items []T, pg page, key func(T) string) ([]T, bool) {
	start := 0
	if pg.after.ID != "" {
		for start < len(items) && key(items[start]) <= pg.after.ID {
			start++
		}
	}
	items = items[start:]
	if len(items) > pg.size {
		return items[:pg.size], true
	}
	return items, false
}
