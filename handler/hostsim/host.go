package hostsim

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"

	"jitaccess/handler/testenv"
)

// hostVersion is the version the simulator gives in the host's headers.
const hostVersion = "4.1036.1.0"

// Config says what the simulated host runs and how.
type Config struct {
	// Binary is the built handler (see `make build`). Not used with
	// HandlerURLs.
	Binary string
	// Instances is how many handler processes run against the same store
	// and queue, as the host scales out. Default 1.
	Instances int
	// HandlerURLs, when set, are custom handlers already running, one
	// instance each: no process is started and the settings below are not
	// passed (the queue name is still resolved from them).
	HandlerURLs []string

	// App settings every instance gets, as the Functions host passes its
	// app settings; empty ones are left out.
	TablesURL            string // JIT_TABLES_URL (managed identity)
	TablesConnection     string // JIT_TABLES_CONNECTION (Azurite with a key)
	TablePrefix          string // JIT_TABLE_PREFIX
	ServiceBusConnection string // ServiceBusConnection (connection string)
	ServiceBusNamespace  string // ServiceBusConnection__fullyQualifiedNamespace (managed identity)
	ServiceBusEndpoint   string // JIT_SERVICEBUS_ENDPOINT (host:port of the double)
	Queue                string // JIT_SERVICEBUS_QUEUE
	ARMEndpoint          string // JIT_ARM_ENDPOINT (the ARM simulator's URL)
	Subscriptions        string // JIT_SUBSCRIPTIONS
	// Env are more settings, "NAME=value", after the ones above (later
	// ones win). The process environment is inherited beneath them.
	Env []string

	// HostServiceBus is the connection string the simulated host receives
	// the queue with (the host's own connection, a key). Default: the app
	// setting the trigger's "connection" names (ServiceBusConnection).
	HostServiceBus string
	// Functions are the function folders; default: the repository's
	// functions/ (RepoFunctions).
	Functions []Function
	// Host are host.json's settings; default: the repository's host.json
	// (RepoHostSettings). Zero fields take the host's defaults.
	Host *HostSettings

	// StartTimeout bounds the wait for each handler to answer GET /.
	// Default 30 seconds.
	StartTimeout time.Duration
	// Output, when set, gives the writer for instance i's stdout and
	// stderr; by default the last MiB is kept (Instance.Output).
	Output func(instance int) io.Writer
	// Logf, when set, hears about failed invocations and protocol faults.
	Logf func(format string, args ...any)
}

// settings are the app settings given to every instance, in order.
// WEBSITE_AUTH_ENABLED=True comes first, as App Service sets it when
// Authentication is on (the handler refuses to serve without it): the
// requests tests send carry X-MS-CLIENT-PRINCIPAL as the platform would
// have set it. Env can override it.
func (c Config) settings() []string {
	out := []string{"WEBSITE_AUTH_ENABLED=True"}
	for _, kv := range [][2]string{
		{"JIT_TABLES_URL", c.TablesURL}, {"JIT_TABLES_CONNECTION", c.TablesConnection}, {"JIT_TABLE_PREFIX", c.TablePrefix},
		{"ServiceBusConnection", c.ServiceBusConnection}, {"ServiceBusConnection__fullyQualifiedNamespace", c.ServiceBusNamespace},
		{"JIT_SERVICEBUS_ENDPOINT", c.ServiceBusEndpoint}, {"JIT_SERVICEBUS_QUEUE", c.Queue},
		{"JIT_ARM_ENDPOINT", c.ARMEndpoint}, {"JIT_SUBSCRIPTIONS", c.Subscriptions},
	} {
		if kv[1] != "" {
			out = append(out, kv[0]+"="+kv[1])
		}
	}
	return append(out, c.Env...)
}

// appSetting resolves an app setting as the host does for %NAME% in
// function.json: the settings given, else the environment.
func (c Config) appSetting(name string) string {
	s := c.settings()
	for i := len(s) - 1; i >= 0; i-- {
		if k, v, ok := strings.Cut(s[i], "="); ok && k == name {
			return v
		}
	}
	return os.Getenv(name)
}

