package azurenet

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"

	"jitaccess/handler/jit"
)

// ApplyRules makes the change c to the NSG nsgID with one read and at most
// one write of the whole NSG, so that everything due on one NSG costs one
// ARM write. Rules the deployment may not change (cfg.Owner.MayChange) go
// back exactly as they were read, whatever their names; see jit.RuleChange
// for the rest. The write carries the NSG's etag in If-Match: when someone
// else wrote the NSG in between (412), the driver reads it again and plans
// the change anew. Nothing to change writes nothing; a missing NSG is
// success (Missing) when there is nothing to put.
func (d *Driver) ApplyRules(ctx context.Context, nsgID string, c jit.RuleChange) (jit.Applied, error) {
	bandsOf := func(c jit.RuleChange) ([]Band, error) {
		bands := make([]Band, len(c.Put))
		for i, rule := range c.Put {
			b, err := d.checkRule(rule)
			if err != nil {
				return nil, err
			}
			bands[i] = b
		}
		return bands, nil
	}
	bands, err := bandsOf(c)
	if err != nil {
		return jit.Applied{}, err
	}
	refresh := c.Refresh
	r, err := nsgRef(nsgID)
	if err != nil {
		return jit.Applied{}, err
	}
	log := d.log.With().Str("nsg", nsgID).Int("put", len(c.Put)).Int("delete", len(c.Delete)).Bool("prune", c.Prune != nil).Logger()
	for attempt := 1; ; attempt++ {
		doc, err := d.readNSG(ctx, r)
		if err != nil {
			if isNotFound(err) {
				if len(c.Put) == 0 {
					log.Debug().Msg("network security group does not exist")
					return jit.Applied{Missing: true}, nil
				}
				return jit.Applied{}, jit.Wrap(jit.ENOTFOUND, err, fmt.Sprintf("network security group %s not found", nsgID))
			}
			if d.isTransient(err) && attempt < d.cfg.MaxAttempts {
				if err := d.backoff(ctx, attempt, err); err != nil {
					return jit.Applied{}, err
				}
				continue
			}
			return jit.Applied{}, classify(err, "read network security group "+nsgID)
		}
		if refresh != nil {
			// What to change is decided after each read of the NSG, so
			// that it is never older than what it is applied to.
			if c, err = refresh(); err != nil {
				return jit.Applied{}, err
			}
			if bands, err = bandsOf(c); err != nil {
				return jit.Applied{}, err
			}
		}
		rules, applied, err := planRules(doc, nsgID, c, bands, d.cfg.Owner)
		if err != nil {
			return jit.Applied{}, err
		}
		if !applied.Wrote() {
			log.Debug().Msg("security rules already up to date")
			return applied, nil
		}
		err = d.writeNSG(ctx, r, doc, rules)
		if err == nil {
			log.Info().Strs("created", applied.Created).Strs("updated", applied.Updated).Strs("removed", applied.Removed).
				Int("rules", len(rules)).Msg("security rules written")
			return applied, nil
		}
		switch {
		case isPreconditionFailed(err) || isPriorityClash(err):
			// Someone else wrote the NSG since we read it: read it again.
			if attempt >= d.cfg.MaxAttempts {
				return jit.Applied{}, jit.Wrap(jit.EUNAVAILABLE, err, "write network security group "+nsgID+": it kept changing concurrently")
			}
			log.Warn().Int("attempt", attempt).Msg("network security group changed concurrently, reading it again")
		case d.isTransient(err):
			if attempt >= d.cfg.MaxAttempts {
				return jit.Applied{}, classify(err, "write network security group "+nsgID)
			}
			log.Warn().Err(err).Int("attempt", attempt).Msg("network security group write failed, retrying")
			if err := d.backoff(ctx, attempt, err); err != nil {
				return jit.Applied{}, err
			}
		default:
			return jit.Applied{}, classify(err, "write network security group "+nsgID)
		}
	}
}

// checkRule validates a rule to put and returns the band it belongs in. A
// rule the deployment would not own once written is a programming error.
func (d *Driver) checkRule(rule jit.SecurityRule) (Band, error) {
	if !strings.HasPrefix(rule.Name, jit.RulePrefix) {
		return Band{}, jit.Errorf(jit.EINVALID, "refusing to write security rule %q: the names of the rules JIT writes start with %q", rule.Name, jit.RulePrefix)
	}
	if marker := d.cfg.Owner.Marker(); !strings.HasPrefix(rule.Description, marker) {
		return Band{}, jit.Errorf(jit.EINVALID, "refusing to write security rule %s: its description must start with this deployment's marker %q", rule.Name, marker)
	}
	if len(rule.Ports) == 0 || len(rule.Sources) == 0 || len(rule.Destinations) == 0 {
		return Band{}, jit.Errorf(jit.EINVALID, "security rule %s needs ports, sources and destinations", rule.Name)
	}
	if len(rule.SourceASGs) > 0 || len(rule.DestinationASGs) > 0 {
		return Band{}, jit.Errorf(jit.EINVALID, "security rule %s names application security groups; the rules JIT writes name addresses only", rule.Name)
	}
	switch rule.Access {
	case jit.AccessAllow:
		return d.cfg.AllowBand, nil
	case jit.AccessDeny:
		return d.cfg.DenyBand, nil
	}
	return Band{}, jit.Errorf(jit.EINVALID, "security rule %s has access %q, want Allow or Deny", rule.Name, rule.Access)
}

// What planRules does with a rule it read.
const (
	keepRule   = -1 // sent back as read
	removeRule = -2 // left out
	// n >= 0: rewritten as c.Put[n]
)

