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

// Azurite is a running Azurite table service (tables only, in memory or,
// to survive Restart, in files of its working directory).
type Azurite struct {
	port     int
	certFile string // HTTPS with Entra ID tokens when set
	keyFile  string
	onDisk   bool   // tables kept in dir, so a restart keeps them
	dir      string // working directory, removed by Close
	out      *azuriteLog

	mu     sync.Mutex // the process, replaced by Restart
	cmd    *exec.Cmd
	exited chan error
	closed sync.Once
}

// StartAzurite starts azurite-table on a free loopback port, waits until
// it accepts connections, and stops it when t ends. Data lives in memory
// only. Failing to start is fatal, never a skip; under -short (the fast
// loop while working, never make test or CI) the test skips, saying why.
func StartAzurite(t testing.TB) *Azurite {
	t.Helper()
	return startAzurite(t, "", "", false)
}

// StartAzuriteOAuth starts azurite-table as StartAzurite does, but over
// HTTPS (the certificate and key files given, see SelfSignedCert) and
// taking Entra ID bearer tokens ("--oauth basic": Azurite checks the
// token's audience, issuer and lifetime, not its signature), as a storage
// account reached with a managed identity is.
func StartAzuriteOAuth(t testing.TB, certFile, keyFile string) *Azurite {
	t.Helper()
	return startAzurite(t, certFile, keyFile, false)
}

// StartAzuriteOnDisk starts azurite-table as StartAzurite does, keeping
// its tables in files instead of memory, so that Restart takes the service
// away and brings it back with its data, as a storage account keeps its
// data while its front ends restart.
func StartAzuriteOnDisk(t testing.TB) *Azurite {
	t.Helper()
	return startAzurite(t, "", "", true)
}

func startAzurite(t testing.TB, certFile, keyFile string, onDisk bool) *Azurite {
	t.Helper()
	if testing.Short() {
		t.Skip("needs Azurite: run without -short (make test does)")
	}
	a, err := launchAzurite(certFile, keyFile, onDisk)
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
	return launchAzurite(certFile, keyFile, false)
}

func launchAzurite(certFile, keyFile string, onDisk bool) (*Azurite, error) {
	port, err := FindFreePort()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "jitaccess-azurite")
	if err != nil {
		return nil, fmt.Errorf("starting Azurite: %w", err)
	}
	a := &Azurite{port: port, certFile: certFile, keyFile: keyFile, onDisk: onDisk, dir: dir, out: &azuriteLog{}}
	if err := a.run(); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	return a, nil
}

// run starts the process on a.port and waits until it accepts
// connections.
func (a *Azurite) run() error {
	nm, err := InstallNodeModules()
	if err != nil {
		return err
	}
	bin := filepath.Join(nm, ".bin", "azurite-table")
	// --location cannot be combined with --inMemoryPersistence (Azurite
	// 3.37 refuses); in memory, the working directory is a temporary one
	// instead, in case Azurite writes anything. Telemetry off: no outside
	// calls.
	args := []string{
		"--tableHost", "127.0.0.1",
		"--tablePort", strconv.Itoa(a.port),
		"--skipApiVersionCheck",
		"--loose",
		"--disableTelemetry",
	}
	if a.onDisk {
		args = append(args, "--location", a.dir)
	} else {
		args = append(args, "--inMemoryPersistence")
	}
	if a.certFile != "" {
		args = append(args, "--cert", a.certFile, "--key", a.keyFile, "--oauth", "basic")
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = a.dir
	cmd.Stdout = a.out
	cmd.Stderr = a.out
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting Azurite (%s): %w", bin, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	a.mu.Lock()
	a.cmd, a.exited = cmd, exited
	a.mu.Unlock()

	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(a.port))
	deadline := time.Now().Add(azuriteStartTimeout)
	for {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			conn.Close()
			return nil
		}
		select {
		case err := <-exited:
			exited <- err // for Close
			return fmt.Errorf("azurite exited before accepting connections (%v):\n%s", err, a.out)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			a.stop(false)
			return fmt.Errorf("azurite did not accept connections on %s within %s:\n%s", addr, azuriteStartTimeout, a.out)
		}
	}
}

// stop ends the process: gracefully (SIGINT: Azurite saves its tables and
// closes, killed if it has not exited after azuriteStopTimeout) or at once.
func (a *Azurite) stop(graceful bool) {
	a.mu.Lock()
	cmd, exited := a.cmd, a.exited
	a.mu.Unlock()
	if graceful {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case err := <-exited:
			exited <- err
			return
		case <-time.After(azuriteStopTimeout):
		}
	}
	_ = cmd.Process.Kill()
	err := <-exited
	exited <- err
}

// azuriteStopTimeout bounds a graceful stop.
const azuriteStopTimeout = 10 * time.Second

// Restart stops an Azurite on disk as a service restart does (gracefully:
// it saves its tables), leaves it down for down, and starts it again on
// the same port with the tables it had. Requests meanwhile find nothing
// listening. An Azurite in memory cannot restart: it would come back
// empty.
func (a *Azurite) Restart(down time.Duration) error {
	if !a.onDisk {
		return fmt.Errorf("restarting Azurite: it keeps its tables in memory and would lose them (use StartAzuriteOnDisk)")
	}
	a.stop(true)
	time.Sleep(down)
	if err := a.run(); err != nil {
		return fmt.Errorf("restarting Azurite: %w", err)
	}
	return nil
}

// Close stops Azurite and removes its working directory. It may be called
// more than once.
func (a *Azurite) Close() error {
	a.closed.Do(func() {
		a.stop(false)
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
