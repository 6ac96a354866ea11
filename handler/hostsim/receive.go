package hostsim

import (
	"context"
	"fmt"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"
)

// acceptWait bounds one wait for a session with messages; the receiver
// then asks again, so Close is heard within it.
const acceptWait = 2 * time.Second

// settleTimeout bounds a complete or abandon.
const settleTimeout = 30 * time.Second

// startReceivers gives every instance its own Service Bus connection and
// the receive loops the Service Bus extension's listener
// (ServiceBusListener in Microsoft.Azure.WebJobs.Extensions.ServiceBus)
// runs on each host instance:
//
//   - "cardinality": "many": one loop (RunBatchReceiveLoopAsync), which
//     invokes the function at a concurrency of one. Without sessions it
//     receives up to maxMessageBatchSize messages of any kind from one
//     receiver; with sessions it accepts one session, works it until a
//     receive has waited sessionIdleTimeout in vain, and takes the next.
//     maxConcurrentCalls and maxConcurrentSessions do not apply.
//   - one message per invocation: the SDK's processor, maxConcurrentCalls
//     messages at once without sessions, maxConcurrentSessions sessions at
//     once (one message at a time each) with sessions.
func (h *Host) startReceivers() error {
	if h.worker == nil {
		return nil
	}
	for _, in := range h.instances {
		if err := h.receive(in); err != nil {
			return err
		}
	}
	return nil
}

// receive connects one instance to Service Bus and starts its receive
// loops.
func (h *Host) receive(in *Instance) error {
	if h.worker == nil {
		return nil
	}
	loops := h.settings.ServiceBus.MaxConcurrentCalls
	if h.trigger.IsSessionsEnabled {
		loops = h.settings.ServiceBus.MaxConcurrentSessions
	}
	if h.trigger.Many() {
		loops = 1
	}
	c, err := azservicebus.NewClientFromConnectionString(h.cfg.HostServiceBus, nil)
	if err != nil {
		return fmt.Errorf("connecting the host to Service Bus: %w", err)
	}
	in.sb = c
	for range loops {
		if h.trigger.IsSessionsEnabled {
			in.receivers.Add(1)
			go h.receiveSessions(in)
			continue
		}
		r, err := c.NewReceiverForQueue(h.queue, nil)
		if err != nil {
			return fmt.Errorf("receiving queue %s: %w", h.queue, err)
		}
		in.receivers.Add(1)
		go h.receiveQueue(in, r)
	}
	return nil
}

// receiver settles messages: a Receiver or a SessionReceiver.
type receiver interface {
	ReceiveMessages(ctx context.Context, maxMessages int, options *azservicebus.ReceiveMessagesOptions) ([]*azservicebus.ReceivedMessage, error)
	CompleteMessage(ctx context.Context, m *azservicebus.ReceivedMessage, options *azservicebus.CompleteMessageOptions) error
	AbandonMessage(ctx context.Context, m *azservicebus.ReceivedMessage, options *azservicebus.AbandonMessageOptions) error
}

