package funcs

import (
	"bytes"
	"encoding/json"
	"testing"

	"jitaccess/handler/servicebus"
	"jitaccess/handler/storetest"
)

// An operation message body as this version sends it (servicebus's golden
// file) reaches the worker as the operation it was sent for, in every form
// the Functions host delivers it: one message, or a batch.
func TestGoldenBodyFromHost(t *testing.T) {
	var body bytes.Buffer
	if err := json.Compact(&body, storetest.ReadGolden(t, "../servicebus/testdata/operation.golden")); err != nil {
		t.Fatal(err)
	}
	want := storetest.SchemaOperation()
	for name, payload := range map[string]string{
		"one message":     `{"Data":{"msg":` + hostText(t, body.String()) + `},"Metadata":{"MessageId":"\"m\"","DeliveryCount":"1"}}`,
		"batch host form": batchInvocation(t, []string{body.String()}, []int{1}, true),
		"batch arrays":    batchInvocation(t, []string{body.String()}, []int{1}, false),
	} {
		t.Run(name, func(t *testing.T) {
			inv, err := parseInvocation([]byte(payload))
			if err != nil {
				t.Fatal(err)
			}
			msgs, err := queueMessages(inv, workerBinding)
			if err != nil || len(msgs) != 1 {
				t.Fatalf("messages %+v, %v; want one", msgs, err)
			}
			got, err := servicebus.DecodeOperation(msgs[0].Body)
			if err != nil || got != want {
				t.Errorf("operation %+v, %v; want %+v", got, err, want)
			}
		})
	}
}
