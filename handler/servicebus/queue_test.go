package servicebus_test

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"

	"jitaccess/handler/jit"
	"jitaccess/handler/queuetest"
	"jitaccess/handler/servicebus"
	"jitaccess/handler/testenv"
)

const (
	nsgA = "/subscriptions/00000000-0000-0000-0000-00000000000a/resourceGroups/rg/providers/Microsoft.Network/networkSecurityGroups/NSG-A"
	nsgB = "/subscriptions/00000000-0000-0000-0000-00000000000a/resourceGroups/rg/providers/Microsoft.Network/networkSecurityGroups/nsg-b"
)

func TestQueueBehaviour(t *testing.T) {
	queuetest.Run(t, func(t *testing.T, w jit.Worker) jit.Queue {
		if strings.HasSuffix(t.Name(), "/SameNSGSerialInDueOrder") {
			// Without sessions nothing keeps one NSG's operations in order:
			// a message the receiver let go while its batch ran comes back
			// behind later ones, and instances overlap. The worker does
			// not need the order (see the package doc).
			t.Skip("a queue without sessions does not order one NSG's operations")
		}
		q, client := newQueue(t)
		runHost(t, client, q.Name(), w)
		return q
	})
}

func op(name, nsg string, due time.Time) jit.Operation {
	return jit.Operation{
		ID: jit.OperationID(jit.OpOpen, "req-"+name, 1, nsg, due), Kind: jit.OpOpen,
		RequestID: "req-" + name, Grant: 1, NSG: nsg, Due: due,
	}
}

func receiveOne(t *testing.T, client *azservicebus.Client, queue string, within time.Duration) *azservicebus.ReceivedMessage {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	r, err := client.NewReceiverForQueue(queue, nil)
	if err != nil {
		t.Fatalf("NewReceiverForQueue(%s): %v", queue, err)
	}
	defer r.Close(context.Background())
	msgs, err := r.ReceiveMessages(ctx, 1, nil)
	if err != nil || len(msgs) != 1 {
		t.Fatalf("ReceiveMessages: %d messages, %v", len(msgs), err)
	}
	if err := r.CompleteMessage(context.Background(), msgs[0], nil); err != nil {
		t.Fatalf("CompleteMessage: %v", err)
	}
	return msgs[0]
}

func TestEnqueueDueNowIsReceivable(t *testing.T) {
	q, client := newQueue(t)
	o := op("now", nsgA, time.Time{})
	if err := q.Enqueue(context.Background(), []jit.Operation{o}); err != nil {
		t.Fatal(err)
	}
	m := receiveOne(t, client, q.Name(), 5*time.Second)
	if m.MessageID != o.ID {
		t.Errorf("MessageID %q, want %q", m.MessageID, o.ID)
	}
	if m.SessionID != nil {
		t.Errorf("SessionID %q, want none: the queue has no sessions", *m.SessionID)
	}
	if m.ContentType == nil || *m.ContentType != "application/json" || m.Subject == nil || *m.Subject != jit.OpOpen {
		t.Errorf("ContentType %v, Subject %v", m.ContentType, m.Subject)
	}
	got, err := servicebus.DecodeOperation(m.Body)
	if err != nil {
		t.Fatal(err)
	}
	if got != o {
		t.Errorf("decoded %+v, want %+v", got, o)
	}
	if m.SequenceNumber == nil || m.EnqueuedTime == nil || m.DeliveryCount != 1 {
		t.Errorf("broker fields: seq %v, enqueued %v, delivery count %d", m.SequenceNumber, m.EnqueuedTime, m.DeliveryCount)
	}
}

func TestEnqueueLaterIsScheduledUntilDue(t *testing.T) {
	q, client := newQueue(t)
	due := time.Now().Add(700 * time.Millisecond)
	o := op("later", nsgA, due)
	if err := q.Enqueue(context.Background(), []jit.Operation{o}); err != nil {
		t.Fatal(err)
	}
	st := sharedDouble(t).State(t).Queues[q.Name()]
	if len(st.Scheduled) != 1 || len(st.Active) != 0 {
		t.Fatalf("double has %d scheduled and %d active messages, want 1 and 0", len(st.Scheduled), len(st.Active))
	}
	s := st.Scheduled[0]
	if s.MessageID != o.ID || s.SessionID != "" {
		t.Errorf("scheduled message %+v", s)
	}
	if s.ScheduledTime.Before(due) || s.ScheduledTime.Sub(due) > time.Millisecond {
		t.Errorf("scheduled at %v, want %v rounded up to the millisecond", s.ScheduledTime, due)
	}

	// Before its time the queue has nothing to give.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sr, err := client.NewReceiverForQueue(q.Name(), nil)
	if err != nil {
		t.Fatal(err)
	}
	early, cancelEarly := context.WithDeadline(ctx, due.Add(-200*time.Millisecond))
	msgs, _ := sr.ReceiveMessages(early, 1, nil)
	cancelEarly()
	if len(msgs) != 0 {
		t.Fatalf("received %d messages before the due time", len(msgs))
	}
	msgs, err = sr.ReceiveMessages(ctx, 1, nil)
	if err != nil || len(msgs) != 1 {
		t.Fatalf("after the due time: %d messages, %v", len(msgs), err)
	}
	if now := time.Now(); now.Before(due) {
		t.Errorf("received %s before the due time", due.Sub(now))
	}
	if err := sr.CompleteMessage(ctx, msgs[0], nil); err != nil {
		t.Fatal(err)
	}
	_ = sr.Close(ctx)
	if got, err := servicebus.DecodeOperation(msgs[0].Body); err != nil || !got.Due.Equal(due) {
		t.Errorf("decoded %+v, %v; want Due %v", got, err, due)
	}
}