// Host is a running host simulator.
type Host struct {
	cfg       Config
	settings  HostSettings
	instances []*Instance
	next      atomic.Uint64 // round robin over instances

	httpFn   string // the forwarded HTTP function's name, "" if none
	worker   *Function
	trigger  Binding // the worker's Service Bus trigger
	queue    string
	timer    *Function
	events   map[string]Function // Event Grid functions by name
	lastFire time.Time
	fireMu   sync.Mutex

	client    *http.Client
	front     *http.Server
	frontURL  string
	ctx       context.Context
	cancel    context.CancelFunc
	closeOnce sync.Once

	faultMu sync.Mutex
	faults  []string

	lifeMu sync.Mutex // Restart and Close, which replace and end instances' lives
	closed bool       // under lifeMu
}

// Instance is one handler instance, with its own process, port, Service
// Bus connection and receivers. Kill ends its life and Host.Restart starts
// the next one.
type Instance struct {
	index int
	mu    sync.RWMutex // url and proxy, which Restart replaces while others read
	url   string
	proxy *httputil.ReverseProxy

	cmd     *exec.Cmd // nil with Config.HandlerURLs
	exited  chan struct{}
	out     *tailBuffer
	sb      *azservicebus.Client
	counts  counters
	singles atomic.Int64 // single-message invocations so far, for the twice-encoded body

	ctx       context.Context // ends with Kill or Close: receivers stop
	cancel    context.CancelFunc
	alive     context.Context // ends with Kill only: invocations under way are cut
	kill      context.CancelFunc
	receivers sync.WaitGroup
	down      atomic.Bool // killed: no more requests, no settlements
	stopOnce  sync.Once
}

// Index is the instance's number, from 0.
func (in *Instance) Index() int { return in.index }

// URL is the instance's own address (http://127.0.0.1:PORT); a restart
// gives it another port.
func (in *Instance) URL() string {
	in.mu.RLock()
	defer in.mu.RUnlock()
	return in.url
}

// target is the instance's address and the proxy that forwards to it.
func (in *Instance) target() (string, *httputil.ReverseProxy) {
	in.mu.RLock()
	defer in.mu.RUnlock()
	return in.url, in.proxy
}

// Stats are the instance's counters now.
func (in *Instance) Stats() Stats { return in.counts.snapshot() }

// Output is the end of the instance's stdout and stderr (empty when
// Config.Output took them).
func (in *Instance) Output() string {
	if in.out == nil {
		return ""
	}
	return in.out.String()
}

// Start starts the instances, waits until each answers, and starts
// forwarding HTTP and delivering the queue. Close stops everything.
func Start(cfg Config) (*Host, error) {
	h := &Host{cfg: cfg, events: map[string]Function{}}
	h.ctx, h.cancel = context.WithCancel(context.Background())
	if err := h.configure(); err != nil {
		h.cancel()
		return nil, err
	}
	// The host's HTTP client waits functionTimeout + 1 minute.
	h.client = &http.Client{
		Timeout:   h.settings.FunctionTimeout + time.Minute,
		Transport: &http.Transport{MaxIdleConnsPerHost: 256, IdleConnTimeout: time.Minute},
	}
	if err := h.startInstances(); err != nil {
		_ = h.Close()
		return nil, err
	}
	if err := h.startFrontDoor(); err != nil {
		_ = h.Close()
		return nil, err
	}
	if err := h.startReceivers(); err != nil {
		_ = h.Close()
		return nil, err
	}
	return h, nil
}

// configure reads the functions and host settings and finds each
// function's role by its trigger.
func (h *Host) configure() error {
	fns := h.cfg.Functions
	if fns == nil {
		var err error
		if fns, err = RepoFunctions(); err != nil {
			return err
		}
	}
	if h.cfg.Host != nil {
		h.settings = h.cfg.Host.withDefaults()
	} else {
		var err error
		if h.settings, err = RepoHostSettings(); err != nil {
			return err
		}
	}
	for _, f := range fns {
		t, ok := f.Trigger()
		if !ok {
			return fmt.Errorf("function %s has no trigger binding", f.Name)
		}
		switch strings.ToLower(t.Type) {
		case "httptrigger":
			h.httpFn = f.Name
		case "servicebustrigger":
			if h.worker != nil {
				return fmt.Errorf("functions %s and %s both have a Service Bus trigger: hostsim runs one", h.worker.Name, f.Name)
			}
			h.worker, h.trigger = &f, t
		case "timertrigger":
			h.timer = &f
		case "eventgridtrigger":
			h.events[f.Name] = f
		default:
			return fmt.Errorf("function %s: hostsim does not play trigger type %s", f.Name, t.Type)
		}
	}
	if h.worker != nil {
		h.queue = h.trigger.QueueName
		if strings.HasPrefix(h.queue, "%") && strings.HasSuffix(h.queue, "%") && len(h.queue) > 2 {
			name := h.queue[1 : len(h.queue)-1]
			if h.queue = h.cfg.appSetting(name); h.queue == "" {
				return fmt.Errorf("function %s: queueName %s: app setting %s is not set", h.worker.Name, h.trigger.QueueName, name)
			}
		}
		if h.cfg.HostServiceBus == "" {
			h.cfg.HostServiceBus = h.cfg.appSetting(h.trigger.Connection)
		}
		if h.cfg.HostServiceBus == "" {
			return fmt.Errorf("function %s: no connection string for the host to receive with: set Config.HostServiceBus", h.worker.Name)
		}
	}
	return nil
}

