package testenv

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// ServiceBusQueue is the queue the double serves to tests. The double
// creates any queue on first use, without sessions as the project's queue
// is (CreateQueue makes one with sessions); tests use this one unless they
// need more.
const ServiceBusQueue = "jit-operations"

// ServiceBusDouble is a running Service Bus test double
// (testing/servicebus-double/server.js).
type ServiceBusDouble struct {
	AMQPPort int
	HTTPPort int
	// AMQPSPort is the TLS listener's port (StartServiceBusTLS), else 0.
	AMQPSPort int

	cmd    *exec.Cmd
	stdin  io.Closer
	exited chan struct{}
	closed sync.Once
}

// StartServiceBus starts the Service Bus test double on free loopback ports
// and stops it when the test ends. It fails the test if the double is not
// ready within 20 seconds.
func StartServiceBus(t testing.TB) *ServiceBusDouble {
	t.Helper()
	return startServiceBus(t, "", "")
}

// StartServiceBusTLS starts the double as StartServiceBus does, listening
// also with TLS (the certificate and key files given, see SelfSignedCert),
// so that a client can reach it as a namespace by name (Namespace) with a
// token credential, as in Azure.
func StartServiceBusTLS(t testing.TB, certFile, keyFile string) *ServiceBusDouble {
	t.Helper()
	return startServiceBus(t, certFile, keyFile)
}

func startServiceBus(t testing.TB, certFile, keyFile string) *ServiceBusDouble {
	t.Helper()
	if testing.Short() {
		t.Skip("needs the Service Bus double: run without -short (make test does)")
	}
	d, err := LaunchServiceBus(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	return d
}

// LaunchServiceBus starts the Service Bus test double on free loopback
// ports and waits until it is ready (at most 20 seconds); the caller stops
// it with Close. With a certificate and key (see WriteSelfSignedCert) it
// also listens with TLS, as StartServiceBusTLS; with both empty, plain
// AMQP only, as StartServiceBus.
func LaunchServiceBus(certFile, keyFile string) (*ServiceBusDouble, error) {
	if _, err := InstallNodeModules(); err != nil {
		return nil, err
	}
	dir, err := FindRepoRoot()
	if err != nil {
		return nil, err
	}
	args := []string{filepath.Join(dir, "testing", "servicebus-double", "server.js"), "--amqp-port", "0", "--http-port", "0"}
	if certFile != "" {
		args = append(args, "--tls-cert", certFile, "--tls-key", keyFile, "--amqps-port", "0")
	}
	cmd := exec.Command("node", args...)
	cmd.Dir = dir
	cmd.Stderr = os.Stderr
	// The double exits when its stdin closes, so it dies with the process
	// that started it even when Close never runs.
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("starting the Service Bus double: %w", err)
	}
	// An io.Pipe rather than StdoutPipe: Wait may then run while the
	// scanner below still reads.
	stdout, stdoutW := io.Pipe()
	cmd.Stdout = stdoutW
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the Service Bus double: %w", err)
	}
	d := &ServiceBusDouble{cmd: cmd, stdin: stdin, exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		_ = stdoutW.Close()
		close(d.exited)
	}()

	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if line := sc.Text(); strings.HasPrefix(line, "READY ") {
				ready <- line
				break
			}
		}
		// Keep draining so the double never blocks on a full pipe.
		for sc.Scan() {
		}
	}()
	select {
	case line := <-ready:
		if _, err := fmt.Sscanf(line, "READY amqp=%d http=%d amqps=%d", &d.AMQPPort, &d.HTTPPort, &d.AMQPSPort); err != nil {
			_ = d.Close()
			return nil, fmt.Errorf("the Service Bus double said %q: %w", line, err)
		}
	case <-d.exited:
		return nil, fmt.Errorf("the Service Bus double exited before it was ready (see its output above)")
	case <-time.After(20 * time.Second):
		_ = d.Close()
		return nil, fmt.Errorf("the Service Bus double was not ready after 20s")
	}
	return d, nil
}

// Close stops the double: it closes its stdin, and kills it if it has not
// exited two seconds later. It may be called more than once.
func (d *ServiceBusDouble) Close() error {
	d.closed.Do(func() {
		_ = d.stdin.Close()
		select {
		case <-d.exited:
		case <-time.After(2 * time.Second):
			_ = d.cmd.Process.Kill()
			<-d.exited
		}
	})
	return nil
}

// Namespace is the "fully qualified namespace" that reaches the TLS
// listener (host and port), for azservicebus.NewClient with a credential.
func (d *ServiceBusDouble) Namespace() string { return fmt.Sprintf("127.0.0.1:%d", d.AMQPSPort) }

// ConnectionString returns a connection string for azservicebus: the
// emulator flag makes the client dial plain AMQP on this host and port.
// The key is never checked.
func (d *ServiceBusDouble) ConnectionString() string {
	return fmt.Sprintf("Endpoint=sb://127.0.0.1:%d;SharedAccessKeyName=x;SharedAccessKey=x;UseDevelopmentEmulator=true", d.AMQPPort)
}

// ServiceBusState is what the double's admin endpoint reports.
type ServiceBusState struct {
	Queues map[string]ServiceBusQueueState `json:"queues"`
	// CBS lists the put-token requests the double took: the token's type
	// ("jwt" for an Entra ID token, "servicebus.windows.net:sastoken" for a
	// key), the audience it was sent for, and a JWT's own aud claim.
	CBS []struct {
		Type string `json:"type"`
		Name string `json:"name"`
		Aud  string `json:"aud"`
	} `json:"cbs"`
}

