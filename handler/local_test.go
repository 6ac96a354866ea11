package main

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rs/zerolog"
)

// Every caller of `handler local` is an administrator: it listens beyond
// the loopback only when JIT_LISTEN_ANY says the operator means it. The data
// directory is a file, so a start-up that passes the check stops at once,
// at the next step.
func TestLocalModeListensOnLoopbackUnlessTold(t *testing.T) {
	notADir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notADir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		listen, any string
		refused     bool
	}{
		{"127.0.0.1:0", "", false},
		{"localhost:7071", "", false},
		{"[::1]:7071", "", false},
		{"127.0.0.2:7071", "", false},
		{":7071", "", true},
		{"0.0.0.0:7071", "", true},
		{"[::]:7071", "", true},
		{"192.168.1.20:7071", "", true},
		{"myhost.example:7071", "", true},
		{"0.0.0.0:7071", "true", false},
		{"192.168.1.20:7071", "true", false},
		{"0.0.0.0:7071", "false", true},
	} {
		cfg, err := readSettings(func(k string) string {
			return map[string]string{"JIT_LISTEN": tc.listen, "JIT_LISTEN_ANY": tc.any, "JIT_DATA_DIR": filepath.Join(notADir, "data")}[k]
		})
		if err != nil {
			t.Fatalf("JIT_LISTEN=%s JIT_LISTEN_ANY=%s: %v", tc.listen, tc.any, err)
		}
		err = runLocal(zerolog.Nop(), cfg)
		if err == nil {
			t.Fatalf("JIT_LISTEN=%s: runLocal started in a data directory that is a file", tc.listen)
		}
		refused := strings.Contains(err.Error(), "JIT_LISTEN_ANY")
		if refused != tc.refused {
			t.Errorf("JIT_LISTEN=%s JIT_LISTEN_ANY=%q: runLocal said %q; refused = %v, want %v", tc.listen, tc.any, err, refused, tc.refused)
		}
	}
}

func TestHostIsUs(t *testing.T) {
	loop, all, lan := netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::"), netip.MustParseAddr("192.168.1.20")
	for _, tc := range []struct {
		host string
		own  netip.Addr
		want bool
	}{
		{"127.0.0.1:7071", loop, true},
		{"localhost:7071", loop, true},
		{"[::1]:7071", loop, true},
		{"127.0.0.1:7072", loop, true}, // a forwarded port
		{"127.0.0.1", loop, true},      // no port
		{"rebind.attacker.example:7071", loop, false},
		{"192.168.1.20:7071", loop, false},
		{"192.168.1.20:7071", lan, true},
		{"localhost:7071", lan, true},
		{"10.0.0.9:7071", lan, false},
		{"10.0.0.9:7071", all, true},
		{"[fe80::1]:7071", all, true},
		{"myhost:7071", all, false},
		{"", loop, false},
	} {
		if got := hostIsUs(tc.host, tc.own); got != tc.want {
			t.Errorf("Host %q, listening on %s:7071: %v, want %v", tc.host, tc.own, got, tc.want)
		}
	}
}
