package testenv

import (
	"strings"
	"testing"
)

func TestStartServiceBus(t *testing.T) {
	d := StartServiceBus(t)
	if d.AMQPPort == 0 || d.HTTPPort == 0 {
		t.Fatalf("ports %d and %d, want both set", d.AMQPPort, d.HTTPPort)
	}
	if cs := d.ConnectionString(); !strings.Contains(cs, "UseDevelopmentEmulator=true") {
		t.Errorf("connection string %q lacks the emulator flag", cs)
	}
	if s := d.State(t); len(s.Queues) != 0 {
		t.Errorf("a new double has queues: %+v", s.Queues)
	}
	d.Reset(t)
}
