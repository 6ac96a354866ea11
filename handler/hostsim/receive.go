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
// maxConcurrentSessions session receivers, as each host instance has. With
// "cardinality": "many" an instance has one: the extension's batch loop
// (ServiceBusListener.RunBatchReceiveLoopAsync in
// Microsoft.Azure.WebJobs.Extensions.ServiceBus) accepts one session,
// invokes the function at a concurrency of one, and takes the next session
// only after a receive has waited sessionIdleTimeout in vain;
// maxConcurrentSessions applies to single dispatch only.
func (h *Host) startReceivers() error {
	if h.worker == nil {
		return nil
	}
	receivers := h.settings.ServiceBus.MaxConcurrentSessions
	if h.trigger.Many() {
		receivers = 1
	}
	for _, in := range h.instances {
		c, err := azservicebus.NewClientFromConnectionString(h.cfg.HostServiceBus, nil)
		if err != nil {
			return fmt.Errorf("connecting the host to Service Bus: %w", err)
		}
		in.sb = c
		for range receivers {
			in.receivers.Add(1)
			go h.receiveSessions(in)
		}
	}
	return nil
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

// workSession delivers a session's messages in order: one per invocation,
// or up to maxMessageBatchSize per invocation for "cardinality": "many".
func (h *Host) workSession(in *Instance, sess *azservicebus.SessionReceiver) {
	n := 1
	if h.trigger.Many() {
		n = h.settings.ServiceBus.MaxMessageBatchSize
	}
	for in.ctx.Err() == nil {
		ctx, cancel := context.WithTimeout(in.ctx, h.settings.ServiceBus.SessionIdleTimeout)
		msgs, err := sess.ReceiveMessages(ctx, n, nil)
		cancel()
		if err != nil || len(msgs) == 0 {
			return
		}
		in.counts.update(func(s *Stats) { s.Receives++; s.Received += int64(len(msgs)) })
		if h.trigger.Many() {
			h.settle(in, sess, msgs, h.deliverBatch(in, msgs))
			continue
		}
		for _, m := range msgs {
			h.settle(in, sess, []*azservicebus.ReceivedMessage{m}, h.deliverOne(in, m))
		}
	}
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
func (h *Host) settle(in *Instance, sess *azservicebus.SessionReceiver, msgs []*azservicebus.ReceivedMessage, ok bool) {
	if in.down.Load() {
		return // a dead instance settles nothing: its locks go with its connection
	}
	ctx, cancel := context.WithTimeout(context.Background(), settleTimeout)
	defer cancel()
	for _, m := range msgs {
		var err error
		if ok {
			err = sess.CompleteMessage(ctx, m, nil)
		} else {
			err = sess.AbandonMessage(ctx, m, nil)
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
