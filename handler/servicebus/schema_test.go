package servicebus_test

import (
	"flag"
	"testing"
	"time"

	"jitaccess/handler/jit"
	"jitaccess/handler/servicebus"
	"jitaccess/handler/storetest"
)

// The golden files in testdata are operation message bodies as this
// version sends them, indented for review (the bodies are compact).
// Messages outlive a deployment (a close is scheduled hours ahead), so the
// next release must read them. Rewrite the files with
//
//	go test ./servicebus -run Golden -update
//
// and read the diff: a name that changes or goes away is a message that an
// upgrade cannot apply.
var update = flag.Bool("update", false, "rewrite the golden files in testdata with what this version writes")

func goldenOperations() map[string]jit.Operation {
	now := storetest.SchemaOperation()
	now.ID, now.Kind, now.Due = "open/req-1/0/nsg-nic", jit.OpOpen, time.Time{}
	return map[string]jit.Operation{
		"testdata/operation.golden":     storetest.SchemaOperation(),
		"testdata/operation-now.golden": now, // due now: no "due"
	}
}

// TestGoldenBodiesWritten compares the bodies EncodeOperation writes with
// their golden files.
func TestGoldenBodiesWritten(t *testing.T) {
	storetest.CheckPopulated(t, "operation", storetest.SchemaOperation())
	for file, op := range goldenOperations() {
		body, err := servicebus.EncodeOperation(op)
		if err != nil {
			t.Fatal(err)
		}
		storetest.GoldenJSON(t, file, body, *update)
	}
}

// TestGoldenBodiesRead decodes the golden bodies as the worker does.
func TestGoldenBodiesRead(t *testing.T) {
	for file, want := range goldenOperations() {
		got, err := servicebus.DecodeOperation(storetest.ReadGolden(t, file))
		if err != nil {
			t.Errorf("%s: %v", file, err)
		} else if got != want {
			t.Errorf("%s reads as %+v, want %+v", file, got, want)
		}
	}
}
