package azurenet

import (
	"context"
	"fmt"
	"net/http"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v9"

	"jitaccess/handler/jit"
)

// ApplyRules upserts the managed rules put and removes the managed rules
// named in del with one read and one write of the whole NSG, so that many
// grants on one NSG cost one ARM write rather than one each. Existing rules
// keep their priority, new ones get the lowest free priorities of their
// band, and every other rule is sent back exactly as it was read. The write
// carries the NSG's etag in If-Match: when someone else wrote the NSG in
// between (412), the driver reads it again and starts over. Nothing to
// change means no write; a missing NSG is success when there is nothing to
// put.
func (d *Driver) ApplyRules(ctx context.Context, nsgID string, put []jit.SecurityRule, del []string) error {
	bands := make([]Band, len(put))
	for i, rule := range put {
		b, err := d.checkRule(rule)
		if err != nil {
			return err
		}
		bands[i] = b
	}
	for _, name := range del {
		if !strings.HasPrefix(name, jit.RulePrefix) {
			return jit.Errorf(jit.EINVALID, "refusing to delete security rule %q: only rules named %q... are managed", name, jit.RulePrefix)
		}
	}
	if len(put) == 0 && len(del) == 0 {
		return nil
	}
	r, c, err := d.nsgClients(nsgID)
	if err != nil {
		return err
	}
	log := d.log.With().Str("nsg", nsgID).Int("put", len(put)).Int("delete", len(del)).Logger()
	for attempt := 1; ; attempt++ {
		resp, err := c.nsgs.Get(ctx, r.rg, r.name, nil)
		if err != nil {
			if isNotFound(err) {
				if len(put) == 0 {
					log.Debug().Msg("network security group already gone")
					return nil
				}
				return jit.Wrap(jit.ENOTFOUND, err, fmt.Sprintf("network security group %s not found", nsgID))
			}
			if d.isTransient(err) && attempt < d.cfg.MaxAttempts {
				if err := d.backoff(ctx, attempt, err); err != nil {
					return err
				}
				continue
			}
			return classify(err, "read network security group "+nsgID)
		}
		nsg := resp.SecurityGroup
		if nsg.Properties == nil {
			nsg.Properties = &armnetwork.SecurityGroupPropertiesFormat{}
		}
		rules, created, changed, err := planRules(nsg.Properties.SecurityRules, put, bands, del)
		if err != nil {
			return jit.Errorf(jit.ECONFLICT, "%v in network security group %s", err, nsgID)
		}
		if changed == 0 {
			log.Debug().Msg("security rules already up to date")
			return nil
		}
		nsg.Properties.SecurityRules = rules
		err = d.writeNSG(ctx, c, r, nsg)
		if err == nil {
			log.Info().Int("created", created).Int("changed", changed).Int("rules", len(rules)).Msg("security rules written")
			return nil
		}
		switch {
		case isPreconditionFailed(err) || isPriorityClash(err):
			// Someone else wrote the NSG since we read it: read it again.
			if attempt >= d.cfg.MaxAttempts {
				return jit.Wrap(jit.EUNAVAILABLE, err, "write network security group "+nsgID+": it kept changing concurrently")
			}
			log.Warn().Int("attempt", attempt).Msg("network security group changed concurrently, reading it again")
		case d.isTransient(err):
			if attempt >= d.cfg.MaxAttempts {
				return classify(err, "write network security group "+nsgID)
			}
			log.Warn().Err(err).Int("attempt", attempt).Msg("network security group write failed, retrying")
			if err := d.backoff(ctx, attempt, err); err != nil {
				return err
			}
		default:
			return classify(err, "write network security group "+nsgID)
		}
	}
}

