package e2etest

import (
	"os"
	"testing"
)

// TestMain lifts the per-person limits for every handler the tests start
// (local and Functions mode inherit this process's environment): the
// tests of other things make hundreds of changes as one caller. The abuse
// test sets the limits it tests in its own settings, which come later and
// win.
func TestMain(m *testing.M) {
	for name, value := range map[string]string{"JIT_MAX_OPEN_REQUESTS": "off", "JIT_WRITES_PER_MINUTE": "off"} {
		if _, set := os.LookupEnv(name); !set {
			_ = os.Setenv(name, value)
		}
	}
	os.Exit(m.Run())
}
