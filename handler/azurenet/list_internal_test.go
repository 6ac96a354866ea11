package azurenet

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"jitaccess/handler/jit"
)

// TestDecodeNSGPagePauses: a page is decoded NSG by NSG, with a pause every
// pacedNSGs under a paced context, members it does not know skipped, and
// its nextLink returned.
func TestDecodeNSGPagePauses(t *testing.T) {
	var b strings.Builder
	b.WriteString(`{"unknown":{"nested":[1,2,{"x":null}]},"value":[`)
	for i := range 120 {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, `{"id":"nsg-%d","location":"westeurope","properties":{"securityRules":[{"name":"r","properties":{"direction":"Inbound","priority":%d,"access":"Allow","protocol":"Tcp","destinationPortRange":"22","sourceAddressPrefix":"*","destinationAddressPrefix":"*"}}]}}`, i, 100+i)
	}
	b.WriteString(`],"nextLink":"https://example.invalid/next"}`)

	pauses := 0
	ctx := jit.WithPauses(context.Background(), func(context.Context) error { pauses++; return nil })
	var got []leanNSG
	next, err := decodeNSGPage(ctx, []byte(b.String()), func(n leanNSG) { got = append(got, n) })
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 120 || got[119].ID != "nsg-119" || got[7].Properties.SecurityRules[0].Properties.Priority != 107 {
		t.Errorf("decoded %d NSGs, last %+v", len(got), got[len(got)-1])
	}
	if next != "https://example.invalid/next" {
		t.Errorf("nextLink %q", next)
	}
	if pauses != 120/pacedNSGs {
		t.Errorf("%d pauses, want %d", pauses, 120/pacedNSGs)
	}

	// A failing pause ends the decoding with its error.
	stop := errors.New("stop")
	failing := jit.WithPauses(context.Background(), func(context.Context) error { return stop })
	if _, err := decodeNSGPage(failing, []byte(b.String()), func(leanNSG) {}); !errors.Is(err, stop) {
		t.Errorf("failing pause: %v, want its error", err)
	}
}

func TestDecodeNSGPageRejectsMalformed(t *testing.T) {
	for _, body := range []string{``, `[]`, `{"value":{}}`, `{"value":[{"id":1}]}`, `{"value":[`, `{"value":[]`} {
		if _, err := decodeNSGPage(context.Background(), []byte(body), func(leanNSG) {}); err == nil {
			t.Errorf("%q decoded without error", body)
		}
	}
}
