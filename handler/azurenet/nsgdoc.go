package azurenet

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/streaming"

	"jitaccess/handler/jit"
)

// The driver reads and writes whole NSGs through the ARM pipeline with its
// own lean JSON types rather than the armnetwork models. The models decode
// every property of the NSG (default rules, NIC and subnet references) in
// two passes through maps, encode the whole NSG back through maps, and the
// SDK's poller decodes the PUT's answer once more into generic maps: at one
// NSG write per grant, that was most of the worker's CPU. The lean types
// keep each rule as the bytes read, so someone else's rule goes back
// exactly as ARM sent it, and decode only what priority choice and the
// idempotency check need.

// wireNSG is an NSG as the driver reads it and writes it back. A PUT
// replaces the resource, so it carries every member that can be written at
// nsgAPIVersion (location, tags, security rules, flushConnection); the
// read-only ones (default rules, provisioning state, references) are left
// out, as ARM ignores them.
type wireNSG struct {
	ID         string          `json:"id,omitempty"`
	Location   string          `json:"location,omitempty"`
	Tags       json.RawMessage `json:"tags,omitempty"`
	Etag       string          `json:"etag,omitempty"`
	Properties struct {
		SecurityRules   []json.RawMessage `json:"securityRules"`
		FlushConnection json.RawMessage   `json:"flushConnection,omitempty"`
	} `json:"properties"`
}

// leanRule is what the driver reads of a security rule.
type leanRule struct {
	Name       string          `json:"name"`
	Properties *leanRuleFields `json:"properties"`
}

type leanRuleFields struct {
	Description                string   `json:"description"`
	Access                     string   `json:"access"`
	Direction                  string   `json:"direction"`
	Protocol                   string   `json:"protocol"`
	Priority                   int      `json:"priority"`
	SourcePortRange            string   `json:"sourcePortRange"`
	SourcePortRanges           []string `json:"sourcePortRanges"`
	DestinationPortRange       string   `json:"destinationPortRange"`
	DestinationPortRanges      []string `json:"destinationPortRanges"`
	SourceAddressPrefix        string   `json:"sourceAddressPrefix"`
	SourceAddressPrefixes      []string `json:"sourceAddressPrefixes"`
	DestinationAddressPrefix   string   `json:"destinationAddressPrefix"`
	DestinationAddressPrefixes []string `json:"destinationAddressPrefixes"`
	SourceASGs                 []asgRef `json:"sourceApplicationSecurityGroups"`
	DestinationASGs            []asgRef `json:"destinationApplicationSecurityGroups"`
}

// asgRef is a reference to an application security group.
type asgRef struct {
	ID string `json:"id"`
}

func asgIDs(refs []asgRef) []string {
	var out []string
	for _, r := range refs {
		if r.ID != "" {
			out = append(out, r.ID)
		}
	}
	return out
}

// inbound reports whether the rule is an inbound rule with properties.
func (r leanRule) inbound() bool {
	return r.Properties != nil && strings.EqualFold(r.Properties.Direction, "Inbound")
}

// rule is the rule as the jit package sees it; r must have properties.
func (r leanRule) rule() jit.SecurityRule {
	p := r.Properties
	return jit.SecurityRule{
		Name: r.Name, Description: p.Description, Access: p.Access, Protocol: p.Protocol, Priority: p.Priority,
		SourcePorts:     joined(p.SourcePortRange, p.SourcePortRanges),
		Ports:           joined(p.DestinationPortRange, p.DestinationPortRanges),
		Sources:         joined(p.SourceAddressPrefix, p.SourceAddressPrefixes),
		Destinations:    joined(p.DestinationAddressPrefix, p.DestinationAddressPrefixes),
		SourceASGs:      asgIDs(p.SourceASGs),
		DestinationASGs: asgIDs(p.DestinationASGs),
	}
}

// sameRule reports whether have already is want in every property a rule
// has but its priority (which the driver chooses): direction (inbound),
// protocol, source and destination ports and prefixes, application
// security groups, access and description. ARM's singular and plural
// forms, order and letter case do not count.
func sameRule(have leanRule, want jit.SecurityRule) bool {
	if !have.inbound() {
		return false
	}
	got := have.rule()
	return strings.EqualFold(got.Access, want.Access) &&
		strings.EqualFold(got.Protocol, want.Protocol) &&
		got.Description == want.Description &&
		sameSet(got.SourcePorts, sourcePorts(want)) &&
		sameSet(got.Ports, want.Ports) &&
		sameSet(got.Sources, want.Sources) &&
		sameSet(got.Destinations, want.Destinations) &&
		sameSet(got.SourceASGs, want.SourceASGs) &&
		sameSet(got.DestinationASGs, want.DestinationASGs)
}

