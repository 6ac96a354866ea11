// Package funcs speaks the Azure Functions custom handler protocol: the host
// forwards HTTP requests unchanged (they go to the REST API) and POSTs every
// other trigger to /{FunctionName} as an invocation payload. This package
// parses those payloads, defensively, as the host really encodes them, calls
// the jit use cases and answers in the host's response shape, always as
// application/json. A non-2xx answer fails the invocation, so the host
// redelivers a Service Bus message. It must not depend on storage, queue or
// Azure SDK packages.
//
// The worker function takes its queue in batches ("cardinality": "many",
// "dataType": "string" in functions/worker/function.json). What the host
// sends then, as read in its sources:
//
//   - The Service Bus extension (azure-sdk-for-net,
//     Microsoft.Azure.WebJobs.Extensions.ServiceBus,
//     ServiceBusTriggerBindingStrategy) names each binding datum of a batch
//     with "Array" appended (MessageIdArray, DeliveryCountArray,
//     EnqueuedTimeUtcArray, SessionIdArray, ...), one element per message.
//   - The host (azure-functions-host, ScriptInvocationContextExtensions.cs,
//     ToHttpScriptInvocationContext) sends every value that is not a JSON
//     object, arrays included, as a string holding its JSON text. With
//     dataType string the trigger value is the array of the bodies as
//     strings, so Data.msg is "[\"{...}\",\"{...}\"]". Without it the
//     host asks for object[] (GeneralScriptBindingProvider), and bodies
//     may come parsed as objects; batches have been seen to alter date
//     strings in bodies that way (azure-functions-servicebus-extension#232).
//     Strings, objects and a plain array are read all the same.
//   - The queue has no sessions. The extension's batch loop
//     (ServiceBusListener.RunBatchReceiveLoopAsync) then keeps one
//     receiver per instance, receives up to maxMessageBatchSize messages
//     in queue order, whatever their NSG, and invokes the function at a
//     concurrency of one: the next batch comes when this one is settled.
//     maxConcurrentCalls and maxConcurrentSessions do not apply to batches.
//     A failed invocation abandons every message of the batch. (With
//     sessions the same loop works one session, one NSG, at a time per
//     instance, waiting sessionIdleTimeout after each: far too slow for
//     a backlog over many NSGs, hence no sessions.)
//   - So a batch mixes NSGs. The worker groups its operations by NSG and
//     applies the groups in parallel (at most maxParallelNSGs at once),
//     each group with one ApplyOperations call: one whole-NSG write per
//     NSG per batch. Nothing orders one NSG's operations across batches or
//     instances, and nothing needs to: every operation is idempotent and
//     decided from the store's state, and the ARM driver writes an NSG
//     whole with If-Match (re-reading on 412) and retries ARM's "another
//     operation in progress" answers, so two instances writing one NSG
//     only wait for each other.
//   - Target-based scaling votes for messages / maxMessageBatchSize
//     instances for a batch function (ServiceBusTargetScaler): host.json's
//     maxMessageBatchSize is 100, not the default 1000, so that a backlog
//     gets instances sooner, an invocation stays well inside
//     functionTimeout (one round of parallel NSG writes, about 2 s each at
//     Azure's pace, per maxParallelNSGs NSGs of the batch), and one NSG's
//     group stays within one ARM write (jit applies at most 200 rule
//     changes per write).
package funcs

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"jitaccess/handler/jit"
)

// Function and binding names, as in functions/*/function.json.
const (
	WorkerFunction  = "worker"  // Service Bus trigger, binding "msg"
	EventsFunction  = "events"  // Event Grid trigger, binding "event"
	SweeperFunction = "sweeper" // timer trigger, binding "timer"

	workerBinding  = "msg"
	eventsBinding  = "event"
	sweeperBinding = "timer"
)

// Reconciler is what the sweeper and the event function call.
type Reconciler interface {
	Reconcile(ctx context.Context) (jit.SweepReport, error)
	HandleResourceEvent(ctx context.Context, ev jit.ResourceEvent) error
}

