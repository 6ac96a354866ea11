// Package webhook delivers jit notifications to an incoming webhook
// (JIT_WEBHOOK_URL) as JSON that Microsoft Teams and Slack incoming webhooks
// accept: a "text" line for people, and the event's fields under "jitaccess"
// for machines. Delivery runs in the background with retries and backoff;
// Notify never blocks, and when the backlog is full the oldest notification
// is dropped and logged. It must not depend on anything but jit.
package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/rs/zerolog"

	"jitaccess/handler/jit"
)

// Options tune delivery.
type Options struct {
	Client       *http.Client  // default: 10 s timeout
	Backlog      int           // notifications waiting; default 1000
	MaxAttempts  int           // per notification; default 6
	InitialDelay time.Duration // first retry; default 1 s, doubling
	MaxDelay     time.Duration // default 1 min
	Log          zerolog.Logger
}

// Notifier posts notifications to one webhook URL.
type Notifier struct {
	url  string
	opts Options
	ch   chan jit.Notification
	done chan struct{}
	// mu guards ch against a send after Close closed it: Notify holds it
	// for reading (it never blocks), Close for writing.
	mu     sync.RWMutex
	closed bool
	stop   context.CancelFunc
	ctx    context.Context
}

var _ jit.Notifier = (*Notifier)(nil)

// New starts a Notifier for url. Close stops it.
func New(url string, opts Options) (*Notifier, error) {
	if !strings.HasPrefix(url, "https://") && !strings.HasPrefix(url, "http://127.0.0.1") && !strings.HasPrefix(url, "http://localhost") {
		return nil, fmt.Errorf("JIT_WEBHOOK_URL must be an https URL")
	}
	if opts.Client == nil {
		opts.Client = &http.Client{Timeout: 10 * time.Second}
	}
	if opts.Backlog <= 0 {
		opts.Backlog = 1000
	}
	if opts.MaxAttempts <= 0 {
		opts.MaxAttempts = 6
	}
	if opts.InitialDelay <= 0 {
		opts.InitialDelay = time.Second
	}
	if opts.MaxDelay <= 0 {
		opts.MaxDelay = time.Minute
	}
	ctx, stop := context.WithCancel(context.Background())
	n := &Notifier{url: url, opts: opts, ch: make(chan jit.Notification, opts.Backlog), done: make(chan struct{}), ctx: ctx, stop: stop}
	go n.run()
	return n, nil
}

// Notify queues a notification and returns at once. After Close it drops
// the notification and says so in the log.
func (n *Notifier) Notify(ev jit.Notification) {
	n.mu.RLock()
	defer n.mu.RUnlock()
	if n.closed {
		n.opts.Log.Warn().Str("event", ev.Event).Str("request", ev.Request).Msg("webhook notifier closed; notification dropped")
		return
	}
	for {
		select {
		case n.ch <- ev:
			return
		default:
		}
		// Full: drop the oldest so the newest news gets through.
		select {
		case old := <-n.ch:
			n.opts.Log.Warn().Str("event", old.Event).Str("request", old.Request).Msg("webhook backlog full; notification dropped")
		default:
		}
	}
}

// Close stops delivery after trying what is queued until ctx ends.
func (n *Notifier) Close(ctx context.Context) {
	n.mu.Lock()
	if !n.closed {
		n.closed = true
		close(n.ch)
	}
	n.mu.Unlock()
	select {
	case <-n.done:
	case <-ctx.Done():
		n.stop()
		<-n.done
	}
}

func (n *Notifier) run() {
	defer close(n.done)
	for ev := range n.ch {
		n.deliver(ev)
	}
}

// deliver posts one notification, retrying failures with jittered
// exponential backoff; 4xx other than 408 and 429 is final.
func (n *Notifier) deliver(ev jit.Notification) {
	body, err := json.Marshal(payload(ev))
	if err != nil {
		return
	}
	delay := n.opts.InitialDelay
	for attempt := 1; ; attempt++ {
		status, err := n.post(body)
		if err == nil && status/100 == 2 {
			return
		}
		final := attempt >= n.opts.MaxAttempts || err == nil && status/100 == 4 && status != 408 && status != 429
		n.opts.Log.Warn().Err(err).Int("status", status).Int("attempt", attempt).Bool("final", final).
			Str("event", ev.Event).Str("request", ev.Request).Msg("webhook delivery failed")
		if final {
			return
		}
		wait := delay/2 + rand.N(delay/2+1)
		select {
		case <-time.After(wait):
		case <-n.ctx.Done():
			return
		}
		delay = min(2*delay, n.opts.MaxDelay)
	}
}

