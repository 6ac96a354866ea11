// Package webhook delivers jit notifications to an incoming webhook
// (JIT_WEBHOOK_URL) as JSON that Microsoft Teams and Slack incoming webhooks
// accept: a "text" line for people, and the event's fields under "jitaccess"
// for machines. Each Deliver is one try; the service keeps notifications in
// its store and retries them (jit.Core.DeliverNotices). It must not
// depend on anything but jit.
package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"jitaccess/handler/jit"
)

// Options tune delivery.
type Options struct {
	Client *http.Client // default: 10 s timeout
}

// Notifier posts notifications to one webhook URL, one try per Deliver:
// the service keeps each notification in its store until a try succeeds,
// and retries it with backoff.
type Notifier struct {
	url  string
	opts Options
}

var _ jit.Notifier = (*Notifier)(nil)

// New returns a Notifier for url.
func New(url string, opts Options) (*Notifier, error) {
	if !strings.HasPrefix(url, "https://") && !strings.HasPrefix(url, "http://127.0.0.1") && !strings.HasPrefix(url, "http://localhost") {
		return nil, fmt.Errorf("JIT_WEBHOOK_URL must be an https URL")
	}
	if opts.Client == nil {
		opts.Client = &http.Client{Timeout: 10 * time.Second}
	}
	return &Notifier{url: url, opts: opts}, nil
}

// Deliver posts n once. The notification's id goes in the body and in an
// Idempotency-Key header, the same on every try, so that a receiver can
// drop repeats. A refusal of the message itself (a 4xx other than 408 and
// 429) is permanent: trying again cannot help.
func (n *Notifier) Deliver(ctx context.Context, ev jit.Notification) error {
	body, err := json.Marshal(payload(ev))
	if err != nil {
		return jit.Permanent(err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, n.url, bytes.NewReader(body))
	if err != nil {
		return jit.Permanent(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if ev.ID != "" {
		req.Header.Set("Idempotency-Key", ev.ID)
	}
	resp, err := n.opts.Client.Do(req)
	if err != nil {
		return fmt.Errorf("webhook: %w", err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	switch code := resp.StatusCode; {
	case code/100 == 2:
		return nil
	case code/100 == 4 && code != http.StatusRequestTimeout && code != http.StatusTooManyRequests:
		return jit.Permanent(fmt.Errorf("webhook refused the message: %s", resp.Status))
	default:
		return fmt.Errorf("webhook answered %s", resp.Status)
	}
}

// message is what the webhook receives.
type message struct {
	Text      string    `json:"text"`
	JITAccess eventBody `json:"jitaccess"`
}

type eventBody struct {
	ID        string     `json:"id,omitempty"`
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
	b := eventBody{ID: ev.ID, Event: ev.Event, TimeUtc: ev.Time, Request: ev.Request, Policy: ev.Policy, Requestor: ev.Requestor,
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
