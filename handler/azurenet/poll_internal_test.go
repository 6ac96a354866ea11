package azurenet

import (
	"context"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
)

// polls answers an operation's polls in turn with the given statuses (the
// last one again once they run out), InProgress ones asking for a retry
// after retry.
type polls struct {
	statuses []string
	retry    time.Duration
	n        int
}

func (p *polls) Do(req *http.Request) (*http.Response, error) {
	status := p.statuses[min(p.n, len(p.statuses)-1)]
	p.n++
	h := map[string]string{}
	if status == "InProgress" {
		h["Retry-After-Ms"] = strconv.FormatInt(p.retry.Milliseconds(), 10)
	}
	resp := answer(http.StatusOK, h, `{"status":"`+status+`"}`)
	resp.Request = req
	return resp, nil
}

// await follows one written NSG's operation whose polls answer statuses.
func await(t *testing.T, d *Driver, p *polls) {
	t.Helper()
	pl := runtime.NewPipeline("test", "v0", runtime.PipelineOptions{}, &policy.ClientOptions{Transport: p})
	put := answer(http.StatusOK, map[string]string{"Azure-AsyncOperation": "https://management.example/operations/1"},
		`{"properties":{"provisioningState":"Updating"}}`)
	if err := d.awaitOperation(context.Background(), pl, put); err != nil {
		t.Fatal(err)
	}
}

// TestFirstPollOfOperationsDoneAtOnce: where every operation is done by its
// first poll, as the simulator's are at latency 0, the first poll keeps
// going at once; a write's first poll waits only for what operations were
// seen to take.
func TestFirstPollOfOperationsDoneAtOnce(t *testing.T) {
	d := &Driver{cfg: Config{PollFrequency: time.Second}}
	for range 20 {
		await(t, d, &polls{statuses: []string{"Succeeded"}})
	}
	if got := d.opTime.typical(); got != 0 {
		t.Errorf("after 20 operations done by their first poll the first poll waits %v, want no wait", got)
	}

	// An operation still in progress at its first poll is learnt in full
	// (its InProgress answer asked for 20 ms more): one eighth of the
	// moving average, of which the first poll waits 0.9.
	await(t, d, &polls{statuses: []string{"InProgress", "Succeeded"}, retry: 20 * time.Millisecond})
	if got, want := d.opTime.typical(), 20*time.Millisecond/8*9/10; got < want {
		t.Errorf("after an operation that took over 20 ms the first poll waits %v, want at least %v", got, want)
	}
}
