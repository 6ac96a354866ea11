package storetest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"jitaccess/handler/jit"
)

// denyRules returns n deny rules of the deployment that together list ips
// destination addresses, as a VM-rich NSG has them.
func denyRules(tag string, n, ips int) []jit.SecurityRule {
	rules := make([]jit.SecurityRule, n)
	for i := range rules {
		rules[i] = jit.SecurityRule{
			Name:        fmt.Sprintf("jit-deny-%s-%d", tag, i),
			Description: "jitaccess deny ünïcödé",
			Access:      jit.AccessDeny,
			Protocol:    "*",
			Priority:    3000 + i,
			SourcePorts: []string{"*"},
			Ports:       []string{"22", "3389", "5985-5986"},
			Sources:     []string{"*"},
		}
	}
	for i := range ips {
		r := &rules[i%n]
		r.Destinations = append(r.Destinations, fmt.Sprintf("10.%d.%d.%d", i/65536, i/256%256, i%256))
	}
	return rules
}

func aheadRules(n int) []jit.SecurityRule {
	var rules []jit.SecurityRule
	for i := range n {
		rules = append(rules, jit.SecurityRule{
			Name: fmt.Sprintf("allow-%d", i), Access: jit.AccessAllow, Protocol: "Tcp", Priority: 100 + i,
			Ports: []string{"22"}, Sources: []string{"Internet"}, Destinations: []string{"*"},
			SourceASGs: []string{nsgSubnet + "/asg"},
		})
	}
	return rules
}

// listStates returns the stored states sorted by lower-case id: the order
// of ListNSGStates is not part of the contract.
func listStates(t *testing.T, s jit.Store) []jit.NSGState {
	t.Helper()
	sts, err := s.ListNSGStates(context.Background())
	if err != nil {
		t.Fatalf("ListNSGStates: %v", err)
	}
	slices.SortFunc(sts, func(a, b jit.NSGState) int { return strings.Compare(strings.ToLower(a.ID), strings.ToLower(b.ID)) })
	return sts
}

func putState(t *testing.T, s jit.Store, st jit.NSGState) jit.NSGState {
	t.Helper()
	prev, err := s.PutNSGState(context.Background(), st)
	if err != nil {
		t.Fatalf("PutNSGState(%s): %v", st.ID, err)
	}
	return prev
}

func testNSGStateRoundTrip(t *testing.T, s jit.Store) {
	if sts := listStates(t, s); len(sts) != 0 {
		t.Fatalf("ListNSGStates on an empty store = %d states, want none", len(sts))
	}
	// 3,000 addresses: more than any one string property of Table
	// Storage holds.
	big := jit.NSGState{
		ID: nsgNIC, SeenAt: base, Deny: denyRules("big", 4, 3000), Ahead: aheadRules(jit.MaxAhead),
		Error: "ARM said: 429 \"Too Many Requests\"\n", ErrorAt: base.Add(time.Minute),
	}
	missing := jit.NSGState{ID: nsgSubnet, SeenAt: base.Add(time.Second), Missing: true}
	if prev := putState(t, s, big); !reflect.DeepEqual(prev, jit.NSGState{}) {
		t.Errorf("PutNSGState of a new NSG returned %+v as the state before, want none", prev)
	}
	putState(t, s, missing)
	sts := listStates(t, s)
	if len(sts) != 2 {
		t.Fatalf("ListNSGStates = %d states, want 2", len(sts))
	}
	assertEqual(t, "big NSG state", sts[0], big)
	assertEqual(t, "missing NSG state", sts[1], missing)
	assertUTC(t, "NSG state", sts[0])
	if !sts[0].Failing() {
		t.Errorf("state with ErrorAt after SeenAt is not failing")
	}

	if ps, err := s.ListPolicies(context.Background()); err != nil || len(ps) != 0 {
		t.Errorf("ListPolicies after storing NSG states = %d policies, %v; want none", len(ps), err)
	}
	_, err := s.PutNSGState(context.Background(), jit.NSGState{SeenAt: base})
	assertCode(t, "PutNSGState without id", err, jit.EINVALID)
}