// Operations of two NSGs go without sessions: one receiver gets both, in
// the order they were enqueued.
func TestTwoNSGsOneReceiver(t *testing.T) {
	q, client := newQueue(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	a, b := op("a", nsgA, time.Time{}), op("b", nsgB, time.Time{})
	if err := q.Enqueue(ctx, []jit.Operation{a, b}); err != nil {
		t.Fatal(err)
	}
	r, err := client.NewReceiverForQueue(q.Name(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close(context.Background())
	var got []string
	for len(got) < 2 {
		msgs, err := r.ReceiveMessages(ctx, 10, nil)
		if err != nil {
			t.Fatalf("after %v: %v", got, err)
		}
		for _, m := range msgs {
			got = append(got, m.MessageID)
			if m.SessionID != nil {
				t.Errorf("message %s has session %q", m.MessageID, *m.SessionID)
			}
			if err := r.CompleteMessage(ctx, m, nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	if !slices.Equal(got, []string{a.ID, b.ID}) {
		t.Errorf("received %q, want %q", got, []string{a.ID, b.ID})
	}
	if st := sharedDouble(t).State(t).Queues[q.Name()]; st.RequiresSession || st.Counts.Completed != 2 {
		t.Errorf("queue state %+v", st)
	}
}

func TestDuplicateEnqueueSendsOnce(t *testing.T) {
	q, _ := newQueue(t)
	ctx := context.Background()
	now, later := op("dup-now", nsgA, time.Time{}), op("dup-later", nsgA, time.Now().Add(time.Hour))
	if err := q.Enqueue(ctx, []jit.Operation{now, later, now, later}); err != nil {
		t.Fatal(err)
	}
	if err := q.Enqueue(ctx, []jit.Operation{now, later}); err != nil {
		t.Fatal(err)
	}
	st := sharedDouble(t).State(t).Queues[q.Name()]
	if len(st.Active) != 1 || len(st.Scheduled) != 1 || st.Counts.DuplicatesDropped != 2 {
		t.Errorf("double has %d active, %d scheduled, %d duplicates dropped; want 1, 1, 2",
			len(st.Active), len(st.Scheduled), st.Counts.DuplicatesDropped)
	}
}

func TestEnqueueInvalidOperation(t *testing.T) {
	q, _ := newQueue(t)
	err := q.Enqueue(context.Background(), []jit.Operation{{ID: "x", Kind: "reboot", RequestID: "r", NSG: nsgA}})
	if jit.ErrorCode(err) != jit.EINVALID {
		t.Errorf("Enqueue of a bad kind: %v, want an EINVALID error", err)
	}
}

func TestUnreachableIsUnavailable(t *testing.T) {
	port := testenv.FreePort(t)
	client, err := servicebus.NewClientFromConnectionString(
		"Endpoint=sb://127.0.0.1:" + itoa(int64(port)) + ";SharedAccessKeyName=x;SharedAccessKey=x;UseDevelopmentEmulator=true")
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close(context.Background())
	q, err := servicebus.New(client, "")
	if err != nil {
		t.Fatal(err)
	}
	if q.Name() != servicebus.DefaultQueueName {
		t.Errorf("queue name %q, want the default", q.Name())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	err = q.Enqueue(ctx, []jit.Operation{op("x", nsgA, time.Time{})})
	if jit.ErrorCode(err) != jit.EUNAVAILABLE {
		t.Errorf("Enqueue with no broker: %v, want an EUNAVAILABLE error", err)
	}
}

func TestBadConnectionStringHidesIt(t *testing.T) {
	_, err := servicebus.NewClientFromConnectionString("Endpoint=nonsense;SharedAccessKey=secret-key")
	if err == nil || strings.Contains(err.Error(), "secret-key") {
		t.Errorf("error %v: want an error that does not quote the key", err)
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// The adapter sends batches; the double must take single sends too (the
// Functions host or a tool may send that way).
func TestDoubleTakesSingleSends(t *testing.T) {
	client, name := newClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sender, err := client.NewSender(name, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sender.Close(ctx)
	body, _ := servicebus.EncodeOperation(op("single", nsgB, time.Time{}))
	if err := sender.SendMessage(ctx, &azservicebus.Message{Body: body, ApplicationProperties: map[string]any{"n": int64(7)}}, nil); err != nil {
		t.Fatal(err)
	}
	m := receiveOne(t, client, name, 5*time.Second)
	if string(m.Body) != string(body) || m.ApplicationProperties["n"] != int64(7) {
		t.Errorf("received body %s, properties %v", m.Body, m.ApplicationProperties)
	}
}