func (h *Host) startInstances() error {
	if len(h.cfg.HandlerURLs) > 0 {
		for i, u := range h.cfg.HandlerURLs {
			h.instances = append(h.instances, &Instance{index: i, url: strings.TrimSuffix(u, "/")})
		}
	} else {
		if h.cfg.Binary == "" {
			return fmt.Errorf("hostsim: Config.Binary is not set (make build writes bin/handler)")
		}
		n := max(h.cfg.Instances, 1)
		for i := range n {
			in := &Instance{index: i}
			if h.cfg.Output == nil {
				in.out = &tailBuffer{limit: 1 << 20}
			}
			if err := h.startProcess(in); err != nil {
				return err
			}
			h.instances = append(h.instances, in)
		}
	}
	for _, in := range h.instances {
		if err := h.waitAndForward(in); err != nil {
			return err
		}
	}
	return nil
}

// waitAndForward begins an instance's life: its contexts, the wait until
// it answers, and the proxy that forwards HTTP to it.
func (h *Host) waitAndForward(in *Instance) error {
	timeout := h.cfg.StartTimeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	in.ctx, in.cancel = context.WithCancel(h.ctx)
	in.alive, in.kill = context.WithCancel(context.Background())
	if err := h.waitReady(in, timeout); err != nil {
		return err
	}
	u := in.URL()
	target, _ := url.Parse(u)
	proxy := h.newProxy(in, target)
	in.mu.Lock()
	in.proxy = proxy
	in.mu.Unlock()
	return nil
}

// startProcess starts the instance's handler in Functions mode, as the
// host does: FUNCTIONS_CUSTOMHANDLER_PORT and the app settings in its
// environment. Its output goes on in the same buffer over its lives.
func (h *Host) startProcess(in *Instance) error {
	port, err := testenv.FindFreePort()
	if err != nil {
		return err
	}
	in.mu.Lock()
	in.url = "http://127.0.0.1:" + strconv.Itoa(port)
	in.mu.Unlock()
	in.exited = make(chan struct{})
	cmd := exec.Command(h.cfg.Binary)
	cmd.Env = append(append(os.Environ(), "FUNCTIONS_CUSTOMHANDLER_PORT="+strconv.Itoa(port)), h.cfg.settings()...)
	var w io.Writer = in.out
	if h.cfg.Output != nil {
		w = h.cfg.Output(in.index)
	}
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting handler instance %d (%s): %w", in.index, h.cfg.Binary, err)
	}
	in.cmd = cmd
	exited := in.exited
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	return nil
}

// Restart starts instance i again after Kill, as the platform replaces a
// dead host instance: a new handler process (on a new port) with the same
// settings, its own Service Bus connection and receivers. Its counters and
// output go on from its earlier lives. It must not run at the same time as
// Kill of the same instance.
func (h *Host) Restart(i int) error {
	h.lifeMu.Lock()
	defer h.lifeMu.Unlock()
	if h.closed {
		return errors.New("hostsim: the host is closed")
	}
	if i < 0 || i >= len(h.instances) {
		return fmt.Errorf("hostsim: no instance %d", i)
	}
	in := h.instances[i]
	if in.cmd == nil {
		return fmt.Errorf("hostsim: instance %d was not started by the host (Config.HandlerURLs)", i)
	}
	if !in.down.Load() {
		return fmt.Errorf("hostsim: instance %d is running: Kill it first", i)
	}
	<-in.exited
	in.stopOnce = sync.Once{}
	in.sb = nil
	if err := h.startProcess(in); err != nil {
		return err
	}
	if err := h.waitAndForward(in); err != nil {
		in.kill()
		_ = in.cmd.Process.Kill()
		return err
	}
	if err := h.receive(in); err != nil {
		in.cancel()
		in.kill()
		_ = in.cmd.Process.Kill()
		return err
	}
	in.down.Store(false)
	return nil
}