// testNSGStateMerge puts parts of one NSG's state in turn; each step says
// what the stored state must then be.
func testNSGStateMerge(t *testing.T, s jit.Store) {
	at := func(minutes int) time.Time { return base.Add(time.Duration(minutes) * time.Minute) }
	seen := func(minutes int, tag string) jit.NSGState {
		return jit.NSGState{ID: nsgNIC, SeenAt: at(minutes), Deny: denyRules(tag, 1, 2)}
	}
	failed := func(minutes int, msg string) jit.NSGState {
		return jit.NSGState{ID: nsgNIC, Error: msg, ErrorAt: at(minutes)}
	}
	both := func(seenAt int, tag string, errAt int, msg string) jit.NSGState {
		st := seen(seenAt, tag)
		st.Error, st.ErrorAt = msg, at(errAt)
		return st
	}
	steps := []struct {
		name string
		put  jit.NSGState
		want jit.NSGState
	}{
		{"first seen", seen(10, "a"), seen(10, "a")},
		{"older seen part is ignored", seen(5, "old"), seen(10, "a")},
		{"newer seen part replaces", seen(20, "b"), seen(20, "b")},
		{"same time: the new one wins", seen(20, "c"), seen(20, "c")},
		{"a failure keeps the seen part", failed(30, "boom"), both(20, "c", 30, "boom")},
		{"a seen part keeps the failure", seen(25, "d"), both(25, "d", 30, "boom")},
		{"an older failure is ignored", failed(1, "stale"), both(25, "d", 30, "boom")},
		{"failure at the same time: the new one wins", failed(30, "bang"), both(25, "d", 30, "bang")},
		{"both parts, one older", both(40, "e", 2, "older"), both(40, "e", 30, "bang")},
		{"missing NSG", jit.NSGState{ID: nsgNIC, SeenAt: at(50), Missing: true}, jit.NSGState{ID: nsgNIC, SeenAt: at(50), Missing: true, Error: "bang", ErrorAt: at(30)}},
	}
	var before jit.NSGState // what each write finds stored, and returns
	for _, step := range steps {
		assertEqual(t, step.name+": the state before", putState(t, s, step.put), before)
		before = step.want
		sts := listStates(t, s)
		if len(sts) != 1 {
			t.Fatalf("%s: ListNSGStates = %d states, want 1", step.name, len(sts))
		}
		assertEqual(t, step.name, sts[0], step.want)
	}
}

// testNSGStateIDCase: NSG ids are ARM ids, whose case does not matter. The
// state keeps the id as its first writer spelled it.
func testNSGStateIDCase(t *testing.T, s jit.Store) {
	putState(t, s, jit.NSGState{ID: nsgNIC, SeenAt: base, Deny: denyRules("first", 1, 1)})
	newer := jit.NSGState{ID: strings.ToLower(nsgNIC), SeenAt: base.Add(time.Second), Deny: denyRules("second", 1, 1)}
	putState(t, s, newer)
	putState(t, s, jit.NSGState{ID: strings.ToUpper(nsgNIC), Error: "boom", ErrorAt: base.Add(time.Hour)})
	sts := listStates(t, s)
	if len(sts) != 1 {
		t.Fatalf("ListNSGStates after writes in three cases = %d states, want 1", len(sts))
	}
	want := newer
	want.ID = nsgNIC
	want.Error, want.ErrorAt = "boom", base.Add(time.Hour)
	assertEqual(t, "NSG state written in three cases", sts[0], want)
}

// testNSGStateConcurrent has many writers put parts of one NSG's state at
// once, each round of writes later than the one before, in shuffled order
// within a round, so that the latest parts race with nearly as late ones.
// The state must end with the latest of each part.
func testNSGStateConcurrent(t *testing.T, s jit.Store) {
	const workers, rounds = 16, 8
	// at[k][w] orders the writes of round k: worker w's seen part and
	// failure are at seconds at[k][w] and at[k][w]+1 of round k.
	var at [rounds][]int
	for k := range at {
		at[k] = rand.Perm(workers)
	}
	when := func(k, w int) time.Time { return base.Add(time.Duration(k*workers*2+at[k][w]*2) * time.Second) }
	write := func(k, w int) jit.NSGState {
		st := jit.NSGState{ID: nsgNIC}
		if w%2 == 1 {
			st.ID = strings.ToLower(nsgNIC)
		}
		if (k+w)%3 != 2 {
			st.SeenAt, st.Deny = when(k, w), denyRules(fmt.Sprintf("%d-%d", k, w), 2, 50)
		}
		if (k+w)%3 != 0 {
			st.Error, st.ErrorAt = fmt.Sprintf("failure %d-%d", k, w), when(k, w).Add(time.Second)
		}
		return st
	}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for k := range rounds {
				if _, err := s.PutNSGState(context.Background(), write(k, w)); err != nil {
					t.Errorf("PutNSGState: %v", err)
				}
			}
		})
	}
	wg.Wait()
	var want jit.NSGState
	for k := range rounds {
		for w := range workers {
			want = want.Merge(write(k, w))
		}
	}
	sts := listStates(t, s)
	if len(sts) != 1 {
		t.Fatalf("ListNSGStates = %d states, want 1", len(sts))
	}
	if !strings.EqualFold(sts[0].ID, nsgNIC) {
		t.Errorf("state id %q, want %q in some case", sts[0].ID, nsgNIC)
	}
	want.ID = sts[0].ID // either spelling may have been first
	assertEqual(t, "state after concurrent writes", sts[0], want)
}
