package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"jitaccess/handler/armsim"
	"jitaccess/handler/hostsim"
	"jitaccess/handler/testenv"
)

// deployment is one jitaccess under test: `handler local` (bbolt, the local
// queue, the ARM simulator in its process) or Functions mode (handler
// instances under the host simulator, Azurite, the Service Bus double and
// an ARM simulator in the bench). Scenarios drive both through the same
// methods, so the two columns of the table measure the same thing.
type deployment interface {
	Mode() string
	// API calls the REST API as an administrator.
	API(ctx context.Context, method, path string, body, out any) (int, error)
	// ARM reads the simulator's ARM paths as an observer (not counted,
	// not throttled).
	ARM(ctx context.Context, path string, out any) error
	// ARMStats are the simulator's call counters since it started.
	ARMStats(ctx context.Context) (armsim.CallStats, error)
	// Limits turns the simulator's Azure behaviour (the deployment's ARM
	// latency, one operation per NSG, the budgets) off for preparing an
	// estate and on again for measuring; at latency 0 it does nothing.
	Limits(ctx context.Context, on bool) error
	// Costs are what Azure bills, counted so far: Table Storage
	// transactions, Service Bus operations, function invocations. Zero in
	// local mode, where none of these exist.
	Costs(ctx context.Context) (costs, error)
	Close() error
}

// costs count the billable operations of Functions mode.
type costs struct {
	TableTx     int64
	BusOps      int64
	Invocations int64
}

func (c costs) minus(o costs) costs {
	return costs{c.TableTx - o.TableTx, c.BusOps - o.BusOps, c.Invocations - o.Invocations}
}

// azureARM is the simulator's behaviour at a latency: ARM's documented
// budgets and one operation at a time per NSG; nil at latency 0.
func azureARM(latency time.Duration) *armsim.Azure {
	if latency <= 0 {
		return nil
	}
	return &armsim.Azure{WriteTime: latency}
}

// --- local mode -----------------------------------------------------------------

type localDeployment struct {
	p       *proc
	latency time.Duration
}

// startLocal runs `handler local` with JIT_ARM_LATENCY=latency (so that it
// is configured as it would be for that ARM) and the sweep every minute,
// as the Functions timer's default schedule.
func (b *bench) startLocal(estate string, latency time.Duration) (*localDeployment, error) {
	p, err := b.startProc(procOptions{Estate: estate, ARMLatency: latency, Sweep: time.Minute})
	if err != nil {
		return nil, err
	}
	return &localDeployment{p: p, latency: latency}, nil
}

func (d *localDeployment) Mode() string { return "local" }

func (d *localDeployment) API(ctx context.Context, method, path string, body, out any) (int, error) {
	return d.p.do(ctx, method, path, body, out)
}

func (d *localDeployment) ARM(ctx context.Context, path string, out any) error {
	return observe(ctx, d.p.client, d.p.url+"/_arm"+path, out)
}

func (d *localDeployment) ARMStats(ctx context.Context) (armsim.CallStats, error) {
	var st armsim.CallStats
	_, err := d.p.do(ctx, "GET", "/_arm/_stats", nil, &st)
	return st, err
}

// Limits switches the simulator inside the process (PUT /_arm/_azure,
// local mode only).
func (d *localDeployment) Limits(ctx context.Context, on bool) error {
	if d.latency == 0 {
		return nil
	}
	_, err := d.p.do(ctx, "PUT", "/_arm/_azure", map[string]bool{"enabled": on}, nil)
	return err
}

func (d *localDeployment) Costs(context.Context) (costs, error) { return costs{}, nil }

func (d *localDeployment) Close() error { return d.p.stop() }

// observe GETs an ARM path of the simulator as an observer.
func observe(ctx context.Context, c *http.Client, u string, out any) error {
	if !strings.Contains(u, "api-version=") {
		sep := "?"
		if strings.Contains(u, "?") {
			sep = "&"
		}
		u += sep + armAPIVersion
	}
	req, err := http.NewRequestWithContext(ctx, "GET", u, nil)
	if err != nil {
		return err
	}
	req.Header.Set(armsim.ObserverHeader, "bench")
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %d %s", u, resp.StatusCode, tail(string(b), 300))
	}
	return json.Unmarshal(b, out)
}

// --- Functions mode ---------------------------------------------------------------

