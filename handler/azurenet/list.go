package azurenet

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"

	"jitaccess/handler/jit"
)

// nsgAPIVersion is the Microsoft.Network API version the lean NSG list asks
// for: the one the armnetwork module in go.mod uses.
const nsgAPIVersion = "2025-05-01"

// leanNSGPage is a page of ARM's NSG list with only what the sweep reads.
// The SDK's models decode every property of every NSG (default rules,
// subnet and NIC references, ...) in two passes; a sweep lists every NSG of
// every subscription, so it decodes only ids and inbound rules, in one.
type leanNSGPage struct {
	Value []struct {
		ID         string `json:"id"`
		Properties struct {
			SecurityRules []leanRule `json:"securityRules"`
		} `json:"properties"`
	} `json:"value"`
	NextLink string `json:"nextLink"`
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

// listNSGs lists the NSGs of one subscription, page by page.
func (d *Driver) listNSGs(ctx context.Context, sub string) ([]jit.NSGInfo, error) {
	c, err := d.armClient()
	if err != nil {
		return nil, err
	}
	next := runtime.JoinPaths(c.Endpoint(), "/subscriptions/"+url.PathEscape(sub)+"/providers/Microsoft.Network/networkSecurityGroups") +
		"?api-version=" + nsgAPIVersion
	var out []jit.NSGInfo
	for next != "" {
		req, err := runtime.NewRequest(ctx, http.MethodGet, next)
		if err != nil {
			return nil, err
		}
		req.Raw().Header.Set("Accept", "application/json")
		resp, err := c.Pipeline().Do(req)
		if err != nil {
			return nil, err
		}
		if !runtime.HasStatusCode(resp, http.StatusOK) {
			err := runtime.NewResponseError(resp)
			resp.Body.Close()
			return nil, err
		}
		var page leanNSGPage
		err = json.NewDecoder(resp.Body).Decode(&page)
		resp.Body.Close()
		if err != nil {
			return nil, fmt.Errorf("decode network security group list: %w", err)
		}
		for _, nsg := range page.Value {
			if nsg.ID == "" {
				continue
			}
			out = append(out, jit.NSGInfo{ID: nsg.ID, Rules: inboundRules(nsg.Properties.SecurityRules)})
		}
		next = page.NextLink
	}
	return out, nil
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