// waitReady polls GET / until any HTTP answer, as the host waits for a
// custom handler before sending it work.
func (h *Host) waitReady(in *Instance, timeout time.Duration) error {
	probe := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(timeout)
	for {
		resp, err := probe.Get(in.URL() + "/")
		if err == nil {
			resp.Body.Close()
			return nil
		}
		if in.exited != nil {
			select {
			case <-in.exited:
				return fmt.Errorf("handler instance %d exited before answering (%s):\n%s", in.index, in.cmd.ProcessState, in.Output())
			default:
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("handler instance %d did not answer GET %s/ within %s:\n%s", in.index, in.URL(), timeout, in.Output())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// newProxy forwards a request unchanged to the instance, as the host does
// for an HTTP function with enableForwardingHttpRequest, adding the host's
// headers; the client's X-Forwarded-For is kept and the front door's peer
// appended, as App Service's front end does.
func (h *Host) newProxy(in *Instance, target *url.URL) *httputil.ReverseProxy {
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Header["X-Forwarded-For"] = pr.In.Header["X-Forwarded-For"]
			pr.SetXForwarded()
			pr.Out.Header.Set("X-Azure-Functions-InvocationId", newGUID())
			pr.Out.Header.Set("X-Azure-Functions-HostVersion", hostVersion)
		},
		Transport: h.client.Transport,
		ModifyResponse: func(resp *http.Response) error {
			in.counts.invoked(h.httpFn, resp.StatusCode >= 500)
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			in.counts.invoked(h.httpFn, true)
			h.logf("instance %d: forwarding %s %s: %v", in.index, r.Method, r.URL.Path, err)
			w.WriteHeader(http.StatusBadGateway)
		},
	}
}

func (h *Host) startFrontDoor() error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("starting the host's front door: %w", err)
	}
	h.frontURL = "http://" + ln.Addr().String()
	h.front = &http.Server{Handler: http.HandlerFunc(h.serveFront), ReadHeaderTimeout: 30 * time.Second}
	go func() { _ = h.front.Serve(ln) }()
	return nil
}

func (h *Host) serveFront(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/runtime/webhooks/eventgrid" {
		h.serveEventGrid(w, r)
		return
	}
	if h.httpFn == "" {
		http.Error(w, "no HTTP function", http.StatusNotFound)
		return
	}
	in := h.pick()
	if in == nil {
		http.Error(w, "no live instance", http.StatusServiceUnavailable)
		return
	}
	_, proxy := in.target()
	proxy.ServeHTTP(w, r)
}

// serveEventGrid is the Event Grid extension's webhook: it answers the
// subscription validation handshake and invokes the named function once
// per event of a notification.
func (h *Host) serveEventGrid(w http.ResponseWriter, r *http.Request) {
	fn, ok := h.events[r.URL.Query().Get("functionName")]
	if r.Method != http.MethodPost || !ok {
		http.Error(w, "no such Event Grid function", http.StatusNotFound)
		return
	}
	var events []json.RawMessage
	if err := json.NewDecoder(r.Body).Decode(&events); err != nil {
		http.Error(w, "the body is not an array of events", http.StatusBadRequest)
		return
	}
	switch r.Header.Get("aeg-event-type") {
	case "SubscriptionValidation":
		var ev struct {
			Data struct {
				ValidationCode string `json:"validationCode"`
			} `json:"data"`
		}
		if len(events) == 0 || json.Unmarshal(events[0], &ev) != nil {
			http.Error(w, "no validation event", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]string{"validationResponse": ev.Data.ValidationCode})
	case "Notification":
		for _, ev := range events {
			if _, err := h.sendEvent(r.Context(), fn, ev); err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
		}
		w.WriteHeader(http.StatusOK)
	default:
		http.Error(w, "aeg-event-type must be Notification or SubscriptionValidation", http.StatusBadRequest)
	}
}

// pick returns the next live instance, round robin; nil when every
// instance was killed.
func (h *Host) pick() *Instance {
	for range h.instances {
		in := h.instances[(h.next.Add(1)-1)%uint64(len(h.instances))]
		if !in.down.Load() {
			return in
		}
	}
	return nil
}

