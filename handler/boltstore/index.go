package boltstore

import (
	"bytes"
	"slices"
	"strings"

	"jitaccess/handler/jit"
)

// indexValue is what the start-time index keeps of a request: the fields
// ScanRequests filters on besides VM and time, so that a listing for one
// status or one person decodes only the requests it returns, however many
// others the file holds. Fields are separated by NUL.
func indexValue(r jit.Request) []byte {
	return []byte(strings.Join([]string{r.Status, r.Requestor, r.SubmittedBy, strings.ToLower(r.Policy)}, "\x00"))
}

// indexPasses reports whether the request whose index value is v may
// match f; when v does not tell (written before the index kept these
// fields), it may.
func indexPasses(v []byte, f jit.RequestFilter) bool {
	if len(v) == 0 {
		return true
	}
	fields := bytes.Split(v, []byte{0})
	if len(f.Statuses) > 0 && !slices.Contains(f.Statuses, string(fields[0])) {
		return false
	}
	if len(fields) != 4 {
		return true // the status only, or a field with a NUL in it
	}
	requestor, submitter, policy := string(fields[1]), string(fields[2]), string(fields[3])
	switch {
	case f.Requestor != "" && requestor != f.Requestor:
		return false
	case f.Party != "" && requestor != f.Party && submitter != f.Party:
		return false
	case f.Policy != "" && policy != strings.ToLower(f.Policy):
		return false
	}
	return true
}
