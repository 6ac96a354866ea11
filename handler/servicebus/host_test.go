package servicebus_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"

	"jitaccess/handler/jit"
	"jitaccess/handler/servicebus"
	"jitaccess/handler/testenv"
)

var (
	doubleOnce sync.Once
	double     *testenv.ServiceBusDouble
	queueCount atomic.Int64
)

// sharedDouble starts one double for the package's tests: each test takes
// its own queue on it, so tests stay apart without paying for a process
// each. The double dies with the test binary (its stdin closes).
func sharedDouble(t *testing.T) *testenv.ServiceBusDouble {
	t.Helper()
	if testing.Short() {
		t.Skip("needs the Service Bus double: run without -short (make test does)")
	}
	doubleOnce.Do(func() { double = testenv.StartServiceBus(&processLife{t}) })
	if double == nil {
		t.Fatal("the Service Bus double did not start")
	}
	return double
}

// processLife lends a test's Fatalf to StartServiceBus but keeps its
// Cleanup for the end of the process, since the double outlives the test.
type processLife struct{ *testing.T }

func (processLife) Cleanup(func()) {}

// newClient returns a client for the double and a queue name of its own.
func newClient(t *testing.T) (*azservicebus.Client, string) {
	t.Helper()
	d := sharedDouble(t)
	client, err := servicebus.NewClientFromConnectionString(d.ConnectionString())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close(context.Background()) })
	name := strings.NewReplacer("/", "-", " ", "-").Replace(strings.ToLower(t.Name()))
	return client, fmt.Sprintf("%s-%d", name, queueCount.Add(1))
}

func newQueue(t *testing.T) (*servicebus.Queue, *azservicebus.Client) {
	t.Helper()
	client, name := newClient(t)
	q, err := servicebus.New(client, name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = q.Close(context.Background()) })
	return q, client
}

// runHost does what the Functions host's Service Bus trigger does with
// "cardinality": "many" on a queue without sessions, for one instance: one
// loop receives a batch, the worker groups it by NSG and applies the groups
// in parallel, each group's operations one after the other in queue order;
// the whole batch is completed when every operation succeeded, and
// abandoned otherwise.
func runHost(t *testing.T, client *azservicebus.Client, queue string, w jit.Worker) {
	ctx, cancel := context.WithCancel(context.Background())
	r, err := client.NewReceiverForQueue(queue, nil)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { hostLoop(ctx, t, r, w) })
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		_ = r.Close(context.Background())
	})
}

// batchSize is the test host's maxMessageBatchSize.
const batchSize = 100

func hostLoop(ctx context.Context, t *testing.T, r *azservicebus.Receiver, w jit.Worker) {
	for ctx.Err() == nil {
		msgs, err := r.ReceiveMessages(ctx, batchSize, nil)
		if len(msgs) == 0 {
			if err != nil && ctx.Err() == nil {
				t.Logf("host: receiving: %v", err)
				time.Sleep(20 * time.Millisecond)
			}
			continue
		}
		handleBatch(ctx, t, r, w, msgs)
	}
}

func handleBatch(ctx context.Context, t *testing.T, r *azservicebus.Receiver, w jit.Worker, msgs []*azservicebus.ReceivedMessage) {
	// Settling must outlive the host's context, or a message would hang in
	// its lock at shutdown.
	settle, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	groups := map[string][]jit.Operation{}
	for _, m := range msgs {
		op, err := servicebus.DecodeOperation(m.Body)
		if err != nil {
			t.Errorf("host: undecodable message %s: %v", m.MessageID, err)
			continue
		}
		nsg := strings.ToLower(op.NSG)
		groups[nsg] = append(groups[nsg], op)
	}
	var failed atomic.Bool
	var wg sync.WaitGroup
	for _, ops := range groups {
		wg.Go(func() {
			for _, err := range w.ApplyOperations(ctx, ops) {
				if err != nil {
					failed.Store(true)
				}
			}
		})
	}
	wg.Wait()
	for _, m := range msgs {
		var err error
		if failed.Load() {
			err = r.AbandonMessage(settle, m, nil)
		} else {
			err = r.CompleteMessage(settle, m, nil)
		}
		if err != nil && ctx.Err() == nil {
			t.Logf("host: settling %s: %v", m.MessageID, err)
		}
	}
}