// URL is the front door: forwarded HTTP (/api/..., the portal) goes to the
// instances in turn, and /runtime/webhooks/eventgrid?functionName=NAME
// takes Event Grid deliveries.
func (h *Host) URL() string { return h.frontURL }

// Instances are the running instances.
func (h *Host) Instances() []*Instance { return h.instances }

// Stats are the counters of every instance added up.
func (h *Host) Stats() Stats {
	var total Stats
	for _, in := range h.instances {
		total = total.Add(in.Stats())
	}
	return total.Add(Stats{}) // maps even when there is no instance
}

// Faults are the protocol faults seen: answers the host could not read.
func (h *Host) Faults() []string {
	h.faultMu.Lock()
	defer h.faultMu.Unlock()
	return append([]string(nil), h.faults...)
}

func (h *Host) fault(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	h.faultMu.Lock()
	if len(h.faults) < 100 {
		h.faults = append(h.faults, msg)
	}
	h.faultMu.Unlock()
	h.logf("%s", msg)
}

func (h *Host) logf(format string, args ...any) {
	if h.cfg.Logf != nil {
		h.cfg.Logf(format, args...)
	}
}

// Result is a trigger invocation's answer.
type Result struct {
	Instance    int // which instance answered
	Status      int
	Outputs     map[string]any
	Logs        []string
	ReturnValue any
	Body        []byte
}

// invoke POSTs an invocation to /{function} of the instance and reads the
// answer as the host does: a non-2xx status fails the invocation, and so
// does a 2xx answer that is not a JSON {"Outputs","Logs","ReturnValue"}.
func (h *Host) invoke(ctx context.Context, in *Instance, function string, inv invocation) (Result, error) {
	res := Result{Instance: in.index}
	err := func() error {
		body, err := json.Marshal(inv)
		if err != nil {
			return fmt.Errorf("encoding the %s invocation: %w", function, err)
		}
		base, _ := in.target()
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/"+function, bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Azure-Functions-InvocationId", newGUID())
		req.Header.Set("X-Azure-Functions-HostVersion", hostVersion)
		req.Header.Set("User-Agent", "Azure-Functions-Host/"+hostVersion)
		resp, err := h.client.Do(req)
		if err != nil {
			return fmt.Errorf("invoking %s on instance %d: %w", function, in.index, err)
		}
		defer resp.Body.Close()
		res.Status = resp.StatusCode
		res.Body, err = io.ReadAll(io.LimitReader(resp.Body, 64<<20))
		if err != nil {
			return fmt.Errorf("reading the %s answer of instance %d: %w", function, in.index, err)
		}
		if resp.StatusCode/100 != 2 {
			return fmt.Errorf("%s on instance %d answered %d: %s", function, in.index, resp.StatusCode, bytes.TrimSpace(res.Body))
		}
		if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt != "application/json" && mt != "text/json" {
			h.fault("%s on instance %d answered Content-Type %q: the host reads only JSON", function, in.index, resp.Header.Get("Content-Type"))
			return fmt.Errorf("%s on instance %d answered Content-Type %q", function, in.index, resp.Header.Get("Content-Type"))
		}
		var out struct {
			Outputs     map[string]any `json:"Outputs"`
			Logs        []string       `json:"Logs"`
			ReturnValue any            `json:"ReturnValue"`
		}
		if err := json.Unmarshal(res.Body, &out); err != nil {
			h.fault("%s on instance %d answered a body the host cannot read: %v", function, in.index, err)
			return fmt.Errorf("%s on instance %d: decoding the answer: %w", function, in.index, err)
		}
		res.Outputs, res.Logs, res.ReturnValue = out.Outputs, out.Logs, out.ReturnValue
		return nil
	}()
	in.counts.invoked(function, err != nil)
	if err != nil {
		h.logf("%v", err)
	}
	return res, err
}

// FireTimer invokes the timer function once, on the next instance, with
// the host's TimerInfo; an error says the invocation failed.
func (h *Host) FireTimer(ctx context.Context) (Result, error) {
	if h.timer == nil {
		return Result{}, errors.New("hostsim: no function has a timer trigger")
	}
	t, _ := h.timer.Trigger()
	in := h.pick()
	if in == nil {
		return Result{}, errNoInstance
	}
	h.fireMu.Lock()
	now, last := time.Now(), h.lastFire
	h.lastFire = now
	h.fireMu.Unlock()
	return h.invoke(ctx, in, h.timer.Name, timerPayload(h.timer.Name, t.Name, last, now.Add(time.Minute)))
}

