package testenv

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"
)

// Azurite's development account. The key is the one Microsoft publishes
// in Azurite's documentation: it opens nothing but a local emulator.
const (
	AzuriteAccount = "devstoreaccount1"
	AzuriteKey     = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

// azuriteStartTimeout bounds the wait for Azurite to accept connections.
const azuriteStartTimeout = 30 * time.Second

// Azurite is a running Azurite table service (tables only, in memory).
type Azurite struct {
	port     int
	certFile string // HTTPS with Entra ID tokens when set
	cmd      *exec.Cmd
	exited   chan error
	dir      string // working directory, removed by Close
	closed   sync.Once
}

// StartAzurite starts azurite-table on a free loopback port, waits until
// it accepts connections, and stops it when t ends. Data lives in memory
// only. Failing to start is fatal, never a skip; under -short (the fast
// loop while working, never make test or CI) the test skips, saying why.
func StartAzurite(t testing.TB) *Azurite {
	t.Helper()
	return startAzurite(t, "", "")
}

// StartAzuriteOAuth starts azurite-table as StartAzurite does, but over
// HTTPS (the certificate and key files given, see SelfSignedCert) and
// taking Entra ID bearer tokens ("--oauth basic": Azurite checks the
// token's audience, issuer and lifetime, not its signature), as a storage
// account reached with a managed identity is.
func StartAzuriteOAuth(t testing.TB, certFile, keyFile string) *Azurite {
	t.Helper()
	return startAzurite(t, certFile, keyFile)
}

func startAzurite(t testing.TB, certFile, keyFile string) *Azurite {
	t.Helper()
	if testing.Short() {
		t.Skip("needs Azurite: run without -short (make test does)")
	}
	a, err := LaunchAzurite(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close() })
	return a
}

// LaunchAzurite starts azurite-table on a free loopback port and waits
// until it accepts connections; the caller stops it with Close. With a
// certificate and key (see WriteSelfSignedCert) it serves HTTPS and takes
// Entra ID tokens, as StartAzuriteOAuth; with both empty, plain HTTP and
// shared keys, as StartAzurite.
func LaunchAzurite(certFile, keyFile string) (*Azurite, error) {
	nm, err := InstallNodeModules()
	if err != nil {
		return nil, err
	}
	bin := filepath.Join(nm, ".bin", "azurite-table")
	port, err := FindFreePort()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "jitaccess-azurite")
	if err != nil {
		return nil, fmt.Errorf("starting Azurite: %w", err)
	}
	out := &azuriteLog{}
	// --location cannot be combined with --inMemoryPersistence (Azurite
	// 3.37 refuses); the working directory is a temporary one instead, in
	// case Azurite writes anything. Telemetry off: no outside calls.
	args := []string{
		"--tableHost", "127.0.0.1",
		"--tablePort", strconv.Itoa(port),
		"--skipApiVersionCheck",
		"--loose",
		"--inMemoryPersistence",
		"--disableTelemetry",
	}
	a := &Azurite{port: port, dir: dir, exited: make(chan error, 1)}
	if certFile != "" {
		args = append(args, "--cert", certFile, "--key", keyFile, "--oauth", "basic")
		a.certFile = certFile
	}
	a.cmd = exec.Command(bin, args...)
	a.cmd.Dir = dir
	a.cmd.Stdout = out
	a.cmd.Stderr = out
	if err := a.cmd.Start(); err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("starting Azurite (%s): %w", bin, err)
	}
	go func() { a.exited <- a.cmd.Wait() }()

	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	deadline := time.Now().Add(azuriteStartTimeout)
	for {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			conn.Close()
			return a, nil
		}
		select {
		case err := <-a.exited:
			a.exited <- err // for Close
			_ = a.Close()
			return nil, fmt.Errorf("azurite exited before accepting connections (%v):\n%s", err, out)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = a.Close()
			return nil, fmt.Errorf("azurite did not accept connections on %s within %s:\n%s", addr, azuriteStartTimeout, out)
		}
	}
}

// Close stops Azurite and removes its working directory. It may be called
// more than once.
func (a *Azurite) Close() error {
	a.closed.Do(func() {
		_ = a.cmd.Process.Kill()
		<-a.exited
		_ = os.RemoveAll(a.dir)
	})
	return nil
}

// Port returns the table service's port.
func (a *Azurite) Port() int { return a.port }

// TableURL returns the table service's URL for the development account.
func (a *Azurite) TableURL() string {
	scheme := "http"
	if a.certFile != "" {
		scheme = "https"
	}
	return fmt.Sprintf("%s://127.0.0.1:%d/%s", scheme, a.port, AzuriteAccount)
}

// CertFile is the PEM certificate an OAuth Azurite serves, for clients to
// trust; empty for plain HTTP.
func (a *Azurite) CertFile() string { return a.certFile }

// ConnectionString returns an explicit connection string for the
// development account on this Azurite.
func (a *Azurite) ConnectionString() string {
	return "DefaultEndpointsProtocol=http;AccountName=" + AzuriteAccount + ";AccountKey=" + AzuriteKey +
		";TableEndpoint=" + a.TableURL() + ";"
}

// azuriteLog collects a process's output for failure messages.
type azuriteLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *azuriteLog) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *azuriteLog) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