// emulators are the Table Storage and Service Bus emulators the Functions
// deployments share, each deployment with its own tables and queue.
type emulators struct {
	azurite *testenv.Azurite
	bus     *testenv.ServiceBusDouble
	tokens  *testenv.TokenEndpoint
	n       atomic.Int64
}

func (b *bench) functionsEmulators() (*emulators, error) {
	b.emuOnce.Do(func() {
		e := &emulators{}
		var err error
		if e.azurite, err = testenv.LaunchAzurite("", ""); err != nil {
			b.emuErr = fmt.Errorf("starting Azurite: %w", err)
			return
		}
		if e.bus, err = testenv.LaunchServiceBus("", ""); err != nil {
			_ = e.azurite.Close()
			b.emuErr = fmt.Errorf("starting the Service Bus double: %w", err)
			return
		}
		e.tokens = testenv.NewTokenEndpoint()
		b.emu = e
	})
	return b.emu, b.emuErr
}

func (e *emulators) Close() {
	if e == nil {
		return
	}
	e.tokens.Close()
	_ = e.bus.Close()
	_ = e.azurite.Close()
}

// countingProxy counts the requests that reach Table Storage: each is one
// billed transaction (an entity group transaction is one request).
type countingProxy struct {
	srv   *http.Server
	url   string
	count atomic.Int64
}

func newCountingProxy(target string) (*countingProxy, error) {
	u, err := url.Parse(target)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &countingProxy{url: "http://" + ln.Addr().String() + u.Path}
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(&url.URL{Scheme: u.Scheme, Host: u.Host})
			r.Out.Host = r.In.Host // the shared key signs the host the client used
		},
		// A handler stopping mid-request is no news.
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, _ error) { w.WriteHeader(http.StatusBadGateway) },
	}
	p.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.count.Add(1)
		rp.ServeHTTP(w, r)
	})}
	go func() { _ = p.srv.Serve(ln) }()
	return p, nil
}

func (p *countingProxy) Close() { _ = p.srv.Close() }

type functionsDeployment struct {
	emu     *emulators
	latency time.Duration
	sim     *armsim.Server
	armSrv  *http.Server
	armURL  string
	host    *hostsim.Host
	queue   string
	tables  *countingProxy // this deployment's Table Storage requests
	client  *http.Client
	bus0    int64
	events  chan json.RawMessage
	stop    context.CancelFunc
	wg      sync.WaitGroup
	admin   []string
}

