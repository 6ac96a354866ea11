package testenv

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"
)

func TestStartServiceBus(t *testing.T) {
	d := StartServiceBus(t)
	if d.AMQPPort == 0 || d.HTTPPort == 0 {
		t.Fatalf("ports %d and %d, want both set", d.AMQPPort, d.HTTPPort)
	}
	if cs := d.ConnectionString(); !strings.Contains(cs, "UseDevelopmentEmulator=true") {
		t.Errorf("connection string %q lacks the emulator flag", cs)
	}
	if s := d.State(t); len(s.Queues) != 0 {
		t.Errorf("a new double has queues: %+v", s.Queues)
	}
	d.Reset(t)
}

// A queue made on first use has no sessions: any receiver takes its
// messages in queue order, a session receiver is refused. A queue created
// with sessions refuses a message without a session id and a receiver
// without a session. A queue in use keeps its kind.
func TestServiceBusQueueKinds(t *testing.T) {
	d := StartServiceBus(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client, err := azservicebus.NewClientFromConnectionString(d.ConnectionString(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close(context.Background())

	const plain, sessions = "plain", "with-sessions"
	sender, err := client.NewSender(plain, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sender.Close(context.Background())
	for i := range 3 {
		id := fmt.Sprint("m", i)
		var sid *string
		if i == 1 {
			sid = new("a session id is only a property here")
		}
		if err := sender.SendMessage(ctx, &azservicebus.Message{MessageID: &id, SessionID: sid, Body: []byte("x")}, nil); err != nil {
			t.Fatalf("sending %s: %v", id, err)
		}
	}
	receiver, err := client.NewReceiverForQueue(plain, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer receiver.Close(context.Background())
	var got []string
	for len(got) < 3 {
		msgs, err := receiver.ReceiveMessages(ctx, 10, nil)
		if err != nil {
			t.Fatalf("receiving: %v", err)
		}
		for _, m := range msgs {
			got = append(got, m.MessageID)
			if err := receiver.CompleteMessage(ctx, m, nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	if strings.Join(got, ",") != "m0,m1,m2" {
		t.Errorf("received %v, want m0, m1, m2", got)
	}
	short, cancelShort := context.WithTimeout(ctx, 5*time.Second)
	_, err = client.AcceptNextSessionForQueue(short, plain, nil)
	cancelShort()
	if err == nil || errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "does not require sessions") {
		t.Errorf("a session receiver on a queue without sessions: %v", err)
	}

	d.SessionQueue(t, sessions)
	sSender, err := client.NewSender(sessions, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sSender.Close(context.Background())
	if err := sSender.SendMessage(ctx, &azservicebus.Message{Body: []byte("x"), SessionID: new("s")}, nil); err != nil {
		t.Errorf("a session message: %v", err)
	}
	short, cancelShort = context.WithTimeout(ctx, 5*time.Second)
	err = sSender.SendMessage(short, &azservicebus.Message{Body: []byte("x")}, nil)
	cancelShort()
	if err == nil {
		t.Error("a message without a session id went on a queue with sessions")
	}
	r2, err := client.NewReceiverForQueue(sessions, nil)
	if err != nil {
		t.Fatal(err)
	}
	short, cancelShort = context.WithTimeout(ctx, 5*time.Second)
	_, err = r2.ReceiveMessages(short, 1, nil)
	cancelShort()
	if err == nil || !strings.Contains(err.Error(), "requires sessions") {
		t.Errorf("a receiver without sessions on a queue with sessions: %v", err)
	}
	_ = r2.Close(context.Background())
	if err := d.CreateQueue(sessions, false); err == nil {
		t.Error("a queue in use changed its kind")
	}
	st := d.State(t)
	if st.Queues[plain].RequiresSession || !st.Queues[sessions].RequiresSession || st.Queues[plain].Counts.Completed != 3 {
		t.Errorf("state %+v", st.Queues)
	}
}

// The double's faults, each at a rate of 1: a message lost on its way in,
// one taken in twice, and one whose lock goes while the receiver holds it
// (its settlement refused, the message delivered again one count higher,
// then dead-lettered at the maximum delivery count). Off again, the double
// behaves as before.
func TestServiceBusFaults(t *testing.T) {
	d := StartServiceBus(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	client, err := azservicebus.NewClientFromConnectionString(d.ConnectionString(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close(context.Background())
	const queue = "faulty"
	sender, err := client.NewSender(queue, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sender.Close(context.Background())
	receiver, err := client.NewReceiverForQueue(queue, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer receiver.Close(context.Background())
	send := func(id string) {
		t.Helper()
		if err := sender.SendMessage(ctx, &azservicebus.Message{MessageID: &id, Body: []byte(id)}, nil); err != nil {
			t.Fatalf("sending %s: %v", id, err)
		}
	}
	receive := func() *azservicebus.ReceivedMessage {
		t.Helper()
		short, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		msgs, err := receiver.ReceiveMessages(short, 1, nil)
		if err != nil || len(msgs) != 1 {
			t.Fatalf("receiving: %d messages, %v", len(msgs), err)
		}
		return msgs[0]
	}
	setFaults := func(f ServiceBusFaults) {
		t.Helper()
		if err := d.SetFaults(f); err != nil {
			t.Fatal(err)
		}
	}

	setFaults(ServiceBusFaults{DropRate: 1})
	send("lost")
	setFaults(ServiceBusFaults{DuplicateRate: 1})
	send("twice")
	setFaults(ServiceBusFaults{})
	for range 2 {
		m := receive()
		if m.MessageID != "twice" {
			t.Errorf("received %s, want the message taken in twice", m.MessageID)
		}
		if err := receiver.CompleteMessage(ctx, m, nil); err != nil {
			t.Fatal(err)
		}
	}

	setFaults(ServiceBusFaults{LockLossRate: 1, LockLossAfter: 50 * time.Millisecond, MaxDeliveryCount: 2})
	send("unlocked")
	first := receive()
	time.Sleep(300 * time.Millisecond) // the lock goes meanwhile
	var sbErr *azservicebus.Error
	if err := receiver.CompleteMessage(ctx, first, nil); !errors.As(err, &sbErr) || sbErr.Code != azservicebus.CodeLockLost {
		t.Errorf("completing a message whose lock was lost: %v, want a lock-lost error", err)
	}
	again := receive()
	if again.MessageID != "unlocked" || again.DeliveryCount != first.DeliveryCount+1 {
		t.Errorf("redelivered %s with delivery count %d, want unlocked with %d", again.MessageID, again.DeliveryCount, first.DeliveryCount+1)
	}
	time.Sleep(300 * time.Millisecond) // the second loss reaches the maximum delivery count
	setFaults(ServiceBusFaults{MaxDeliveryCount: 10})

	send("plain")
	if m := receive(); m.MessageID != "plain" {
		t.Errorf("received %s, want plain", m.MessageID)
	} else if err := receiver.CompleteMessage(ctx, m, nil); err != nil {
		t.Errorf("completing without faults: %v", err)
	}
	q := d.State(t).Queues[queue]
	c := q.Counts
	if c.Dropped != 1 || c.Duplicated != 1 || c.LocksLost != 2 || c.Completed != 3 || c.DeadLettered != 1 || len(q.Active) != 0 {
		t.Errorf("counts %+v, active %v", c, q.Active)
	}
	if len(q.DeadLetters) != 1 || q.DeadLetters[0].MessageID != "unlocked" || q.DeadLetters[0].Reason != "MaxDeliveryCountExceeded" {
		t.Errorf("dead letters %+v", q.DeadLetters)
	}
}
