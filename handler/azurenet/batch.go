package azurenet

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

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
	r, err := nsgRef(nsgID)
	if err != nil {
		return err
	}
	log := d.log.With().Str("nsg", nsgID).Int("put", len(put)).Int("delete", len(del)).Logger()
	for attempt := 1; ; attempt++ {
		doc, err := d.readNSG(ctx, r)
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
		rules, created, changed, err := planRules(doc, put, bands, del)
		if err != nil {
			return jit.Errorf(jit.ECONFLICT, "%v in network security group %s", err, nsgID)
		}
		if changed == 0 {
			log.Debug().Msg("security rules already up to date")
			return nil
		}
		err = d.writeNSG(ctx, r, doc, rules)
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

// planRules is the rules of doc with the managed rules of del removed and
// those of put upserted. Rules it does not change are the very bytes read,
// so a foreign rule goes back byte-for-byte. A name in both put and del is
// deleted. changed counts the rules created, updated or removed.
func planRules(doc *nsgDoc, put []jit.SecurityRule, bands []Band, del []string) (rules []json.RawMessage, created, changed int, err error) {
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
	used := map[int]bool{} // priorities of the inbound rules kept
	rules = make([]json.RawMessage, 0, len(doc.rules)+len(want))
	keep := func(i int) {
		rules = append(rules, doc.wire.Properties.SecurityRules[i])
		if sr := doc.rules[i]; sr.inbound() {
			used[sr.Properties.Priority] = true
		}
	}
	for i, sr := range doc.rules {
		name := strings.ToLower(sr.Name)
		if !strings.HasPrefix(name, jit.RulePrefix) {
			keep(i)
			continue
		}
		if drop[name] {
			changed++
			continue
		}
		j, ok := want[name]
		if !ok || done[name] {
			keep(i)
			continue
		}
		if sr.Properties == nil {
			// Unreadable: written afresh below, at a free priority.
			changed++
			continue
		}
		done[name] = true
		if sameRule(sr, put[j]) {
			keep(i)
			continue
		}
		if err := addRule(&rules, used, put[j], sr.Properties.Priority); err != nil {
			return nil, 0, 0, err
		}
		changed++
	}
	for i, rule := range put {
		name := strings.ToLower(rule.Name)
		if j, ok := want[name]; !ok || j != i || done[name] {
			continue
		}
		done[name] = true
		p, ok := freePriority(used, bands[i])
		if !ok {
			return nil, 0, 0, fmt.Errorf("no free priority between %d and %d for %s", bands[i].Min, bands[i].Max, rule.Name)
		}
		if err := addRule(&rules, used, rule, p); err != nil {
			return nil, 0, 0, err
		}
		created++
		changed++
	}
	return rules, created, changed, nil
}

// addRule appends rule at priority to rules and marks the priority used.
func addRule(rules *[]json.RawMessage, used map[int]bool, rule jit.SecurityRule, priority int) error {
	raw, err := newRuleJSON(rule, int32(priority))
	if err != nil {
		return err
	}
	*rules = append(*rules, raw)
	used[priority] = true
	return nil
}

func isPreconditionFailed(err error) bool {
	re := responseError(err)
	return re != nil && re.StatusCode == http.StatusPreconditionFailed
}