// startFunctions runs `instances` handler instances in Functions mode under
// the host simulator, on a fresh table prefix and queue, against an ARM
// simulator loaded with estate. As Event Grid does in Azure, every
// successful ARM write (the service's own included) is delivered to the
// events function, and the timer fires the sweeper every minute, as
// JIT_SWEEP_SCHEDULE's default says.
func (b *bench) startFunctions(estate string, latency time.Duration) (*functionsDeployment, error) {
	emu, err := b.functionsEmulators()
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(estate)
	if err != nil {
		return nil, err
	}
	d := &functionsDeployment{emu: emu, latency: latency, client: newClient(512), events: make(chan json.RawMessage, 1<<16),
		admin: testenv.EasyAuth("00000000-0000-0000-0000-00000000a001", "JIT.Admin")}
	d.sim = armsim.New(armsim.Options{Empty: true, Azure: azureARM(latency), OnChange: d.changed})
	if d.tables, err = newCountingProxy(emu.azurite.TableURL()); err != nil {
		return nil, err
	}
	if err := d.sim.Load(bytes.NewReader(data)); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	d.armURL = "http://" + ln.Addr().String()
	d.armSrv = &http.Server{Handler: d.sim}
	go func() { _ = d.armSrv.Serve(ln) }()

	n := emu.n.Add(1)
	d.queue = fmt.Sprintf("bench-%d", n)
	if st, err := emu.bus.FetchState(); err == nil {
		d.bus0 = busOps(st.Queues[d.queue])
	}
	d.host, err = hostsim.Start(hostsim.Config{
		Binary:               b.handler,
		Instances:            b.cfg.instances,
		TablesConnection:     "DefaultEndpointsProtocol=http;AccountName=" + testenv.AzuriteAccount + ";AccountKey=" + testenv.AzuriteKey + ";TableEndpoint=" + d.tables.url + ";",
		TablePrefix:          fmt.Sprintf("bench%d", n),
		ServiceBusConnection: emu.bus.ConnectionString(),
		Queue:                d.queue,
		ARMEndpoint:          d.armURL,
		Subscriptions:        benchSub,
		Env: append(emu.tokens.Env(),
			"JIT_MIN_DURATION=1s",
			"JIT_LOG_LEVEL=warn",
			"JIT_MAX_OPEN_REQUESTS=off", // one bench client stands for many people
			"JIT_WRITES_PER_MINUTE=off",
			"AZURE_CLIENT_ID=00000000-0000-0000-0000-0000000000c1",
		),
		StartTimeout: 60 * time.Second,
	})
	if err != nil {
		d.armSrv.Close()
		d.tables.Close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	d.stop = cancel
	d.wg.Add(2)
	go d.deliverEvents(ctx)
	go d.fireTimer(ctx)
	return d, nil
}

func (d *functionsDeployment) Mode() string { return "functions" }

// changed queues a resource event for a successful simulator write, in
// Event Grid's shape.
func (d *functionsDeployment) changed(c armsim.Change) {
	typ := "Microsoft.Resources.ResourceWriteSuccess"
	if c.Operation == "delete" {
		typ = "Microsoft.Resources.ResourceDeleteSuccess"
	}
	ev, _ := json.Marshal(map[string]any{
		"id": fmt.Sprintf("bench-%d", time.Now().UnixNano()), "topic": "/subscriptions/" + benchSub, "subject": c.ID,
		"eventType": typ, "eventTime": time.Now().UTC().Format(time.RFC3339Nano), "dataVersion": "", "metadataVersion": "1",
		"data": map[string]any{"resourceUri": c.ID, "operationName": c.Type + "/" + c.Operation, "status": "Succeeded", "subscriptionId": benchSub,
			"claims": map[string]any{"appid": c.Caller}},
	})
	select {
	case d.events <- ev:
	default: // more than 65,536 undelivered: Event Grid would retry later
	}
}

// deliverEvents hands events to the events function a few at a time, as
// Event Grid pushes them.
func (d *functionsDeployment) deliverEvents(ctx context.Context) {
	defer d.wg.Done()
	sem := make(chan struct{}, 4)
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-d.events:
			sem <- struct{}{}
			go func() {
				defer func() { <-sem }()
				_, _ = d.host.SendEvent(ctx, ev)
			}()
		}
	}
}

func (d *functionsDeployment) fireTimer(ctx context.Context) {
	defer d.wg.Done()
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			_, _ = d.host.FireTimer(ctx)
		}
	}
}

func (d *functionsDeployment) API(ctx context.Context, method, path string, body, out any) (int, error) {
	return doJSON(ctx, d.client, d.host.URL(), method, path, body, out, d.admin...)
}

func (d *functionsDeployment) ARM(ctx context.Context, path string, out any) error {
	return observe(ctx, d.client, d.armURL+path, out)
}

func (d *functionsDeployment) ARMStats(context.Context) (armsim.CallStats, error) {
	return d.sim.Calls(), nil
}

func (d *functionsDeployment) Limits(_ context.Context, on bool) error {
	if on {
		d.sim.SetAzure(azureARM(d.latency))
	} else {
		d.sim.SetAzure(nil)
	}
	return nil
}

func (d *functionsDeployment) Costs(context.Context) (costs, error) {
	st, err := d.emu.bus.FetchState()
	if err != nil {
		return costs{}, err
	}
	hs := d.host.Stats()
	var inv int64
	for _, n := range hs.Invocations {
		inv += n
	}
	// Service Bus bills every operation: the handlers' sends, schedules and
	// cancels (the double's counts) and the host's session accepts,
	// receives and settlements.
	return costs{
		TableTx:     d.tables.count.Load(),
		BusOps:      busOps(st.Queues[d.queue]) - d.bus0 + hs.Sessions + hs.Receives + hs.Completes + hs.Abandons,
		Invocations: inv,
	}, nil
}

func busOps(q testenv.ServiceBusQueueState) int64 {
	c := q.Counts
	return int64(c.Sent + c.Scheduled + c.Cancelled)
}

func (d *functionsDeployment) Close() error {
	d.stop()
	d.wg.Wait()
	err := d.host.Close()
	_ = d.armSrv.Close()
	d.tables.Close()
	return err
}
