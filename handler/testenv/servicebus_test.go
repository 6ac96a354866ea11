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