// Config configures the handler.
type Config struct {
	// API serves forwarded HTTP requests (/api/..., the portal).
	API http.Handler
	// Worker applies the queue's operations (jit.Applier).
	Worker jit.Worker
	// Reconciler sweeps and handles resource events (jit.Reconciler).
	Reconciler Reconciler
	// DecodeOperation turns a queue message body into an operation.
	DecodeOperation func([]byte) (jit.Operation, error)
	// MaxDeliveries is the queue's maximum delivery count: a failure on
	// that delivery is final (the message is dead-lettered; the sweeper
	// still closes what is due). Default 10.
	MaxDeliveries int64
	Log           zerolog.Logger
}

// Handler is the custom handler's HTTP surface.
type Handler struct {
	cfg Config
}

// New returns the handler.
func New(cfg Config) *Handler {
	if cfg.MaxDeliveries == 0 {
		cfg.MaxDeliveries = 10
	}
	return &Handler{cfg: cfg}
}

// maxInvocation bounds an invocation payload. Our messages are tiny (a few
// hundred bytes), but a batch brings up to host.json's maxMessageBatchSize
// of them (default 1000), each with its share of the metadata arrays.
const maxInvocation = 16 << 20

// outsideHeaders are headers that App Service's front end or its
// authentication adds to every request from outside, and that the host's own
// invocation requests never carry. The API function forwards every path, so
// POST /worker from the internet reaches this handler too: one with any of
// these headers is a forwarded request, not an invocation.
var outsideHeaders = []string{
	"X-Ms-Client-Principal", "X-Ms-Client-Principal-Id", "X-Ms-Client-Principal-Name", "X-Ms-Client-Principal-Idp",
	"Authorization", "Cookie", "X-Forwarded-For", "X-Original-Url", "X-Arr-Log-Id", "X-Client-Ip",
}

func fromOutside(h http.Header) bool {
	for _, k := range outsideHeaders {
		if _, ok := h[k]; ok {
			return true
		}
	}
	return false
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPost && !fromOutside(r.Header) {
		switch strings.TrimPrefix(r.URL.Path, "/") {
		case WorkerFunction:
			h.invoke(w, r, h.worker)
			return
		case EventsFunction:
			h.invoke(w, r, h.events)
			return
		case SweeperFunction:
			h.invoke(w, r, h.sweeper)
			return
		}
	}
	// Everything else is a forwarded HTTP request, at its original path. The
	// host's readiness probe (GET / until any answer) lands here too and gets
	// the portal page, which needs no store or network.
	h.cfg.API.ServeHTTP(w, r)
}