func (n *Notifier) post(body []byte) (int, error) {
	req, err := http.NewRequestWithContext(n.ctx, http.MethodPost, n.url, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := n.opts.Client.Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// message is what the webhook receives.
type message struct {
	Text      string    `json:"text"`
	JITAccess eventBody `json:"jitaccess"`
}

type eventBody struct {
	Event     string     `json:"event"`
	TimeUtc   time.Time  `json:"timeUtc"`
	Request   string     `json:"request,omitempty"`
	Policy    string     `json:"policy,omitempty"`
	Requestor string     `json:"requestor,omitempty"`
	Actor     string     `json:"actor,omitempty"`
	VMs       []string   `json:"vms,omitempty"`
	Ports     []int      `json:"ports,omitempty"`
	Sources   []string   `json:"sources,omitempty"`
	EndUtc    *time.Time `json:"endTimeUtc,omitempty"`
	Detail    string     `json:"detail,omitempty"`
}

var verbs = map[string]string{
	jit.EventPending:  "asks for access (waiting for approval)",
	jit.EventApproved: "was approved",
	jit.EventDenied:   "was denied",
	jit.EventOpened:   "is open",
	jit.EventClosed:   "is closed",
	jit.EventRevoked:  "was revoked",
	jit.EventFailed:   "failed",
	jit.EventDrift:    "drift found",
}

// payload renders a notification; the text names VMs by name only.
func payload(ev jit.Notification) message {
	var vms []string
	for _, id := range ev.VMs {
		vms = append(vms, escapeMarkup(jit.ResourceName(id)))
	}
	ports := make([]string, len(ev.Ports))
	for i, p := range ev.Ports {
		ports[i] = fmt.Sprint(p)
	}
	text := fmt.Sprintf("jitaccess: request %s by %s %s", ev.Request, userText(ev.Requestor), verbs[ev.Event])
	if len(vms) > 0 {
		text += fmt.Sprintf(": %s port %s", strings.Join(vms, ", "), strings.Join(ports, ", "))
	}
	if !ev.End.IsZero() && (ev.Event == jit.EventOpened || ev.Event == jit.EventPending || ev.Event == jit.EventApproved) {
		text += " until " + ev.End.UTC().Format(time.RFC3339)
	}
	if ev.Detail != "" {
		text += " (" + userText(ev.Detail) + ")"
	}
	b := eventBody{Event: ev.Event, TimeUtc: ev.Time, Request: ev.Request, Policy: ev.Policy, Requestor: ev.Requestor,
		Actor: ev.Actor, VMs: ev.VMs, Ports: ev.Ports, Sources: ev.Sources, Detail: ev.Detail}
	if !ev.End.IsZero() {
		end := ev.End
		b.EndUtc = &end
	}
	return message{Text: text, JITAccess: b}
}

// maxUserText caps, in characters, each piece of user text in a message.
const maxUserText = 300

// userText makes s, written by a user (a justification, an approver's
// comment, a name), safe to put in the one text both Slack and Teams render:
// one line of at most maxUserText characters, with no markup of either.
// The message's links and mentions, if any, come only from the service's
// own values; user text never becomes one.
func userText(s string) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || r == '\u2028' || r == '\u2029' {
			return ' ' // no new lines to fake a message or start Markdown blocks
		}
		return r
	}, s)
	if utf8.RuneCountInString(s) > maxUserText {
		s = string([]rune(s)[:maxUserText-1]) + "…"
	}
	return escapeMarkup(s)
}

// markup escapes the control characters of both renderers:
//   - Slack treats &, < and > as control characters (<!channel>, <@U123>,
//     <https://x|text>) and decodes them from &amp;, &lt; and &gt; only
//     ("Formatting text for app surfaces", section "Escaping text",
//     https://api.slack.com/reference/surfaces/formatting#escaping).
//   - Teams renders an incoming webhook's text as Markdown with some HTML
//     ("Text formatting in cards", connector cards,
//     https://learn.microsoft.com/microsoftteams/platform/task-modules-and-cards/cards/cards-format):
//     the entities above keep HTML out, and backslashes before [ and ] keep
//     [text](url) from becoming a link (a backslash before ASCII punctuation
//     is a literal in CommonMark). Slack shows those backslashes, a small
//     price for one text that is safe in both.
var markup = strings.NewReplacer(
	`\`, `\\`, "[", `\[`, "]", `\]`,
	"&", "&amp;", "<", "&lt;", ">", "&gt;",
)

// escapeMarkup returns s with the markup of Slack and Teams escaped.
func escapeMarkup(s string) string { return markup.Replace(s) }
