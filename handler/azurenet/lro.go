package azurenet

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"

	"jitaccess/handler/jit"
)

// awaitWrite follows a PUT's long-running operation to its end without the
// read of the resource that PollUntilDone makes afterwards: the driver
// knows what it wrote, and that read would be one more ARM read per write.
// A failed or cancelled operation is still an error (from Result, which
// reads nothing more in that case).
func awaitWrite[T any](ctx context.Context, p *runtime.Poller[T], every time.Duration) error {
	var last *http.Response
	for !p.Done() {
		resp, err := p.Poll(ctx)
		if err != nil {
			return err
		}
		last = resp
		if p.Done() {
			break
		}
		wait := every
		if ra := retryAfter(resp); ra > 0 {
			wait = ra
		}
		if err := jit.Sleep(ctx, wait); err != nil {
			return err
		}
	}
	if last != nil && operationSucceeded(last) {
		return nil
	}
	// Done without polling (answered synchronously), or not Succeeded:
	// Result reports the outcome.
	_, err := p.Result(ctx)
	return err
}

// operationSucceeded reads an Azure-AsyncOperation status body.
func operationSucceeded(resp *http.Response) bool {
	body, err := runtime.Payload(resp)
	if err != nil {
		return false
	}
	var op struct {
		Status string `json:"status"`
	}
	return json.Unmarshal(body, &op) == nil && op.Status == "Succeeded"
}

// retryAfter is how long a poll answer asks the client to wait.
func retryAfter(resp *http.Response) time.Duration {
	for _, h := range []string{"retry-after-ms", "x-ms-retry-after-ms"} {
		if v := resp.Header.Get(h); v != "" {
			if ms, err := strconv.Atoi(v); err == nil && ms > 0 {
				return time.Duration(ms) * time.Millisecond
			}
		}
	}
	if v := resp.Header.Get("Retry-After"); v != "" {
		if s, err := strconv.Atoi(v); err == nil && s > 0 {
			return time.Duration(s) * time.Second
		}
	}
	return 0
}
