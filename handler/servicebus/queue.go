// Package servicebus is the Azure Service Bus adapter of jit.Queue: it puts
// operations on one queue without sessions, where the Functions host's
// Service Bus trigger picks them up in batches and hands the bodies to the
// worker, which turns each back into a jit.Operation with DecodeOperation.
//
// Nothing orders one NSG's operations here: a batch mixes NSGs (the worker
// groups them and applies the groups in parallel), and two host instances
// may hold operations of one NSG at once. That is safe because every
// operation is idempotent and decided from the store's state, not from the
// order it comes in, and the ARM driver writes an NSG whole with If-Match
// (re-reading on 412) and retries ARM's "another operation in progress"
// answers: two writers of one NSG only wait for each other. Sessions (one
// per NSG) would order them, but the host's batch trigger then works one
// session at a time per instance, one NSG write after another.
//
// Operations due later are scheduled messages; none is ever cancelled (a
// close that comes before its grant's new end, or after a revoke, is a
// no-op). Each message id is the operation's deterministic id, so the
// queue's duplicate detection drops an operation enqueued twice.
//
// It depends on jit and the Azure SDK's azservicebus only; it knows nothing
// of HTTP, the Functions host protocol or the store.
package servicebus

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"

	"jitaccess/handler/jit"
)

// DefaultQueueName is the queue's name unless settings say otherwise.
const DefaultQueueName = "jit-operations"

// ContentType is the content type of every operation message.
const ContentType = "application/json"

// Queue implements jit.Queue on one Service Bus queue without sessions.
type Queue struct {
	client *azservicebus.Client
	sender *azservicebus.Sender
	name   string
	// now decides whether an operation is due already. Service Bus itself
	// releases scheduled messages by its own clock; this only chooses
	// between sending and scheduling.
	now func() time.Time
}

var _ jit.Queue = (*Queue)(nil)

// New returns a Queue that sends to the named queue (DefaultQueueName when
// empty) through client. The client stays the caller's to close.
func New(client *azservicebus.Client, queue string) (*Queue, error) {
	if client == nil {
		return nil, errors.New("servicebus: nil client")
	}
	if queue == "" {
		queue = DefaultQueueName
	}
	sender, err := client.NewSender(queue, nil)
	if err != nil {
		return nil, fmt.Errorf("creating a sender for queue %q: %w", queue, err)
	}
	return &Queue{client: client, sender: sender, name: queue, now: time.Now}, nil
}

// NewClientFromConnectionString returns a client for a connection string,
// including an emulator's ("...;UseDevelopmentEmulator=true", which dials
// plain AMQP on the endpoint's host and port).
func NewClientFromConnectionString(conn string) (*azservicebus.Client, error) {
	c, err := azservicebus.NewClientFromConnectionString(conn, nil)
	if err != nil {
		// The SDK's message can quote the connection string, key included.
		return nil, errors.New("creating a Service Bus client: invalid connection string")
	}
	return c, nil
}

// NewClient returns a client for a namespace ("<ns>.servicebus.windows.net")
// that authenticates with cred, such as a managed identity.
// endpoint, when not empty, is the host:port to connect to instead of the
// namespace's own address; the namespace still names the audience and the
// TLS server name.
func NewClient(namespace, endpoint string, cred azcore.TokenCredential) (*azservicebus.Client, error) {
	c, err := azservicebus.NewClient(namespace, cred, &azservicebus.ClientOptions{CustomEndpoint: endpoint})
	if err != nil {
		return nil, fmt.Errorf("creating a Service Bus client for %s: %w", namespace, err)
	}
	return c, nil
}

// Name returns the queue's name.
func (q *Queue) Name() string { return q.name }

// Close closes the sender; the client stays open.
func (q *Queue) Close(ctx context.Context) error {
	if err := q.sender.Close(ctx); err != nil {
		return fmt.Errorf("closing the sender of queue %q: %w", q.name, err)
	}
	return nil
}

// Enqueue sends the operations due now in batches and schedules the others
// at their due time. An operation given twice is sent once.
func (q *Queue) Enqueue(ctx context.Context, ops []jit.Operation) error {
	first := map[string]int{} // operation ID -> index of its first occurrence
	var now []int
	later := map[time.Time][]int{}
	var dues []time.Time
	at := q.now()
	for i, op := range ops {
		if err := validate(op); err != nil {
			return err
		}
		if _, dup := first[op.ID]; dup {
			continue
		}
		first[op.ID] = i
		if !op.Due.After(at) {
			now = append(now, i)
			continue
		}
		due := scheduleTime(op.Due)
		if _, ok := later[due]; !ok {
			dues = append(dues, due)
		}
		later[due] = append(later[due], i)
	}

	if err := q.send(ctx, ops, now); err != nil {
		return err
	}

	slices.SortFunc(dues, func(a, b time.Time) int { return a.Compare(b) })
	for _, due := range dues {
		idx := later[due]
		msgs := make([]*azservicebus.Message, len(idx))
		for k, i := range idx {
			m, err := newMessage(ops[i])
			if err != nil {
				return err
			}
			msgs[k] = m
		}
		if _, err := q.sender.ScheduleMessages(ctx, msgs, due, nil); err != nil {
			return unavailable(err, "scheduling operations on Service Bus")
		}
	}
	return nil
}

// scheduleTime rounds up to the millisecond: AMQP timestamps have
// milliseconds, and rounding down would let an operation run before it is
// due.
func scheduleTime(due time.Time) time.Time {
	t := due.Truncate(time.Millisecond)
	if t.Before(due) {
		t = t.Add(time.Millisecond)
	}
	return t.UTC()
}

// send sends ops[idx...] in as few batches as they fit in.
func (q *Queue) send(ctx context.Context, ops []jit.Operation, idx []int) error {
	if len(idx) == 0 {
		return nil
	}
	batch, err := q.sender.NewMessageBatch(ctx, nil)
	if err != nil {
		return unavailable(err, "sending operations to Service Bus")
	}
	for _, i := range idx {
		m, err := newMessage(ops[i])
		if err != nil {
			return err
		}
		err = batch.AddMessage(m, nil)
		if errors.Is(err, azservicebus.ErrMessageTooLarge) && batch.NumMessages() > 0 {
			if err := q.sender.SendMessageBatch(ctx, batch, nil); err != nil {
				return unavailable(err, "sending operations to Service Bus")
			}
			if batch, err = q.sender.NewMessageBatch(ctx, nil); err != nil {
				return unavailable(err, "sending operations to Service Bus")
			}
			err = batch.AddMessage(m, nil)
		}
		if err != nil {
			return jit.Wrap(jit.EINTERNAL, err, "sending operations to Service Bus")
		}
	}
	if err := q.sender.SendMessageBatch(ctx, batch, nil); err != nil {
		return unavailable(err, "sending operations to Service Bus")
	}
	return nil
}

func unavailable(err error, what string) error {
	return jit.Wrap(jit.EUNAVAILABLE, err, what)
}

func newMessage(op jit.Operation) (*azservicebus.Message, error) {
	body, err := EncodeOperation(op)
	if err != nil {
		return nil, err
	}
	return &azservicebus.Message{
		MessageID:   &op.ID,
		ContentType: new(ContentType),
		Subject:     new(op.Kind),
		Body:        body,
	}, nil
}
