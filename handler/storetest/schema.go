package storetest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"jitaccess/handler/jit"
)

// The stored formats. Every adapter that keeps a jit struct (the stores'
// records, the local queue's records, Service Bus message bodies) has
// golden files in its testdata/ of those records as the current version
// writes them, built from the values below, in which every field is set.
// A test compares what the code writes with the golden file, another
// decodes the golden file and compares with the value, so that a field
// renamed, retagged or dropped fails a test. Golden files are rewritten
// with "go test ./<package> -run Golden -update"; a diff that changes or
// removes a stored name is a format change that old records and queued
// messages will not survive: a stored field is never renamed; add a new
// one and read both.

// schemaTime is the base of the times in the records: UTC, with
// nanoseconds, which both stores keep.
var schemaTime = time.Date(2026, 3, 4, 5, 6, 7, 123456789, time.UTC)

const (
	schemaVM  = "/subscriptions/00000000-0000-0000-0000-00000000000a/resourceGroups/RG-One/providers/Microsoft.Compute/virtualMachines/VM-A"
	schemaNSG = "/subscriptions/00000000-0000-0000-0000-00000000000a/resourceGroups/RG-One/providers/Microsoft.Network/networkSecurityGroups/NSG-NIC"
	schemaASG = "/subscriptions/00000000-0000-0000-0000-00000000000a/resourceGroups/RG-One/providers/Microsoft.Network/applicationSecurityGroups/asg-web"
)

// SchemaPolicy returns a policy with every field set, for golden files.
func SchemaPolicy() jit.Policy {
	approval := func(who string) *jit.Approval {
		return &jit.Approval{Required: true, Approvers: []string{who}, MinApprovals: 1}
	}
	return jit.Policy{
		Name: "Prod",
		VMs: []jit.VMPolicy{{
			ID: schemaVM,
			Ports: []jit.PortRule{{
				Number:         22,
				Protocol:       jit.ProtocolTCP,
				AllowedSources: []string{"203.0.113.0/24"},
				MaxDuration:    3 * time.Hour,
				Approval:       approval("22222222-0000-0000-0000-000000000001"),
			}},
			Name:       "VM-A",
			PrivateIPs: []string{"10.0.0.4"},
			NSGs:       []jit.NSGRef{{ID: schemaNSG, Scope: "nic"}},
		}},
		Approval:   approval("22222222-0000-0000-0000-000000000002"),
		Requesters: []string{"33333333-0000-0000-0000-000000000003"},
		State:      jit.PolicyDeleting,
		ETag:       "policy-etag",
		CreatedAt:  schemaTime,
		UpdatedAt:  schemaTime.Add(time.Hour),
		UpdatedBy:  "alice@example.com",
	}
}

// SchemaRequest returns a request with every field set, for golden files.
func SchemaRequest() jit.Request {
	return jit.Request{
		ID:            "req-1",
		Policy:        "Prod",
		Requestor:     "11111111-2222-3333-4444-555555555555",
		RequestorName: "Alice Ådahl",
		SubmittedBy:   "44444444-0000-0000-0000-000000000004",
		Approval: &jit.RequestApproval{
			MinApprovals: 1,
			Approvers:    []string{"22222222-0000-0000-0000-000000000001"},
			Rules: []jit.ApprovalRule{{
				Approvers:    []string{"22222222-0000-0000-0000-000000000001"},
				MinApprovals: 1,
				ApprovedBy:   []string{"22222222-0000-0000-0000-000000000001"},
			}},
			PendingUntil: schemaTime.Add(time.Hour),
			Decisions: []jit.Decision{{
				By:      "22222222-0000-0000-0000-000000000001",
				ByName:  "Bob",
				At:      schemaTime.Add(time.Minute),
				Approve: true,
				Comment: "ok",
			}},
		},
		Justification: "incident #42: \"disk full\"",
		StartTime:     schemaTime,
		Status:        jit.RequestActive,
		Grants: []jit.Grant{{
			VM:           schemaVM,
			Protocol:     jit.ProtocolTCP,
			Ports:        []int{22},
			Sources:      []string{"203.0.113.7"},
			Destinations: []string{"10.0.0.4"},
			End:          schemaTime.Add(2 * time.Hour),
			Duration:     time.Hour,
			ApprovedEnd:  schemaTime.Add(3 * time.Hour),
			Status:       jit.GrantRevoked,
			StatusReason: jit.ReasonUserRequested,
			ClosedAt:     schemaTime.Add(90 * time.Minute),
			NSGs: []jit.GrantNSG{{
				ID:       schemaNSG,
				State:    jit.RuleClosed,
				OpenedAt: schemaTime.Add(2 * time.Minute),
				ClosedAt: schemaTime.Add(91 * time.Minute),
				Error:    "throttled: 429",
			}},
		}},
		ETag: "request-etag",
	}
}