// checkRule validates a managed rule and returns the band it belongs in.
func (d *Driver) checkRule(rule jit.SecurityRule) (Band, error) {
	if !strings.HasPrefix(rule.Name, jit.RulePrefix) {
		return Band{}, jit.Errorf(jit.EINVALID, "refusing to write security rule %q: only rules named %q... are managed", rule.Name, jit.RulePrefix)
	}
	if len(rule.Ports) == 0 || len(rule.Sources) == 0 || len(rule.Destinations) == 0 {
		return Band{}, jit.Errorf(jit.EINVALID, "security rule %s needs ports, sources and destinations", rule.Name)
	}
	switch rule.Access {
	case jit.AccessAllow:
		return d.cfg.AllowBand, nil
	case jit.AccessDeny:
		return d.cfg.DenyBand, nil
	}
	return Band{}, jit.Errorf(jit.EINVALID, "security rule %s has access %q, want Allow or Deny", rule.Name, rule.Access)
}

// planRules is current with the managed rules of del removed and those of
// put upserted. Rules it does not change are the very values read, so a
// foreign rule goes back byte-for-byte. A name in both put and del is
// deleted. changed counts the rules created, updated or removed.
func planRules(current []*armnetwork.SecurityRule, put []jit.SecurityRule, bands []Band, del []string) (rules []*armnetwork.SecurityRule, created, changed int, err error) {
	drop := map[string]bool{}
	for _, name := range del {
		drop[strings.ToLower(name)] = true
	}
	want := map[string]int{} // lower-case name → index in put; the last one wins
	for i, rule := range put {
		if !drop[strings.ToLower(rule.Name)] {
			want[strings.ToLower(rule.Name)] = i
		}
	}
	done := map[string]bool{}
	rules = make([]*armnetwork.SecurityRule, 0, len(current)+len(want))
	for _, sr := range current {
		name := strings.ToLower(deref(srName(sr)))
		if !strings.HasPrefix(name, jit.RulePrefix) {
			rules = append(rules, sr)
			continue
		}
		if drop[name] {
			changed++
			continue
		}
		i, ok := want[name]
		if !ok || done[name] {
			rules = append(rules, sr)
			continue
		}
		done[name] = true
		if sameRule(sr, put[i]) {
			rules = append(rules, sr)
			continue
		}
		rules = append(rules, namedRule(put[i], deref(sr.Properties.Priority)))
		changed++
	}
	for i, rule := range put {
		name := strings.ToLower(rule.Name)
		if j, ok := want[name]; !ok || j != i || done[name] {
			continue
		}
		done[name] = true
		p, ok := freePriority(rules, bands[i], nil)
		if !ok {
			return nil, 0, 0, fmt.Errorf("no free priority between %d and %d for %s", bands[i].Min, bands[i].Max, rule.Name)
		}
		rules = append(rules, namedRule(rule, p))
		created++
		changed++
	}
	return rules, created, changed, nil
}

func srName(sr *armnetwork.SecurityRule) *string {
	if sr == nil {
		return nil
	}
	return sr.Name
}

func namedRule(rule jit.SecurityRule, priority int32) *armnetwork.SecurityRule {
	sr := toARM(rule, priority)
	sr.Name = ptr(rule.Name)
	return &sr
}

// writeNSG puts the whole NSG, conditional on the etag it was read with.
func (d *Driver) writeNSG(ctx context.Context, c *clients, r ref, nsg armnetwork.SecurityGroup) error {
	// Only the PUT carries If-Match; the polls that follow must not.
	putCtx := ctx
	if etag := deref(nsg.Etag); etag != "" {
		putCtx = runtime.WithHTTPHeader(ctx, http.Header{"If-Match": []string{etag}})
	}
	poller, err := c.nsgs.BeginCreateOrUpdate(putCtx, r.rg, r.name, nsg, nil)
	if err != nil {
		return err
	}
	if err := awaitWrite(ctx, poller, d.cfg.PollFrequency); err != nil {
		return lroError{err}
	}
	return nil
}

func isPreconditionFailed(err error) bool {
	re := responseError(err)
	return re != nil && re.StatusCode == http.StatusPreconditionFailed
}