// ServiceBusQueueState is one queue's state in the double.
type ServiceBusQueueState struct {
	RequiresSession bool                `json:"requiresSession"`
	Active          []ServiceBusMessage `json:"active"`
	Scheduled       []ServiceBusMessage `json:"scheduled"`
	LockedSessions  []string            `json:"lockedSessions"`
	DeadLetters     []ServiceBusMessage `json:"deadLetters"`
	Counts          struct {
		Sent              int `json:"sent"`
		Scheduled         int `json:"scheduled"`
		Completed         int `json:"completed"`
		Abandoned         int `json:"abandoned"`
		Released          int `json:"released"`
		Cancelled         int `json:"cancelled"`
		DeadLettered      int `json:"deadLettered"`
		DuplicatesDropped int `json:"duplicatesDropped"`
		// What the faults did (ServiceBusFaults): messages lost on the
		// way in, taken in twice, and locks taken mid-work.
		Dropped    int `json:"dropped"`
		Duplicated int `json:"duplicated"`
		LocksLost  int `json:"locksLost"`
	} `json:"counts"`
}

// ServiceBusMessage is a message in the double's state.
type ServiceBusMessage struct {
	Seq           int64     `json:"seq"`
	MessageID     string    `json:"messageId"`
	SessionID     string    `json:"sessionId"`
	DeliveryCount int       `json:"deliveryCount"`
	Locked        bool      `json:"locked"`
	EnqueuedTime  time.Time `json:"enqueuedTime"`
	ScheduledTime time.Time `json:"scheduledTime"`
	Reason        string    `json:"reason"`
}

// FetchState returns the double's state now.
func (d *ServiceBusDouble) FetchState() (ServiceBusState, error) {
	var s ServiceBusState
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/state", d.HTTPPort))
	if err != nil {
		return s, fmt.Errorf("reading the Service Bus double's state: %w", err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		return s, fmt.Errorf("decoding the Service Bus double's state: %w", err)
	}
	return s, nil
}

// State is FetchState for tests.
func (d *ServiceBusDouble) State(t testing.TB) ServiceBusState {
	t.Helper()
	s, err := d.FetchState()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// CreateQueue creates a queue with sessions (requiresSession) or without,
// before anything uses it: as in Service Bus, a queue's kind cannot change
// once it is in use.
func (d *ServiceBusDouble) CreateQueue(name string, requiresSession bool) error {
	body := strings.NewReader(fmt.Sprintf(`{"requiresSession":%t}`, requiresSession))
	req, err := http.NewRequest(http.MethodPut, fmt.Sprintf("http://127.0.0.1:%d/queues/%s", d.HTTPPort, url.PathEscape(name)), body)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("creating queue %s in the Service Bus double: %w", name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("creating queue %s in the Service Bus double: %s: %s", name, resp.Status, msg)
	}
	return nil
}

// SessionQueue is CreateQueue of a queue with sessions, for tests.
func (d *ServiceBusDouble) SessionQueue(t testing.TB, name string) {
	t.Helper()
	if err := d.CreateQueue(name, true); err != nil {
		t.Fatal(err)
	}
}

// ResetState drops every message and counter in the double.
func (d *ServiceBusDouble) ResetState() error {
	resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d/reset", d.HTTPPort), "application/json", nil)
	if err != nil {
		return fmt.Errorf("resetting the Service Bus double: %w", err)
	}
	resp.Body.Close()
	return nil
}

// Reset is ResetState for tests.
func (d *ServiceBusDouble) Reset(t testing.TB) {
	t.Helper()
	if err := d.ResetState(); err != nil {
		t.Fatal(err)
	}
}

// ServiceBusFaults are the double's fault injections, for fault tests; the
// zero value is none (the double's default). Rates are shares from 0 to 1.
type ServiceBusFaults struct {
	// DropRate is the share of messages lost on their way in: the sender
	// is told they were accepted (a scheduled one gets its sequence
	// number) and no receiver ever sees them.
	DropRate float64 `json:"dropRate"`
	// DuplicateRate is the share of messages taken in twice: two messages
	// with the same id, each delivered and settled on its own.
	DuplicateRate float64 `json:"duplicateRate"`
	// LockLossRate is the share of deliveries whose lock is lost while
	// the receiver works on them, at a random moment within
	// LockLossAfter: the message is available again with its delivery
	// count one higher (dead-lettered when that reaches
	// MaxDeliveryCount), and the receiver's settlement is refused with
	// com.microsoft:message-lock-lost.
	LockLossRate  float64       `json:"lockLossRate"`
	LockLossAfter time.Duration `json:"-"`
	// MaxDeliveryCount is the queue's maximum delivery count (0: leave it
	// as it is, 10 unless set).
	MaxDeliveryCount int `json:"maxDeliveryCount,omitempty"`
	// Seed seeds the draws, so that a run can be replayed as far as its
	// timing allows (0: leave it).
	Seed uint32 `json:"seed,omitempty"`
}

// SetFaults turns the double's faults on (or off, with the zero value),
// from the next message on.
func (d *ServiceBusDouble) SetFaults(f ServiceBusFaults) error {
	type wire struct {
		ServiceBusFaults
		LockLossAfterMs int64 `json:"lockLossAfterMs,omitempty"`
	}
	body, err := json.Marshal(wire{f, f.LockLossAfter.Milliseconds()})
	if err != nil {
		return err
	}
	req, err := http.NewRequest(http.MethodPut, fmt.Sprintf("http://127.0.0.1:%d/faults", d.HTTPPort), strings.NewReader(string(body)))
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("setting the Service Bus double's faults: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("setting the Service Bus double's faults: %s: %s", resp.Status, msg)
	}
	return nil
}