// sourcePorts is what the driver writes as a rule's source port ranges:
// its own, or "*" when it names none.
func sourcePorts(rule jit.SecurityRule) []string {
	if len(rule.SourcePorts) == 0 {
		return []string{"*"}
	}
	return rule.SourcePorts
}

// inboundRules is the NSG's inbound rules by priority.
func inboundRules(rules []leanRule) []jit.SecurityRule {
	var out []jit.SecurityRule
	for _, r := range rules {
		if r.inbound() {
			out = append(out, r.rule())
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Priority < out[j].Priority })
	return out
}

// nsgDoc is an NSG as read: the members written back, and each rule both
// decoded and as the bytes read (rules[i] is doc.Properties.SecurityRules[i]).
type nsgDoc struct {
	wire  wireNSG
	rules []leanRule
}

// nsgURL is the ARM URL of the NSG r at nsgAPIVersion.
func nsgURL(endpoint string, r ref) string {
	return runtime.JoinPaths(endpoint, "/subscriptions/"+url.PathEscape(r.sub)+"/resourceGroups/"+url.PathEscape(r.rg)+
		"/providers/Microsoft.Network/networkSecurityGroups/"+url.PathEscape(r.name)) + "?api-version=" + nsgAPIVersion
}

// readNSG GETs the NSG r. ARM's error answers come back as
// *azcore.ResponseError, as from the SDK's clients.
func (d *Driver) readNSG(ctx context.Context, r ref) (*nsgDoc, error) {
	c, err := d.armClient()
	if err != nil {
		return nil, err
	}
	body, err := getJSON(ctx, c.Pipeline(), nsgURL(c.Endpoint(), r))
	if err != nil {
		return nil, err
	}
	return decodeNSG(body)
}

// getJSON GETs u through pl and returns the body of its 200 answer; any
// other answer is an *azcore.ResponseError.
func getJSON(ctx context.Context, pl runtime.Pipeline, u string) ([]byte, error) {
	req, err := runtime.NewRequest(ctx, http.MethodGet, u)
	if err != nil {
		return nil, err
	}
	req.Raw().Header.Set("Accept", "application/json")
	resp, err := pl.Do(req)
	if err != nil {
		return nil, err
	}
	if !runtime.HasStatusCode(resp, http.StatusOK) {
		return nil, runtime.NewResponseError(resp)
	}
	return runtime.Payload(resp)
}

// decodeNSG decodes an NSG as ARM answers it.
func decodeNSG(body []byte) (*nsgDoc, error) {
	doc := &nsgDoc{}
	if err := json.Unmarshal(body, &doc.wire); err != nil {
		return nil, fmt.Errorf("decode network security group: %w", err)
	}
	doc.rules = make([]leanRule, len(doc.wire.Properties.SecurityRules))
	for i, raw := range doc.wire.Properties.SecurityRules {
		if err := json.Unmarshal(raw, &doc.rules[i]); err != nil {
			return nil, fmt.Errorf("decode security rule %d of network security group: %w", i, err)
		}
	}
	return doc, nil
}

// writeNSG PUTs the NSG r with rules in place of the rules it was read
// with, conditional on the etag it was read with, and waits for ARM's
// operation to finish.
func (d *Driver) writeNSG(ctx context.Context, r ref, doc *nsgDoc, rules []json.RawMessage) error {
	c, err := d.armClient()
	if err != nil {
		return err
	}
	w := doc.wire
	w.Properties.SecurityRules = rules
	body, err := json.Marshal(&w)
	if err != nil {
		return err
	}
	req, err := runtime.NewRequest(ctx, http.MethodPut, nsgURL(c.Endpoint(), r))
	if err != nil {
		return err
	}
	req.Raw().Header.Set("Accept", "application/json")
	if w.Etag != "" {
		req.Raw().Header.Set("If-Match", w.Etag)
	}
	if err := req.SetBody(streaming.NopCloser(bytes.NewReader(body)), "application/json"); err != nil {
		return err
	}
	resp, err := c.Pipeline().Do(req)
	if err != nil {
		return err
	}
	if !runtime.HasStatusCode(resp, http.StatusOK, http.StatusCreated) {
		return runtime.NewResponseError(resp)
	}
	return d.awaitOperation(ctx, c.Pipeline(), resp)
}