// SendEvent invokes the Event Grid function (the only one, or the first
// by name) with one event on the next instance. event is the event object:
// JSON bytes, or a value to encode.
func (h *Host) SendEvent(ctx context.Context, event any) (Result, error) {
	if len(h.events) == 0 {
		return Result{}, errors.New("hostsim: no function has an Event Grid trigger")
	}
	var fn Function
	for name, f := range h.events {
		if fn.Name == "" || name < fn.Name {
			fn = f
		}
	}
	var raw json.RawMessage
	switch e := event.(type) {
	case []byte:
		raw = e
	case json.RawMessage:
		raw = e
	case string:
		raw = json.RawMessage(e)
	default:
		b, err := json.Marshal(e)
		if err != nil {
			return Result{}, fmt.Errorf("encoding the event: %w", err)
		}
		raw = b
	}
	if !json.Valid(raw) {
		return Result{}, errors.New("hostsim: the event is not JSON")
	}
	return h.sendEvent(ctx, fn, raw)
}

func (h *Host) sendEvent(ctx context.Context, fn Function, event json.RawMessage) (Result, error) {
	in := h.pick()
	if in == nil {
		return Result{}, errNoInstance
	}
	t, _ := fn.Trigger()
	return h.invoke(ctx, in, fn.Name, eventPayload(fn.Name, t.Name, event))
}

var errNoInstance = errors.New("hostsim: every instance was killed")

// closeGrace is how long Close lets invocations under way finish.
const closeGrace = 10 * time.Second

// Close stops receiving (an invocation under way has closeGrace to finish
// and be settled, then is cut), the front door and the handler processes
// (interrupted, killed after five seconds). It may be called more than once.
func (h *Host) Close() error {
	h.closeOnce.Do(func() {
		h.lifeMu.Lock()
		defer h.lifeMu.Unlock()
		h.closed = true
		h.cancel()
		grace := make(chan struct{}) // closed when the grace is over, for every instance
		stopGrace := time.AfterFunc(closeGrace, func() { close(grace) })
		defer stopGrace.Stop()
		for _, in := range h.instances {
			done := make(chan struct{})
			go func() { in.receivers.Wait(); close(done) }()
			select {
			case <-done:
			case <-grace:
				if in.kill != nil {
					in.kill()
				}
				<-done
			}
			in.closeServiceBus()
		}
		if h.front != nil {
			_ = h.front.Close()
		}
		for _, in := range h.instances {
			in.stop()
			if in.kill != nil {
				in.kill()
			}
		}
		if h.client != nil {
			h.client.CloseIdleConnections()
		}
	})
	return nil
}

// Kill takes the instance away as when its host instance dies: the
// handler process is killed at once, the messages its receivers hold are
// not settled (the double hands them out again as soon as the connection
// ends; Azure may keep a message's lock until its lockDuration passes),
// and the front door, FireTimer and
// SendEvent use the other instances. Its counters stay readable.
func (in *Instance) Kill() {
	in.down.Store(true)
	if in.cmd != nil {
		_ = in.cmd.Process.Kill()
	}
	if in.cancel != nil {
		in.cancel()
		in.kill()
	}
	in.closeServiceBus()
	in.receivers.Wait()
}

func (in *Instance) closeServiceBus() {
	if in.sb == nil {
		return
	}
	in.stopOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = in.sb.Close(ctx)
		cancel()
	})
}

func (in *Instance) stop() {
	if in.cmd == nil {
		return
	}
	_ = in.cmd.Process.Signal(os.Interrupt)
	select {
	case <-in.exited:
	case <-time.After(5 * time.Second):
		_ = in.cmd.Process.Kill()
		<-in.exited
	}
}

// tailBuffer keeps the last limit bytes written to it.
type tailBuffer struct {
	mu    sync.Mutex
	buf   []byte
	limit int
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if len(b.buf) > 2*b.limit {
		b.buf = append([]byte(nil), b.buf[len(b.buf)-b.limit:]...)
	}
	return len(p), nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.buf) > b.limit {
		return string(b.buf[len(b.buf)-b.limit:])
	}
	return string(b.buf)
}