// receiveQueue receives a queue without sessions until Close: a batch of
// up to maxMessageBatchSize messages per invocation for "cardinality":
// "many", else one message per invocation. A receive waits until a message
// comes (the extension waits its client's try timeout, then asks again).
func (h *Host) receiveQueue(in *Instance, r *azservicebus.Receiver) {
	defer in.receivers.Done()
	for in.ctx.Err() == nil {
		if err := h.receiveOnce(in.ctx, in, r); err != nil {
			// A failure that came at once is not retried in a tight loop.
			select {
			case <-in.ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
	// A killed instance's receiver goes with its connection, unsettled.
	if !in.down.Load() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = r.Close(ctx)
		cancel()
	}
}

// receiveSessions takes the next session with messages, works through it
// until it has been idle for sessionIdleTimeout, lets it go, and takes the
// next, until Close.
func (h *Host) receiveSessions(in *Instance) {
	defer in.receivers.Done()
	for in.ctx.Err() == nil {
		start := time.Now()
		ctx, cancel := context.WithTimeout(in.ctx, acceptWait)
		sess, err := in.sb.AcceptNextSessionForQueue(ctx, h.queue, nil)
		cancel()
		if err != nil {
			// No session with messages within acceptWait; a failure that
			// came at once is not retried in a tight loop.
			if time.Since(start) < 100*time.Millisecond {
				select {
				case <-in.ctx.Done():
				case <-time.After(200 * time.Millisecond):
				}
			}
			continue
		}
		in.counts.update(func(s *Stats) { s.Sessions++ })
		h.workSession(in, sess)
		if in.down.Load() {
			return // the connection's end lets the session go
		}
		ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
		_ = sess.Close(ctx)
		cancel()
	}
}

// workSession delivers a session's messages in order until a receive has
// waited sessionIdleTimeout in vain.
func (h *Host) workSession(in *Instance, sess *azservicebus.SessionReceiver) {
	for in.ctx.Err() == nil {
		ctx, cancel := context.WithTimeout(in.ctx, h.settings.ServiceBus.SessionIdleTimeout)
		err := h.receiveOnce(ctx, in, sess)
		cancel()
		if err != nil {
			return
		}
	}
}

// receiveOnce receives what ctx allows and delivers it: one invocation
// for "cardinality": "many", one per message otherwise. An error (nothing
// received) says the receive came back empty.
func (h *Host) receiveOnce(ctx context.Context, in *Instance, r receiver) error {
	n := 1
	if h.trigger.Many() {
		n = h.settings.ServiceBus.MaxMessageBatchSize
	}
	msgs, err := r.ReceiveMessages(ctx, n, nil)
	if len(msgs) == 0 {
		if err == nil {
			err = fmt.Errorf("no messages")
		}
		return err
	}
	in.counts.update(func(s *Stats) { s.Receives++; s.Received += int64(len(msgs)) })
	if h.trigger.Many() {
		h.settle(in, r, msgs, h.deliverBatch(in, msgs))
		return nil
	}
	for _, m := range msgs {
		h.settle(in, r, []*azservicebus.ReceivedMessage{m}, h.deliverOne(in, m))
	}
	return nil
}

// deliverOne invokes the worker with one message; true when it succeeded.
// An invocation under way is not cut by Close, only by Kill.
func (h *Host) deliverOne(in *Instance, m *azservicebus.ReceivedMessage) bool {
	twice := in.singles.Add(1)%2 == 0 // every other body is encoded twice
	inv := singlePayload(h.worker.Name, h.trigger.Name, m, twice)
	in.counts.update(func(s *Stats) { s.Messages++ })
	_, err := h.invoke(in.alive, in, h.worker.Name, inv)
	return err == nil
}

// deliverBatch invokes the worker with a batch; true when it succeeded.
func (h *Host) deliverBatch(in *Instance, msgs []*azservicebus.ReceivedMessage) bool {
	inv := batchPayload(h.worker.Name, h.trigger.Name, msgs)
	in.counts.update(func(s *Stats) { s.Messages += int64(len(msgs)) })
	_, err := h.invoke(in.alive, in, h.worker.Name, inv)
	return err == nil
}

// settle completes the messages of a successful invocation and abandons
// those of a failed one (all of a batch), as autoCompleteMessages does.
func (h *Host) settle(in *Instance, r receiver, msgs []*azservicebus.ReceivedMessage, ok bool) {
	if in.down.Load() {
		return // a dead instance settles nothing: its locks go with its connection
	}
	ctx, cancel := context.WithTimeout(context.Background(), settleTimeout)
	defer cancel()
	for _, m := range msgs {
		var err error
		if ok {
			err = r.CompleteMessage(ctx, m, nil)
		} else {
			err = r.AbandonMessage(ctx, m, nil)
		}
		in.counts.update(func(s *Stats) {
			switch {
			case err != nil:
				s.SettleErrors++
			case ok:
				s.Completes++
			default:
				s.Abandons++
			}
		})
		if err != nil {
			h.logf("instance %d: settling message %s: %v", in.index, m.MessageID, err)
		}
	}
}
