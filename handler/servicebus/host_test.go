package servicebus_test

import (
	"context"
	"errors"
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
// sessions: a few loops each accept the next free session, hand its
// messages one by one to the worker, complete on success and abandon on
// failure, and let the session go when it has been idle a while.
func runHost(t *testing.T, client *azservicebus.Client, queue string, w jit.Worker, sessions int) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range sessions {
		wg.Go(func() { hostLoop(ctx, t, client, queue, w) })
	}
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
}

const sessionIdle = 200 * time.Millisecond

func hostLoop(ctx context.Context, t *testing.T, client *azservicebus.Client, queue string, w jit.Worker) {
	for ctx.Err() == nil {
		actx, cancel := context.WithTimeout(ctx, time.Second)
		sr, err := client.AcceptNextSessionForQueue(actx, queue, nil)
		cancel()
		if err != nil {
			var sbErr *azservicebus.Error
			if ctx.Err() == nil && !(errors.As(err, &sbErr) && sbErr.Code == azservicebus.CodeTimeout) && !errors.Is(err, context.DeadlineExceeded) {
				t.Logf("host: accepting a session: %v", err)
				time.Sleep(20 * time.Millisecond)
			}
			continue
		}
		drainSession(ctx, t, sr, w)
		closeCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = sr.Close(closeCtx)
		cancel()
	}
}

func drainSession(ctx context.Context, t *testing.T, sr *azservicebus.SessionReceiver, w jit.Worker) {
	for {
		rctx, cancel := context.WithTimeout(ctx, sessionIdle)
		msgs, err := sr.ReceiveMessages(rctx, 1, nil)
		cancel()
		if len(msgs) == 0 {
			if err != nil && ctx.Err() == nil && !errors.Is(err, context.DeadlineExceeded) {
				t.Logf("host: receiving: %v", err)
			}
			return
		}
		for _, m := range msgs {
			handleMessage(ctx, t, sr, w, m)
		}
	}
}

func handleMessage(ctx context.Context, t *testing.T, sr *azservicebus.SessionReceiver, w jit.Worker, m *azservicebus.ReceivedMessage) {
	// Settling must outlive the host's context, or a message would hang in
	// its lock at shutdown.
	settle, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	op, err := servicebus.DecodeOperation(m.Body)
	if err != nil {
		t.Errorf("host: undecodable message %s: %v", m.MessageID, err)
		_ = sr.DeadLetterMessage(settle, m, nil)
		return
	}
	if err := w.ApplyOperation(ctx, op); err != nil {
		err = sr.AbandonMessage(settle, m, nil)
	} else {
		err = sr.CompleteMessage(settle, m, nil)
	}
	if err != nil && ctx.Err() == nil {
		t.Logf("host: settling %s: %v", m.MessageID, err)
	}
}
