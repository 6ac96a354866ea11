package e2etest

import (
	"bytes"
	"encoding/csv"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
)

// TestPortal does in a browser what the README does with curl: enable JIT
// on a VM (with a refused value shown next to its field first), request SSH
// for a few seconds, watch it open and close, revoke another request, and
// download the activity log. It saves a screenshot of each tab under
// docs/screenshots/.
func TestPortal(t *testing.T) {
	start := time.Now()
	p := startLocal(t, t.TempDir(), freeAddr(t))
	b := startBrowser(t)
	nicVM := vmID("vm-nic-nsg")

	b.step("loading the portal", 20*time.Second,
		chromedp.Navigate(p.base+"/"),
		chromedp.WaitVisible(chromedp.CSS(`body[data-ready]`)),
		chromedp.WaitReady(chromedp.CSS(`#table-unsupported tr[data-vm="vm-no-nsg"]`)),
	)
	if got := b.text("#whoami"); !strings.Contains(got, "127.0.0.1") {
		t.Errorf("header shows %q; want My IP 127.0.0.1", got)
	}

	// Keyboard: the tabs follow the arrow keys.
	b.do("moving between tabs with the keyboard",
		chromedp.Focus(chromedp.CSS("#tab-configured")),
		chromedp.KeyEvent(kb.ArrowRight),
		chromedp.KeyEvent(kb.ArrowRight),
		chromedp.WaitVisible(chromedp.CSS("#panel-unsupported")),
	)
	if got := evalJS[string](b, `document.activeElement.id`); got != "tab-unsupported" {
		t.Errorf("after two ArrowRight keys the focus is on %q, want tab-unsupported", got)
	}
	if got := b.text(`#table-unsupported tr[data-vm="vm-no-nsg"]`); !strings.Contains(got, "no network security group") {
		t.Errorf("unsupported row says %q; want its reason", got)
	}
	b.screenshot("unsupported")

	// 1. Enable JIT on vm-nic-nsg with Defender's defaults, edited.
	b.do("opening the enable form",
		chromedp.Click(chromedp.CSS("#tab-notconfigured")),
		chromedp.Click(chromedp.CSS(`#table-notconfigured input[data-vm="vm-nic-nsg"]`)),
		chromedp.Click(chromedp.CSS("#btn-enable")),
		chromedp.WaitVisible(chromedp.CSS("#policy-form")),
	)
	if n := evalJS[int](b, `document.querySelectorAll('#policy-form tbody tr').length`); n != 4 {
		t.Fatalf("the enable form has %d ports, want Defender's 4 defaults", n)
	}
	b.screenshot("not-configured")

	// A refused maximum is shown next to its field, which gets the focus.
	row := func(port int) string {
		return `#policy-form tbody tr:has(input.port[value="` + strconv.Itoa(port) + `"])`
	}
	b.do("asking for a 30-hour maximum",
		chromedp.SetValue(chromedp.CSS(row(22)+" .duration input"), "30"),
		chromedp.Click(chromedp.CSS(`#policy-form button[type=submit]`)),
		chromedp.WaitVisible(chromedp.CSS(row(22)+" .field-error")),
	)
	if msg := b.text(row(22) + " .field-error"); !strings.Contains(msg, "maxRequestAccessDuration") {
		t.Errorf("field error says %q; want the API's message naming maxRequestAccessDuration", msg)
	}
	if got := evalJS[string](b, `document.activeElement.getAttribute('aria-invalid') + ' ' + !!document.activeElement.closest('tr:has(input.port[value="22"])')`); got != "true true" {
		t.Errorf("focus after the refusal: %q; want the invalid maximum of port 22", got)
	}
	b.do("fixing the form: 3 hours, no 5986, an extra UDP port",
		chromedp.SetValue(chromedp.CSS(row(22)+" .duration input"), "3"),
		chromedp.Click(chromedp.CSS(`#policy-form button[aria-label="Remove port 5986"]`)),
		chromedp.Click(chromedp.CSS(`#policy-form .actions button:first-child`)), // Add port
		chromedp.SendKeys(chromedp.CSS(`#policy-form tbody tr:last-child input.port`), "2222"),
		chromedp.SetValue(chromedp.CSS(`#policy-form tbody tr:last-child select`), "UDP"),
		chromedp.Click(chromedp.CSS(`#policy-form button[type=submit]`)),
		chromedp.WaitVisible(chromedp.CSS(`#table-configured tr[data-vm="vm-nic-nsg"]`)),
	)
	var pol struct {
		Properties struct {
			VirtualMachines []struct {
				Ports []struct {
					Number   int    `json:"number"`
					Protocol string `json:"protocol"`
					Max      string `json:"maxRequestAccessDuration"`
				} `json:"ports"`
			} `json:"virtualMachines"`
		} `json:"properties"`
	}
	p.must(200, "GET", "/api/v1/policies/vm-nic-nsg", nil, &pol)
	var ports []string
	for _, port := range pol.Properties.VirtualMachines[0].Ports {
		ports = append(ports, strconv.Itoa(port.Number)+"/"+port.Protocol+"/"+port.Max)
	}
	if got, want := strings.Join(ports, " "), "22/TCP/PT3H 3389/TCP/PT3H 5985/TCP/PT3H 2222/UDP/PT3H"; got != want {
		t.Errorf("policy vm-nic-nsg has ports %s, want %s", got, want)
	}
	// The lockdown runs after the PUT has answered: the page says so, and
	// the Lockdown column follows it to "Locked".
	if msg := b.text("#page-message"); !strings.Contains(msg, "Lockdown in progress") && !strings.Contains(msg, "in place") {
		t.Errorf("page message after enabling: %q; want the lockdown in progress", msg)
	}
	nicRow := `#table-configured tr[data-vm="vm-nic-nsg"]`
	if got := b.text(nicRow + ` td[data-label="Lockdown"] .badge`); got != "Lockdown pending…" && got != "Locked" {
		t.Errorf("right after enabling the Lockdown column says %q; want Lockdown pending… or Locked", got)
	}
	b.waitJS("the Lockdown column to say Locked", 10*time.Second,
		`(() => { const b = document.querySelector('`+nicRow+` td[data-label="Lockdown"] .badge'); return b && b.textContent === 'Locked'; })()`)
	for _, port := range []int{22, 3389, 5985, 2222} {
		if !locked(p.nsgRules("nsg-vm-nic"), "10.10.1.4", port) {
			t.Errorf("the page says Locked but no deny rule in nsg-vm-nic closes port %d to 10.10.1.4", port)
		}
	}

	// 2. Request SSH for 8 seconds from My IP.
	requestPort := func(port int, amount, unit, why string) {
		t.Helper()
		tr := `#request-form tr:has(input[data-port="` + strconv.Itoa(port) + `"])`
		b.do("requesting port "+strconv.Itoa(port),
			chromedp.Click(chromedp.CSS("#tab-configured")),
			chromedp.Click(chromedp.CSS(`#table-configured input[data-vm="vm-nic-nsg"]`)),
			chromedp.Click(chromedp.CSS("#btn-request")),
			chromedp.WaitVisible(chromedp.CSS("#request-form")),
			chromedp.Click(chromedp.CSS(tr+` input[type=checkbox]`)),
			chromedp.SetValue(chromedp.CSS(tr+" .duration input"), amount),
			chromedp.SetValue(chromedp.CSS(tr+" .duration select"), unit),
			chromedp.SendKeys(chromedp.CSS("#req-justification"), why),
		)
		if port == 22 {
			b.screenshot("request")
		}
		b.do("sending the request", chromedp.Click(chromedp.CSS(`#request-form button[type=submit]`)),
			chromedp.WaitVisible(chromedp.CSS(`#panel-requests`)))
	}
	requestPort(22, "8", "s", "restart nginx")
	sshID := latestRequest(t, p, 22)
	sshRow := `#table-requests tr[data-request-id="` + sshID + `"]`
	b.waitJS("the SSH request to show Open with a countdown", 10*time.Second,
		`(() => { const r = document.querySelector('`+sshRow+`');
		  return r && r.querySelector('.badge[data-status="Open"]') && /closes in \d+:\d\d/.test(r.textContent); })()`)
	if _, ok := p.nsgRules("nsg-vm-nic")["jit-allow-"+sshID+"-0"]; !ok {
		t.Errorf("the page shows Open but nsg-vm-nic has no rule jit-allow-%s-0", sshID)
	}
	b.screenshot("requests")

	// The Configured tab shows the open port with its countdown.
	b.do("looking at the configured VM",
		chromedp.Click(chromedp.CSS("#tab-configured")),
		chromedp.WaitVisible(chromedp.CSS(`#table-configured tr[data-vm="vm-nic-nsg"] .countdown`)),
	)
	if got := b.text(`#table-configured tr[data-vm="vm-nic-nsg"]`); !strings.Contains(got, "10.10.1.4") || !strings.Contains(got, "local administrator") {
		t.Errorf("configured row says %q; want the private IP and the last user", got)
	}
	b.screenshot("configured")

	// 3. Another request, revoked from the page.
	requestPort(3389, "5", "m", "install updates")
	rdpID := latestRequest(t, p, 3389)
	rdpRow := `#table-requests tr[data-request-id="` + rdpID + `"]`
	b.step("revoking the RDP request", 15*time.Second,
		chromedp.WaitVisible(chromedp.CSS(rdpRow+` .badge[data-status="Open"]`)),
		chromedp.Click(chromedp.CSS(rdpRow+` button[aria-label="Revoke request `+rdpID+`"]`)),
		chromedp.WaitVisible(chromedp.CSS(rdpRow+` .badge[data-status="Revoked"]`)),
	)
	waitFor(t, 5*time.Second, "the revoked rule to leave nsg-vm-nic", func() bool {
		_, ok := p.nsgRules("nsg-vm-nic")["jit-allow-"+rdpID+"-0"]
		return !ok
	})

	// 4. The SSH request closes by itself.
	b.step("waiting for the SSH request to close", 20*time.Second,
		chromedp.WaitVisible(chromedp.CSS(sshRow+` .badge[data-status="Closed"]`)))
	if _, ok := p.nsgRules("nsg-vm-nic")["jit-allow-"+sshID+"-0"]; ok {
		t.Errorf("the page shows Closed but rule jit-allow-%s-0 is still in nsg-vm-nic", sshID)
	}

	// 5. The activity log of the VM, and its CSV.
	b.do("opening the VM's activity log",
		chromedp.Click(chromedp.CSS("#tab-configured")),
		chromedp.Click(chromedp.CSS(`#table-configured button[aria-label="Activity log of vm-nic-nsg"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#table-activity tr[data-action="revoke"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#table-activity tr[data-action="close"]`)),
	)
	b.screenshot("activity")
	href := evalJS[string](b, `document.getElementById('activity-csv').getAttribute('href')`)
	if !strings.Contains(href, "format=csv") || !strings.Contains(href, "vm=") {
		t.Errorf("CSV link is %q; want format=csv and the VM filter", href)
	}
	// Download it as a person would: the browser saves the file.
	downloaded := b.download("downloading the activity log as CSV", "#activity-csv")
	rows, err := csv.NewReader(bytes.NewReader(downloaded)).ReadAll()
	if err != nil || len(rows) < 2 {
		t.Fatalf("CSV downloaded from %s: %d rows, %v", href, len(rows), err)
	}
	actions := map[string]int{}
	for _, r := range rows[1:] {
		if r[6] != nicVM {
			t.Errorf("CSV filtered by vm-nic-nsg has a row of %q", r[6])
		}
		actions[r[1]+"/"+r[5]]++
	}
	for _, want := range []string{"open/" + sshID, "close/" + sshID, "open/" + rdpID, "revoke/" + rdpID, "close/" + rdpID} {
		if actions[want] == 0 {
			t.Errorf("CSV lacks %s; has %v", want, actions)
		}
	}
	// 6. A phone-sized window: no sideways scrolling, tables become cards.
	b.do("narrowing the window",
		chromedp.EmulateViewport(390, 844),
		chromedp.Click(chromedp.CSS("#tab-configured")),
		chromedp.WaitVisible(chromedp.CSS(`#table-configured tr[data-vm="vm-nic-nsg"]`)),
	)
	if w := evalJS[int](b, `document.documentElement.scrollWidth - window.innerWidth`); w > 0 {
		t.Errorf("at 390px the page is %dpx wider than the window", w)
	}
	b.screenshot("narrow")
	t.Logf("portal scenario took %s", time.Since(start).Round(100*time.Millisecond))
}

// latestRequest is the id of the newest request for port.
func latestRequest(t *testing.T, p *proc, port int) string {
	t.Helper()
	var list struct {
		Value []requestRec `json:"value"`
	}
	p.must(200, "GET", "/api/v1/requests", nil, &list)
	var best requestRec
	var bestStart time.Time
	for _, r := range list.Value {
		for _, vm := range r.VirtualMachines {
			for _, pt := range vm.Ports {
				if pt.Number == port {
					st := pt.EndTimeUtc
					if best.ID == "" || st.After(bestStart) {
						best, bestStart = r, st
					}
				}
			}
		}
	}
	if best.ID == "" {
		t.Fatalf("no request for port %d; requests: %+v", port, list.Value)
	}
	return best.ID
}