// SchemaEvent returns an audit event with every field set, for golden files.
func SchemaEvent() jit.AuditEvent {
	return jit.AuditEvent{
		ID:       "ev-1",
		Time:     schemaTime,
		Action:   jit.AuditOpen,
		Actor:    "jitaccess",
		Policy:   "Prod",
		Request:  "req-1",
		VM:       schemaVM,
		NSG:      schemaNSG,
		Protocol: jit.ProtocolTCP,
		Ports:    []int{22},
		Sources:  []string{"203.0.113.7"},
		Result:   jit.ResultFailure,
		Detail:   "ARM said: 409 \"AnotherOperationInProgress\"",
		Notice: &jit.Notification{ID: "ev-1", Event: jit.EventOpened, Time: schemaTime, Request: "req-1", Policy: "Prod",
			Requestor: "11111111-2222-3333-4444-555555555555", Actor: "jitaccess", VMs: []string{schemaVM}, Ports: []int{22},
			Sources: []string{"203.0.113.7"}, End: schemaTime.Add(time.Hour), Detail: "until the patch is in"},
	}
}

// SchemaNSGState returns an NSG state with every field set, for golden files.
func SchemaNSGState() jit.NSGState {
	rule := func(name, access string, priority int) jit.SecurityRule {
		return jit.SecurityRule{
			Name:            name,
			Description:     "[jit:prod] deny",
			Access:          access,
			Protocol:        "Tcp",
			Priority:        priority,
			SourcePorts:     []string{"*"},
			Ports:           []string{"22"},
			Sources:         []string{"*"},
			Destinations:    []string{"10.0.0.4"},
			SourceASGs:      []string{schemaASG},
			DestinationASGs: []string{schemaASG},
		}
	}
	return jit.NSGState{
		ID:      schemaNSG,
		SeenAt:  schemaTime,
		Missing: true,
		Deny:    []jit.SecurityRule{rule("jit-deny-tcp-22", jit.AccessDeny, 4000)},
		Ahead:   []jit.SecurityRule{rule("allow-ssh", jit.AccessAllow, 100)},
		Error:   "precondition failed: 412",
		ErrorAt: schemaTime.Add(time.Minute),
	}
}

// SchemaOperation returns a queue operation with every field set, for
// golden files.
func SchemaOperation() jit.Operation {
	return jit.Operation{
		ID:        "close/req-1/0/nsg-nic",
		Kind:      jit.OpClose,
		RequestID: "req-1",
		Grant:     1,
		NSG:       schemaNSG,
		Due:       schemaTime.Add(2 * time.Hour),
	}
}

// CheckPopulated fails t for each field of v, at any depth, that holds
// its zero value, and each empty slice or map and nil pointer: a golden
// file made from v then holds every stored field, so that dropping one
// shows.
func CheckPopulated(t testing.TB, what string, v any) {
	t.Helper()
	for _, path := range zeroFields(what, reflect.ValueOf(v)) {
		t.Errorf("%s is not set: a golden file made from it would not show that field", path)
	}
}

func zeroFields(path string, v reflect.Value) []string {
	switch {
	case v.Type() == timeType:
		if v.Interface().(time.Time).IsZero() {
			return []string{path}
		}
		return nil
	case v.Kind() == reflect.Struct:
		var out []string
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				out = append(out, zeroFields(path+"."+v.Type().Field(i).Name, v.Field(i))...)
			}
		}
		return out
	case v.Kind() == reflect.Slice || v.Kind() == reflect.Map:
		if v.Len() == 0 {
			return []string{path}
		}
		if v.Kind() == reflect.Map {
			return nil
		}
		var out []string
		for i := range v.Len() {
			out = append(out, zeroFields(fmt.Sprintf("%s[%d]", path, i), v.Index(i))...)
		}
		return out
	case v.Kind() == reflect.Pointer:
		if v.IsNil() {
			return []string{path}
		}
		return zeroFields(path, v.Elem())
	case v.IsZero():
		return []string{path}
	}
	return nil
}

// CheckTagged fails t for each field of v's type, and of every struct type
// reachable from it (but time.Time), that has no json tag naming it: the
// stored names are then written down beside the fields, and renaming a Go
// field leaves the stored name alone.
func CheckTagged(t testing.TB, v any) {
	t.Helper()
	seen := map[reflect.Type]bool{}
	var walk func(typ reflect.Type)
	walk = func(typ reflect.Type) {
		for typ.Kind() == reflect.Pointer || typ.Kind() == reflect.Slice || typ.Kind() == reflect.Array || typ.Kind() == reflect.Map {
			typ = typ.Elem()
		}
		if typ.Kind() != reflect.Struct || typ == timeType || seen[typ] {
			return
		}
		seen[typ] = true
		for f := range typ.Fields() {
			if !f.IsExported() {
				continue
			}
			if name, _, _ := strings.Cut(f.Tag.Get("json"), ","); name == "" {
				t.Errorf("%s.%s has no json tag naming it: stored fields carry their stored name (the Go name for fields stored before tags)", typ, f.Name)
			}
			walk(f.Type)
		}
	}
	walk(reflect.TypeOf(v))
}

