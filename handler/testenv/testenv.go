// Package testenv starts the emulators that adapter tests, the end-to-end
// tests, the Functions host simulator (handler/hostsim) and the benchmark
// program run against (Azurite for Table Storage, the Service Bus AMQP test
// double, a managed-identity token endpoint) as real processes or servers on
// free loopback ports. Each starter comes twice: Launch… returns an error
// and leaves stopping to the caller's Close, for programs; Start… takes a
// testing.TB, fails the test when the emulator cannot start (never a skip)
// and stops it when the test ends. It must not depend on any jitaccess
// package: it is test tooling, never shipped.
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

// FindRepoRoot returns the repository's top directory (where go.mod is),
// searched upwards from the working directory.
func FindRepoRoot() (string, error) {
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
		return "", fmt.Errorf("finding the repository root: %w", rootErr)
	}
	return root, nil
}

// RepoRoot is FindRepoRoot for tests.
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := FindRepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// InstallNodeModules makes sure the npm packages of package-lock.json are
// installed (running `npm ci` once when node_modules is missing) and
// returns the node_modules directory.
func InstallNodeModules() (string, error) {
	dir, err := FindRepoRoot()
	if err != nil {
		return "", err
	}
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
		return "", fmt.Errorf("installing the test emulators: %w", npmErr)
	}
	return nm, nil
}

// NodeModules is InstallNodeModules for tests.
func NodeModules(t testing.TB) string {
	t.Helper()
	nm, err := InstallNodeModules()
	if err != nil {
		t.Fatal(err)
	}
	return nm
}

// FindFreePort returns a loopback TCP port that was free a moment ago.
func FindFreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// FreePort is FindFreePort for tests.
func FreePort(t testing.TB) int {
	t.Helper()
	port, err := FindFreePort()
	if err != nil {
		t.Fatal(err)
	}
	return port
}
