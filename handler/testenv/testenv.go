// Package testenv starts the emulators that adapter tests run against
// (Azurite for Table Storage, the Service Bus AMQP test double) as real
// processes on free loopback ports, and stops them when the test ends. It is
// imported by tests only. A test that needs an emulator fails, never skips,
// when the emulator cannot start.
package testenv

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

var (
	rootOnce sync.Once
	root     string
	rootErr  error
	npmOnce  sync.Once
	npmErr   error
)

// RepoRoot returns the repository's top directory (where go.mod is).
func RepoRoot(t testing.TB) string {
	t.Helper()
	rootOnce.Do(func() {
		dir, err := os.Getwd()
		if err != nil {
			rootErr = err
			return
		}
		for {
			if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
				root = dir
				return
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				rootErr = fmt.Errorf("no go.mod above the working directory")
				return
			}
			dir = parent
		}
	})
	if rootErr != nil {
		t.Fatalf("finding the repository root: %v", rootErr)
	}
	return root
}

// NodeModules makes sure the npm packages of package-lock.json are
// installed (running `npm ci` once when node_modules is missing) and
// returns the node_modules directory.
func NodeModules(t testing.TB) string {
	t.Helper()
	dir := RepoRoot(t)
	nm := filepath.Join(dir, "node_modules")
	npmOnce.Do(func() {
		if _, err := os.Stat(filepath.Join(nm, ".package-lock.json")); err == nil {
			return
		}
		cmd := exec.Command("npm", "ci", "--no-audit", "--no-fund")
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			npmErr = fmt.Errorf("npm ci: %v\n%s", err, out)
		}
	})
	if npmErr != nil {
		t.Fatalf("installing the test emulators: %v", npmErr)
	}
	return nm
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("finding a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