// invoke parses the payload, runs fn and writes the host's response.
func (h *Handler) invoke(w http.ResponseWriter, r *http.Request, fn func(context.Context, invocation) (string, error)) {
	id := r.Header.Get("X-Azure-Functions-InvocationId")
	body, err := io.ReadAll(io.LimitReader(r.Body, maxInvocation+1))
	if err == nil && len(body) > maxInvocation {
		err = fmt.Errorf("invocation payload is larger than %d bytes", maxInvocation)
	}
	var inv invocation
	if err == nil {
		inv, err = parseInvocation(body)
	}
	logs := []string{}
	status := http.StatusOK
	if err == nil {
		var msg string
		msg, err = fn(r.Context(), inv)
		if msg != "" {
			logs = append(logs, msg)
		}
	}
	if err != nil {
		status = http.StatusInternalServerError
		logs = append(logs, err.Error())
		h.cfg.Log.Warn().Err(err).Str("function", r.URL.Path).Str("invocation", id).Msg("invocation failed")
	}
	b, _ := json.Marshal(response{Outputs: map[string]any{}, Logs: logs})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// worker applies the operations of a batch of queue messages (one message
// is a batch of one). The host settles a batch as a whole: it completes
// every message when the invocation succeeds and abandons every one when
// it fails, so the invocation fails when any message's operation did, and
// the whole batch comes again. That is safe because operations are
// idempotent: an open rule is not opened again, a closed one not closed.
//
// A message that cannot be read does not keep the others from being
// applied: the readable ones are applied, then the invocation fails, so
// the unreadable one is delivered again (an instance of a newer release
// may read it) until the queue dead-letters it after its maximum delivery
// count. Its batch companions ride along and are found done each time.
func (h *Handler) worker(ctx context.Context, inv invocation) (string, error) {
	msgs, err := queueMessages(inv, workerBinding)
	if err != nil {
		return "", err
	}
	var (
		ops    []jit.Operation
		opMsg  []queueMessage // the message of each op
		failed []string       // what failed, for the host's log
		oldest time.Time
	)
	for _, m := range msgs {
		if !m.Enqueued.IsZero() && (oldest.IsZero() || m.Enqueued.Before(oldest)) {
			oldest = m.Enqueued
		}
		op, err := h.cfg.DecodeOperation(m.Body)
		if err != nil {
			log := h.messageLog(m)
			// A message we cannot read will never be readable by this
			// release: say so and let the host dead-letter it after its
			// deliveries.
			if h.lastDelivery(m) {
				log.Error().Err(err).Msg("unreadable message on its last delivery; it is dead-lettered")
			} else {
				log.Warn().Err(err).Msg("unreadable message; the batch is delivered again")
			}
			failed = append(failed, fmt.Sprintf("reading the queue message %s: %v", m.ID, err))
			continue
		}
		ops = append(ops, op)
		opMsg = append(opMsg, m)
	}

	groups := groupByNSG(ops)
	errs := h.applyGroups(ctx, ops, groups)
	applied := make([]bool, len(ops))
	for i, err := range errs {
		if err == nil {
			applied[i] = true
			continue
		}
		log := h.opLog(ops[i], opMsg[i])
		if h.lastDelivery(opMsg[i]) {
			log.Error().Err(err).Msg("last delivery failed; the message is dead-lettered and the sweeper closes what is due")
		} else {
			log.Warn().Err(err).Msg("operation failed; the batch is delivered again")
		}
		failed = append(failed, fmt.Sprintf("applying %s: %v", ops[i].ID, err))
	}

	if len(failed) > 0 {
		// The whole batch is abandoned: an op applied on its message's
		// last delivery is dead-lettered all the same.
		for i, ok := range applied {
			if ok && h.lastDelivery(opMsg[i]) {
				log := h.opLog(ops[i], opMsg[i])
				log.Warn().Msg("applied, but its batch failed on the message's last delivery; it is dead-lettered though done")
			}
		}
		// Each failure was logged above; the host's log gets the first few.
		summary := strings.Join(failed[:min(len(failed), maxListed)], "; ")
		if len(failed) > maxListed {
			summary += fmt.Sprintf("; and %d more", len(failed)-maxListed)
		}
		return "", fmt.Errorf("%d of %d queue messages failed; the host abandons the batch: %s", len(failed), len(msgs), summary)
	}
	ev := h.cfg.Log.Debug().Int("messages", len(msgs)).Int("nsgs", len(groups))
	if !oldest.IsZero() {
		ev = ev.Dur("queued", time.Since(oldest))
	}
	ev.Msg("operations applied")
	return fmt.Sprintf("applied %d operations on %d NSGs", len(ops), len(groups)), nil
}

// maxListed bounds the failures a failed invocation names in its result.
const maxListed = 5

// maxParallelNSGs bounds the NSGs of one batch applied at once. Each is one
// whole-NSG ARM write of about 2 s: 16 at once is about 8 writes a second,
// under the 10 a second that refill ARM's write bucket of a subscription,
// so one instance's batch does not drain it (instances together may; the
// ARM driver waits out 429s). A batch over more NSGs takes more rounds.
const maxParallelNSGs = 16

// applyGroups applies each group of ops (indexes into ops, one NSG each)
// with one ApplyOperations call, up to maxParallelNSGs groups at once, and
// returns the outcome of every op. Groups of different NSGs touch
// different NSGs and store rows; an NSG is never in two groups.
func (h *Handler) applyGroups(ctx context.Context, ops []jit.Operation, groups [][]int) []error {
	errs := make([]error, len(ops))
	slots := make(chan struct{}, maxParallelNSGs)
	var wg sync.WaitGroup
	for _, group := range groups {
		slots <- struct{}{}
		wg.Go(func() {
			defer func() { <-slots }()
			batch := make([]jit.Operation, len(group))
			for k, i := range group {
				batch[k] = ops[i]
			}
			out := h.cfg.Worker.ApplyOperations(ctx, batch)
			for k, i := range group {
				if len(out) != len(batch) {
					errs[i] = fmt.Errorf("the service gave %d outcomes for %d operations", len(out), len(batch))
				} else {
					errs[i] = out[k]
				}
			}
		})
	}
	wg.Wait()
	return errs
}

// groupByNSG returns the indexes of ops by NSG, in the order each NSG first
// appears and, within one, in queue order. A batch from the queue mixes
// NSGs, and ApplyOperations takes one NSG at a time. (Quadratic, but a
// batch holds at most maxMessageBatchSize operations.)
func groupByNSG(ops []jit.Operation) [][]int {
	var groups [][]int
next:
	for i, op := range ops {
		for g, group := range groups {
			if jit.SameID(ops[group[0]].NSG, op.NSG) {
				groups[g] = append(group, i)
				continue next
			}
		}
		groups = append(groups, []int{i})
	}
	return groups
}

// lastDelivery reports whether a failure now is final for m: the queue
// dead-letters it instead of delivering it again.
func (h *Handler) lastDelivery(m queueMessage) bool { return m.Deliveries >= h.cfg.MaxDeliveries }

func (h *Handler) messageLog(m queueMessage) zerolog.Logger {
	return h.cfg.Log.With().Str("messageId", m.ID).Int64("delivery", m.Deliveries).Logger()
}

func (h *Handler) opLog(op jit.Operation, m queueMessage) zerolog.Logger {
	return h.cfg.Log.With().Str("op", op.ID).Str("kind", op.Kind).Str("nsg", op.NSG).
		Str("messageId", m.ID).Int64("delivery", m.Deliveries).Logger()
}

// gridEvent is an Event Grid event (Event Grid schema).
type gridEvent struct {
	ID        string          `json:"id"`
	Topic     string          `json:"topic"`
	Subject   string          `json:"subject"`
	EventType string          `json:"eventType"`
	EventTime string          `json:"eventTime"`
	Data      json.RawMessage `json:"data"`
}

// caller is the client id that made the change: the appid claim of the
// event's data (Event Grid's resource events carry the caller's claims).
func (e gridEvent) caller() string {
	var data struct {
		Claims map[string]any `json:"claims"`
	}
	if json.Unmarshal(e.Data, &data) != nil {
		return ""
	}
	appid, _ := data.Claims["appid"].(string)
	return appid
}

// events reacts to a resource event: drift is repaired or reported at once.
func (h *Handler) events(ctx context.Context, inv invocation) (string, error) {
	raw, ok := inv.Data[eventsBinding]
	if !ok {
		return "", fmt.Errorf("invocation has no Data.%s", eventsBinding)
	}
	var ev gridEvent
	if err := json.Unmarshal(hostValue(raw), &ev); err != nil {
		return "", fmt.Errorf("reading the event: %w", err)
	}
	if ev.ID == "" || ev.EventType == "" {
		return "", fmt.Errorf("the event has no id or eventType")
	}
	h.cfg.Log.Info().Str("event", ev.ID).Str("type", ev.EventType).Str("subject", ev.Subject).Msg("resource event")
	if err := h.cfg.Reconciler.HandleResourceEvent(ctx, jit.ResourceEvent{ID: ev.ID, Type: ev.EventType, Subject: ev.Subject, Caller: ev.caller()}); err != nil {
		return "", fmt.Errorf("handling event %s: %w", ev.ID, err)
	}
	return "event " + ev.ID + " handled", nil
}

// sweeper reconciles every NSG on the timer: overdue grants close, drift
// is repaired.
func (h *Handler) sweeper(ctx context.Context, inv invocation) (string, error) {
	var timer struct {
		IsPastDue bool `json:"IsPastDue"`
	}
	if raw, ok := inv.Data[sweeperBinding]; ok {
		_ = json.Unmarshal(hostValue(raw), &timer)
	}
	rep, err := h.cfg.Reconciler.Reconcile(ctx)
	if err != nil {
		return "", fmt.Errorf("sweep: %w", err)
	}
	return fmt.Sprintf("sweep over %d NSGs: %d closed, %d orphans removed, %d repaired, %d deny rules restored (past due: %v)",
		rep.NSGs, rep.Closed, rep.Orphans, rep.Repaired, rep.DenyRestored, timer.IsPastDue), nil
}
