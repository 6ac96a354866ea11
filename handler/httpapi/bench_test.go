package httpapi

import (
	"net/http/httptest"
	"strings"
	"testing"
)

const benchInitiate = `{"virtualMachines":[{"id":"/subscriptions/11111111-1111-1111-1111-111111111111/resourceGroups/bench/providers/Microsoft.Compute/virtualMachines/vm-00042",
 "ports":[{"number":22,"duration":"PT1H","allowedSourceAddressPrefix":"203.0.113.7"},{"number":3389,"endTimeUtc":"2030-01-01T10:00:00Z","allowedSourceAddressPrefixes":["198.51.100.0/28"]}]}],
 "justification":"restart nginx"}`

// BenchmarkParseInitiate is the initiate payload's strict decoding and its
// conversion to the use case's input.
func BenchmarkParseInitiate(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		r := httptest.NewRequest("POST", "/api/v1/policies/bench/initiate", strings.NewReader(benchInitiate))
		r.Header.Set("Content-Type", "application/json")
		var body initiateBody
		if err := decodeStrict(nil, r, DefaultMaxBody, &body); err != nil {
			b.Fatal(err)
		}
		if _, err := body.toInput(); err != nil {
			b.Fatal(err)
		}
	}
}

const benchPolicy = `{"kind":"Basic","properties":{"virtualMachines":[{"id":"/subscriptions/11111111-1111-1111-1111-111111111111/resourceGroups/bench/providers/Microsoft.Compute/virtualMachines/vm-00042",
 "ports":[{"number":22,"protocol":"TCP","allowedSourceAddressPrefix":"*","maxRequestAccessDuration":"PT3H"},
          {"number":3389,"protocol":"TCP","allowedSourceAddressPrefixes":["10.0.0.0/8","203.0.113.0/24"],"maxRequestAccessDuration":"PT1H"}]}]}}`

// BenchmarkParsePolicy is the policy payload's strict decoding and conversion.
func BenchmarkParsePolicy(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		r := httptest.NewRequest("PUT", "/api/v1/policies/bench", strings.NewReader(benchPolicy))
		var body policyBody
		if err := decodeStrict(nil, r, DefaultMaxBody, &body); err != nil {
			b.Fatal(err)
		}
		if _, err := body.toPolicy("bench"); err != nil {
			b.Fatal(err)
		}
	}
}
