package testenv

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// ServiceBusQueue is the queue the double serves to tests. The double
// creates any queue on first use; tests use this one unless they need more.
const ServiceBusQueue = "jit-operations"

// ServiceBusDouble is a running Service Bus test double
// (testing/servicebus-double/server.js).
type ServiceBusDouble struct {
	AMQPPort int
	HTTPPort int
	// AMQPSPort is the TLS listener's port (StartServiceBusTLS), else 0.
	AMQPSPort int
}

// StartServiceBus starts the Service Bus test double on free loopback ports
// and stops it when the test ends. It fails the test if the double is not
// ready within 20 seconds.
func StartServiceBus(t testing.TB) *ServiceBusDouble {
	t.Helper()
	return startServiceBus(t)
}

// StartServiceBusTLS starts the double as StartServiceBus does, listening
// also with TLS (the certificate and key files given, see SelfSignedCert),
// so that a client can reach it as a namespace by name (Namespace) with a
// token credential, as in Azure.
func StartServiceBusTLS(t testing.TB, certFile, keyFile string) *ServiceBusDouble {
	t.Helper()
	return startServiceBus(t, "--tls-cert", certFile, "--tls-key", keyFile, "--amqps-port", "0")
}

func startServiceBus(t testing.TB, extra ...string) *ServiceBusDouble {
	NodeModules(t)
	script := filepath.Join(RepoRoot(t), "testing", "servicebus-double", "server.js")
	cmd := exec.Command("node", append([]string{script, "--amqp-port", "0", "--http-port", "0"}, extra...)...)
	cmd.Dir = RepoRoot(t)
	cmd.Stderr = os.Stderr
	// The double exits when its stdin closes, so it dies with the test
	// binary even when Cleanup never runs.
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatalf("starting the Service Bus double: %v", err)
	}
	// An io.Pipe rather than StdoutPipe: Wait may then run while the
	// scanner below still reads.
	stdout, stdoutW := io.Pipe()
	cmd.Stdout = stdoutW
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting the Service Bus double: %v", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		_ = stdoutW.Close()
		close(exited)
	}()
	t.Cleanup(func() {
		_ = stdin.Close()
		select {
		case <-exited:
		case <-time.After(2 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})

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
	d := &ServiceBusDouble{}
	select {
	case line := <-ready:
		if _, err := fmt.Sscanf(line, "READY amqp=%d http=%d amqps=%d", &d.AMQPPort, &d.HTTPPort, &d.AMQPSPort); err != nil {
			t.Fatalf("Service Bus double said %q: %v", line, err)
		}
	case <-exited:
		t.Fatalf("the Service Bus double exited before it was ready (see its output above)")
	case <-time.After(20 * time.Second):
		t.Fatalf("the Service Bus double was not ready after 20s")
	}
	return d
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
	Active         []ServiceBusMessage `json:"active"`
	Scheduled      []ServiceBusMessage `json:"scheduled"`
	LockedSessions []string            `json:"lockedSessions"`
	DeadLetters    []ServiceBusMessage `json:"deadLetters"`
	Counts         struct {
		Sent              int `json:"sent"`
		Scheduled         int `json:"scheduled"`
		Completed         int `json:"completed"`
		Abandoned         int `json:"abandoned"`
		Released          int `json:"released"`
		Cancelled         int `json:"cancelled"`
		DeadLettered      int `json:"deadLettered"`
		DuplicatesDropped int `json:"duplicatesDropped"`
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

// State returns the double's state now.
func (d *ServiceBusDouble) State(t testing.TB) ServiceBusState {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/state", d.HTTPPort))
	if err != nil {
		t.Fatalf("reading the Service Bus double's state: %v", err)
	}
	defer resp.Body.Close()
	var s ServiceBusState
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		t.Fatalf("decoding the Service Bus double's state: %v", err)
	}
	return s
}

// Reset drops every message and counter in the double.
func (d *ServiceBusDouble) Reset(t testing.TB) {
	t.Helper()
	resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d/reset", d.HTTPPort), "application/json", nil)
	if err != nil {
		t.Fatalf("resetting the Service Bus double: %v", err)
	}
	resp.Body.Close()
}
