// Package funcs speaks the Azure Functions custom handler protocol: the host
// forwards HTTP requests unchanged (they go to the REST API) and POSTs every
// other trigger to /{FunctionName} as an invocation payload. This package
// parses those payloads, defensively, as the host really encodes them, calls
// the jit use cases and answers in the host's response shape, always as
// application/json. A non-2xx answer fails the invocation, so the host
// redelivers a Service Bus message. It must not depend on storage, queue or
// Azure SDK packages.
package funcs

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
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

// Service is what the functions call.
type Service interface {
	ApplyOperation(ctx context.Context, op jit.Operation) error
	Reconcile(ctx context.Context) (jit.SweepReport, error)
	HandleResourceEvent(ctx context.Context, ev jit.ResourceEvent) error
}

// Config configures the handler.
type Config struct {
	// API serves forwarded HTTP requests (/api/..., the portal).
	API http.Handler
	// Service runs operations and sweeps.
	Service Service
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

// maxInvocation bounds an invocation payload (a Service Bus message is at
// most 256 KiB on the standard tier, 100 MiB on premium; ours are tiny).
const maxInvocation = 1 << 20

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

// worker applies one operation from the queue.
func (h *Handler) worker(ctx context.Context, inv invocation) (string, error) {
	raw, ok := inv.Data[workerBinding]
	if !ok {
		return "", fmt.Errorf("invocation has no Data.%s", workerBinding)
	}
	op, err := h.cfg.DecodeOperation(hostValue(raw))
	if err != nil {
		// A message we cannot read will never be readable: say so and
		// let the host dead-letter it after its deliveries.
		return "", fmt.Errorf("reading the queue message %s: %w", metaString(inv.Metadata, "MessageId"), err)
	}
	deliveries, _ := metaInt(inv.Metadata, "DeliveryCount")
	log := h.cfg.Log.With().Str("op", op.ID).Str("kind", op.Kind).Int64("delivery", deliveries).Logger()
	if enq, ok := metaTime(inv.Metadata, "EnqueuedTimeUtc"); ok {
		log = log.With().Dur("queued", time.Since(enq)).Logger()
	}
	if err := h.cfg.Service.ApplyOperation(ctx, op); err != nil {
		if deliveries >= h.cfg.MaxDeliveries {
			log.Error().Err(err).Msg("last delivery failed; the message is dead-lettered and the sweeper closes what is due")
		}
		return "", fmt.Errorf("applying %s: %w", op.ID, err)
	}
	log.Debug().Msg("operation applied")
	return "applied " + op.ID, nil
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
	if err := h.cfg.Service.HandleResourceEvent(ctx, jit.ResourceEvent{ID: ev.ID, Type: ev.EventType, Subject: ev.Subject}); err != nil {
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
	rep, err := h.cfg.Service.Reconcile(ctx)
	if err != nil {
		return "", fmt.Errorf("sweep: %w", err)
	}
	return fmt.Sprintf("sweep over %d NSGs: %d closed, %d orphans removed, %d repaired, %d deny rules restored (past due: %v)",
		rep.NSGs, rep.Closed, rep.Orphans, rep.Repaired, rep.DenyRestored, timer.IsPastDue), nil
}