// planRules is the rules of doc after the change c, and what the change
// does. Rules it does not change are the very bytes read, so a foreign rule
// goes back byte-for-byte. A name in both Put and Delete is deleted. A
// rewritten rule keeps its priority when that is an inbound priority in the
// band for its access, else it moves, like a new rule, to the lowest
// priority of its band that no inbound rule kept or written uses.
func planRules(doc *nsgDoc, nsgID string, c jit.RuleChange, bands []Band, owner jit.Owner) ([]json.RawMessage, jit.Applied, error) {
	drop := map[string]bool{}
	for _, name := range c.Delete {
		drop[strings.ToLower(name)] = true
	}
	want := map[string]int{} // lower-case name → index in Put; the last one wins
	for i, rule := range c.Put {
		if !drop[strings.ToLower(rule.Name)] {
			want[strings.ToLower(rule.Name)] = i
		}
	}
	var a jit.Applied
	fate := make([]int, len(doc.rules))
	priority := make([]int, len(doc.rules)) // of rewritten rules; 0: to choose
	found := map[string]bool{}              // Put names that exist
	used := map[int]bool{}                  // inbound priorities of the rules kept or rewritten in place
	for i, sr := range doc.rules {
		name := strings.ToLower(sr.Name)
		may := sr.Properties != nil && owner.MayChange(sr.rule()) || c.Ours != nil && c.Ours(sr.Name)
		j, put := want[name]
		fate[i] = keepRule
		switch {
		case put && !found[name] && !may:
			return nil, jit.Applied{}, jit.Errorf(jit.ECONFLICT,
				"network security group %s already has a security rule named %s that another team or deployment owns (its description does not start with %q); JIT never changes it, so it cannot write its own rule of that name",
				nsgID, sr.Name, owner.Marker())
		case put && !found[name]:
			found[name] = true
			inBand := sr.inbound() && sr.Properties.Priority >= bands[j].Min && sr.Properties.Priority <= bands[j].Max
			if inBand && sameRule(sr, c.Put[j]) {
				break
			}
			fate[i] = j
			if inBand {
				priority[i] = sr.Properties.Priority
			}
			a.Updated = append(a.Updated, c.Put[j].Name)
		case may && (drop[name] || c.Prune != nil && !put && c.Prune(sr.rule())):
			fate[i] = removeRule
			a.Removed = append(a.Removed, sr.Name)
		}
		switch {
		case fate[i] == keepRule && sr.inbound():
			used[sr.Properties.Priority] = true
		case priority[i] > 0:
			used[priority[i]] = true
		}
	}
	// Priorities for the rules that move, then for the new ones.
	for i, j := range fate {
		if j >= 0 && priority[i] == 0 {
			p, ok := freePriority(used, bands[j])
			if !ok {
				return nil, jit.Applied{}, noPriority(nsgID, c.Put[j].Name, bands[j])
			}
			priority[i], used[p] = p, true
		}
	}
	type newRule struct{ put, priority int }
	var added []newRule
	for i, rule := range c.Put {
		name := strings.ToLower(rule.Name)
		if j, ok := want[name]; !ok || j != i || found[name] {
			continue
		}
		p, ok := freePriority(used, bands[i])
		if !ok {
			return nil, jit.Applied{}, noPriority(nsgID, rule.Name, bands[i])
		}
		used[p] = true
		added = append(added, newRule{i, p})
		a.Created = append(a.Created, rule.Name)
	}
	if !a.Wrote() {
		a.Rules = inboundRules(doc.rules)
		return nil, a, nil
	}

	rules := make([]json.RawMessage, 0, len(doc.rules)+len(added))
	write := func(rule jit.SecurityRule, p int) error {
		raw, err := newRuleJSON(rule, int32(p))
		if err != nil {
			return fmt.Errorf("encode security rule %s: %w", rule.Name, err)
		}
		rules = append(rules, raw)
		a.Rules = append(a.Rules, written(rule, p))
		return nil
	}
	for i, sr := range doc.rules {
		switch j := fate[i]; {
		case j == keepRule:
			rules = append(rules, doc.wire.Properties.SecurityRules[i])
			if sr.inbound() {
				a.Rules = append(a.Rules, sr.rule())
			}
		case j >= 0:
			if err := write(c.Put[j], priority[i]); err != nil {
				return nil, jit.Applied{}, err
			}
		}
	}
	for _, n := range added {
		if err := write(c.Put[n.put], n.priority); err != nil {
			return nil, jit.Applied{}, err
		}
	}
	sort.SliceStable(a.Rules, func(i, j int) bool { return a.Rules[i].Priority < a.Rules[j].Priority })
	return rules, a, nil
}

// written is rule as ListRules reads it back once written at priority.
func written(rule jit.SecurityRule, priority int) jit.SecurityRule {
	rule.Priority = priority
	rule.SourcePorts = slices.Clone(sourcePorts(rule))
	rule.Ports = slices.Clone(rule.Ports)
	rule.Sources = slices.Clone(rule.Sources)
	rule.Destinations = slices.Clone(rule.Destinations)
	rule.SourceASGs, rule.DestinationASGs = nil, nil
	return rule
}

func noPriority(nsgID, rule string, band Band) error {
	return jit.Errorf(jit.ECONFLICT, "no free priority between %d and %d for security rule %s in network security group %s", band.Min, band.Max, rule, nsgID)
}

func isPreconditionFailed(err error) bool {
	re := responseError(err)
	return re != nil && re.StatusCode == http.StatusPreconditionFailed
}