// Golden compares got with the golden file at path (relative to the test's
// package), or rewrites the file with got when update is set (the -update
// flag of the calling test).
func Golden(t testing.TB, path string, got []byte, update bool) {
	t.Helper()
	if update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden file (make it with -update): %v", err)
	}
	if bytes.Equal(got, want) {
		return
	}
	g, w := strings.Split(string(got), "\n"), strings.Split(string(want), "\n")
	i := 0
	for i < len(g) && i < len(w) && g[i] == w[i] {
		i++
	}
	// From the first byte that differs, with some context: a payload is
	// one long line.
	j := 0
	if i < len(g) && i < len(w) {
		for j < len(g[i]) && j < len(w[i]) && g[i][j] == w[i][j] {
			j++
		}
	}
	line := func(lines []string) string {
		if i >= len(lines) {
			return "(end of file)"
		}
		l := lines[i]
		if from := max(0, j-60); from > 0 {
			for from < len(l) && !utf8.RuneStart(l[from]) {
				from++
			}
			l = "…" + l[from:]
		}
		if n := 160; len(l) > n {
			for n > 0 && !utf8.RuneStart(l[n]) {
				n--
			}
			l = l[:n] + "…"
		}
		return strings.TrimSpace(l)
	}
	t.Errorf("what this version writes differs from %s from line %d on:\n got  %s\n want %s\n"+
		"A stored field was renamed, retagged, dropped or added. A stored field is never renamed: add a new one and read both. "+
		"If the change is meant, rewrite the file with -update and review its diff.", path, i+1, line(g), line(w))
}

// Differences returns, one per line, the fields in which got and want
// differ, with both values: a golden record read back wrong says which
// stored field it lost.
func Differences(got, want any) []string {
	var out []string
	var walk func(path string, g, w reflect.Value)
	walk = func(path string, g, w reflect.Value) {
		switch {
		case g.Type() == timeType || g.Kind() != reflect.Struct && g.Kind() != reflect.Slice && g.Kind() != reflect.Pointer:
			if !reflect.DeepEqual(g.Interface(), w.Interface()) {
				out = append(out, fmt.Sprintf("%s: got %#v, want %#v", path, g.Interface(), w.Interface()))
			}
		case g.Kind() == reflect.Struct:
			for i := range g.NumField() {
				if g.Type().Field(i).IsExported() {
					walk(path+"."+g.Type().Field(i).Name, g.Field(i), w.Field(i))
				}
			}
		case g.Kind() == reflect.Pointer && (g.IsNil() || w.IsNil()):
			if g.IsNil() != w.IsNil() {
				out = append(out, fmt.Sprintf("%s: got nil %v, want nil %v", path, g.IsNil(), w.IsNil()))
			}
		case g.Kind() == reflect.Pointer:
			walk(path, g.Elem(), w.Elem())
		case g.Len() != w.Len():
			out = append(out, fmt.Sprintf("%s: got %d elements, want %d", path, g.Len(), w.Len()))
		default:
			for i := range g.Len() {
				walk(fmt.Sprintf("%s[%d]", path, i), g.Index(i), w.Index(i))
			}
		}
	}
	walk(reflect.TypeOf(want).String(), reflect.ValueOf(got), reflect.ValueOf(want))
	return out
}

// GoldenJSON is Golden for a JSON record: the file holds it indented, so
// that a change shows as a readable diff.
func GoldenJSON(t testing.TB, path string, record []byte, update bool) {
	t.Helper()
	var out bytes.Buffer
	if err := json.Indent(&out, record, "", "  "); err != nil {
		t.Fatalf("record for %s is not JSON: %v", path, err)
	}
	out.WriteByte('\n')
	Golden(t, path, out.Bytes(), update)
}

// CheckRead fails t when a golden record did not read back as want: err
// is the read's error, and each field that differs is reported.
func CheckRead[T any](t testing.TB, what string, got T, err error, want T) {
	t.Helper()
	if err != nil {
		t.Errorf("%s of a golden record: %v", what, err)
		return
	}
	for _, d := range Differences(got, want) {
		t.Errorf("%s of a golden record: %s", what, d)
	}
}

// ReadGolden returns the golden file at path.
func ReadGolden(t testing.TB, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden file: %v", err)
	}
	return data
}

// SchemaVMUse is a VM's use with every field set.
func SchemaVMUse() jit.VMUse {
	at := time.Date(2026, 3, 4, 5, 6, 7, 890123456, time.UTC)
	return jit.VMUse{VM: "/subscriptions/11111111-1111-1111-1111-111111111111/resourceGroups/Demo/providers/Microsoft.Compute/virtualMachines/vm-1",
		LastAccess: at, LastUser: "alice", Opens: map[int64]int{at.Unix() / 3600: 2}, Recent: []string{"r1", "r2"}}
}