// awaitOperation follows the long-running operation a PUT answered with
// resp until it ends, through its Azure-AsyncOperation URL: a first poll
// at once, then every PollFrequency or as the poll's Retry-After asks. It
// makes no final read of the resource: the driver knows what it wrote. A
// failed or cancelled operation is an lroError carrying ARM's error code.
func (d *Driver) awaitOperation(ctx context.Context, pl runtime.Pipeline, resp *http.Response) error {
	var answer struct {
		Properties struct {
			ProvisioningState string `json:"provisioningState"`
		} `json:"properties"`
	}
	body, err := runtime.Payload(resp)
	if err != nil {
		return err
	}
	if len(bytes.TrimSpace(body)) > 0 {
		if err := json.Unmarshal(body, &answer); err != nil {
			return fmt.Errorf("decode network security group write answer: %w", err)
		}
	}
	state := answer.Properties.ProvisioningState
	asyncURL := resp.Header.Get("Azure-AsyncOperation")
	switch {
	case strings.EqualFold(state, "Failed"), strings.EqualFold(state, "Canceled"):
		return lroError{fmt.Errorf("the write ended %s", state)}
	case strings.EqualFold(state, "Succeeded"), asyncURL == "" && state == "":
		return nil
	case asyncURL == "":
		// Still in progress with nothing to follow: not known to be done,
		// so the caller tries again (the write is idempotent).
		return lroError{fmt.Errorf("the write is %s and ARM gave no operation to follow", state)}
	}
	if u, err := url.Parse(asyncURL); err != nil || !u.IsAbs() {
		return lroError{fmt.Errorf("ARM answered with an invalid operation URL %q", asyncURL)}
	}
	// The first poll waits what the PUT's answer asks (Retry-After) or, if
	// longer, how long this driver's recent writes took: a poll while the
	// operation surely still runs only spends the subscription's read
	// budget (every poll is a read), which bounds a burst of writes as
	// much as the write budget does.
	started := time.Now()
	first := min(max(retryAfter(resp), d.opTime.typical()), maxFirstPoll)
	if err := jit.Sleep(ctx, first); err != nil {
		return err
	}
	for polls := 1; ; polls++ {
		status, resp, err := pollOperation(ctx, pl, asyncURL)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return lroError{err}
		}
		switch {
		case strings.EqualFold(status, "Succeeded"):
			// An operation the first poll finds done ended within the
			// wait, as far as the driver can tell: that wait is what it
			// learns, not the wait plus the poll's round trip, which is
			// no part of the operation. With the round trip learnt too,
			// the estimate could not fall below ten round trips (typical
			// takes 0.9 of it, each write added a round trip back), so
			// where operations end at once, as the simulator's do, every
			// write waited that long for nothing, more under load.
			took := time.Since(started)
			if polls == 1 {
				took = first
			}
			d.opTime.observe(took)
			return nil
		case strings.EqualFold(status, "Failed"), strings.EqualFold(status, "Canceled"):
			return lroError{runtime.NewResponseError(resp)}
		}
		wait := d.cfg.PollFrequency
		if ra := retryAfter(resp); ra > 0 {
			wait = ra
		}
		if err := jit.Sleep(ctx, wait); err != nil {
			return err
		}
	}
}

// maxFirstPoll bounds the wait before an operation's first poll.
const maxFirstPoll = 30 * time.Second

// opTimer keeps a moving average of how long this driver's NSG writes took
// from their PUT to their operation's end.
type opTimer struct {
	mu  sync.Mutex
	avg time.Duration
	n   int
}

// observe adds one operation's duration.
func (t *opTimer) observe(d time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.n < 8 {
		t.n++
	}
	t.avg += (d - t.avg) / time.Duration(t.n)
}

// typical is the moving average, a little under it so that an operation
// of the usual length is found done by the first poll more often than
// not without waiting long past its end.
func (t *opTimer) typical() time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.avg * 9 / 10
}

// pollOperation reads an Azure-AsyncOperation URL once: the operation's
// status, and the answer (for ARM's error code when it failed).
func pollOperation(ctx context.Context, pl runtime.Pipeline, asyncURL string) (string, *http.Response, error) {
	req, err := runtime.NewRequest(ctx, http.MethodGet, asyncURL)
	if err != nil {
		return "", nil, err
	}
	resp, err := pl.Do(req)
	if err != nil {
		return "", nil, err
	}
	if !runtime.HasStatusCode(resp, http.StatusOK) {
		return "", nil, runtime.NewResponseError(resp)
	}
	body, err := runtime.Payload(resp)
	if err != nil {
		return "", nil, err
	}
	var op struct {
		Status string `json:"status"`
	}
	if err := json.Unmarshal(body, &op); err != nil {
		return "", nil, fmt.Errorf("decode operation status: %w", err)
	}
	return op.Status, resp, nil
}

// newRuleJSON is the body of a managed rule as the driver writes it.
func newRuleJSON(rule jit.SecurityRule, priority int32) (json.RawMessage, error) {
	sr := toARM(rule, priority)
	sr.Name = ptr(rule.Name)
	return json.Marshal(&sr)
}
