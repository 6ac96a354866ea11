package azurenet

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/url"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"

	"jitaccess/handler/jit"
)

// nsgAPIVersion is the Microsoft.Network API version of the lean NSG list,
// reads and writes: the one the armnetwork module in go.mod uses.
const nsgAPIVersion = "2025-05-01"

// leanNSG is an NSG of ARM's NSG list with only what the sweep reads.
// The SDK's models decode every property of every NSG (default rules,
// subnet and NIC references, ...) in two passes; a sweep lists every NSG of
// every subscription, so it decodes only ids and rules, in one.
type leanNSG struct {
	ID         string `json:"id"`
	Properties struct {
		SecurityRules []leanRule `json:"securityRules"`
	} `json:"properties"`
}

// armClient is the subscription-independent ARM client the lean NSG list,
// reads and writes go through: the same credential, options and so retry
// and throttling policy as the SDK's clients.
func (d *Driver) armClient() (*arm.Client, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.raw != nil {
		return d.raw, nil
	}
	c, err := arm.NewClient("jitaccess/azurenet", "v1.0.0", d.cred, &d.opts)
	if err != nil {
		return nil, fmt.Errorf("create ARM client: %w", err)
	}
	d.raw = c
	return c, nil
}

// scanNSGs hands fn the NSGs of one subscription, a page at a time: it
// reads and decodes a page, then calls fn for each of its NSGs, then reads
// the next. An error of fn comes back as it is; a failure to read or
// decode a page is a listError.
func (d *Driver) scanNSGs(ctx context.Context, sub string, fn func(jit.NSGInfo) error) error {
	c, err := d.armClient()
	if err != nil {
		return listError{err}
	}
	next := runtime.JoinPaths(c.Endpoint(), "/subscriptions/"+url.PathEscape(sub)+"/providers/Microsoft.Network/networkSecurityGroups") +
		"?api-version=" + nsgAPIVersion
	var page []jit.NSGInfo
	for next != "" {
		if err := ctx.Err(); err != nil {
			return err
		}
		body, err := getJSON(ctx, c.Pipeline(), next)
		if err != nil {
			return listError{err}
		}
		page = page[:0]
		if next, err = decodeNSGPage(body, func(nsg leanNSG) {
			if nsg.ID != "" {
				page = append(page, jit.NSGInfo{ID: nsg.ID, Rules: inboundRules(nsg.Properties.SecurityRules)})
			}
		}); err != nil {
			return listError{err}
		}
		for _, n := range page {
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := fn(n); err != nil {
				return err
			}
		}
	}
	return nil
}

// listError is a failure to read or decode a page of an NSG list, as
// opposed to an error of the caller's fn.
type listError struct{ err error }

func (e listError) Error() string { return e.err.Error() }
func (e listError) Unwrap() error { return e.err }

// decodeNSGPage decodes one page of ARM's NSG list NSG by NSG, handing each
// to fn, and returns its nextLink.
func decodeNSGPage(body []byte, fn func(leanNSG)) (next string, err error) {
	fail := func(err error) (string, error) {
		return "", fmt.Errorf("decode network security group list: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := expectDelim(dec, '{'); err != nil {
		return fail(err)
	}
	for dec.More() {
		key, err := dec.Token()
		if err != nil {
			return fail(err)
		}
		switch key {
		case "value":
			if err := expectDelim(dec, '['); err != nil {
				return fail(err)
			}
			for dec.More() {
				var nsg leanNSG
				if err := dec.Decode(&nsg); err != nil {
					return fail(err)
				}
				fn(nsg)
			}
			if err := expectDelim(dec, ']'); err != nil {
				return fail(err)
			}
		case "nextLink":
			if err := dec.Decode(&next); err != nil {
				return fail(err)
			}
		default:
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil {
				return fail(err)
			}
		}
	}
	if err := expectDelim(dec, '}'); err != nil {
		return fail(err)
	}
	return next, nil
}

// expectDelim reads the next token, which must be the delimiter want.
func expectDelim(dec *json.Decoder, want json.Delim) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	if d, ok := tok.(json.Delim); !ok || d != want {
		return fmt.Errorf("found %v where %q was expected", tok, want)
	}
	return nil
}

// joined is one of ARM's singular-or-plural fields as a list: the singular
// form, then the plural's non-empty values.
func joined(single string, plural []string) []string {
	var out []string
	if single != "" {
		out = append(out, single)
	}
	for _, v := range plural {
		if v != "" {
			out = append(out, v)
		}
	}
	return out
}
