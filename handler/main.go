// Command handler is jitaccess: just-in-time network access to Azure VMs.
//
//	handler local      runs everything in one process on embedded defaults: a
//	                   bbolt state file, a durable local queue and the ARM
//	                   simulator with a demo estate (see README.md).
//	handler functions  serves the Azure Functions host (the default when
//	                   FUNCTIONS_CUSTOMHANDLER_PORT is set): Table Storage,
//	                   Service Bus and Azure Resource Manager.
//
// main only wires: it reads the settings once, builds the adapters, hands them
// to the service and serves.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/rs/zerolog"

	"jitaccess/handler/armsim"
	"jitaccess/handler/httpapi"
	"jitaccess/handler/jit"
	"jitaccess/handler/localmode"
	"jitaccess/handler/localqueue"
	"jitaccess/handler/portal"
	"jitaccess/handler/webhook"
)

func main() {
	mode := "local"
	if os.Getenv("FUNCTIONS_CUSTOMHANDLER_PORT") != "" {
		mode = "functions"
	}
	if len(os.Args) > 1 {
		mode = os.Args[1]
	}
	log := zerolog.New(os.Stderr).With().Timestamp().Logger()
	cfg, err := readSettings(os.Getenv)
	if err == nil {
		if lvl, perr := zerolog.ParseLevel(cfg.LogLevel); perr == nil {
			log = log.Level(lvl)
		}
		switch mode {
		case "local":
			err = runLocal(log, cfg)
		case "functions":
			err = runFunctions(log, cfg)
		case "help", "-h", "--help":
			fmt.Println("usage: handler local | handler functions   (see README.md)")
			return
		default:
			err = fmt.Errorf("unknown mode %q: use `handler local` or `handler functions`", mode)
		}
	}
	if err != nil {
		log.Error().Err(err).Msg("handler stopped")
		os.Exit(1)
	}
}

// localGCPercent is the collector's target in local mode unless GOGC says
// otherwise: one process carries the API, the worker, the sweeper and the
// ARM simulator, whose JSON makes most of the garbage. Twice Go's default
// halves the collector's share of the CPU, which the API's latency feels,
// for a heap up to three times what is live (tens of megabytes).
const localGCPercent = 200

// workerConcurrency is how many NSGs the local worker writes at once. With
// the simulator answering at once, a write is CPU work in this process
// (JSON on both sides), so more writes than cores only take the cores from
// the API; batching per NSG absorbs a backlog. With a simulated ARM latency
// the writes wait on ARM instead, and more of them overlap.
func workerConcurrency(armLatency time.Duration) int {
	if armLatency <= 0 {
		return max(runtime.GOMAXPROCS(0), 2)
	}
	// At Azure's speed an NSG write takes seconds, most of them waiting:
	// 32 NSGs at once is what two Functions instances work on (16 each),
	// and the ARM driver paces them within the subscription's budget.
	return 32
}

// runLocal runs the API, the worker, the sweeper and the ARM simulator in
// this process until SIGINT or SIGTERM.
func runLocal(log zerolog.Logger, cfg settings) error {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(localGCPercent)
	}
	if err := checkLocalListen(cfg.Listen, cfg.ListenAny); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("creating data directory: %w", err)
	}
	sim, err := startSimulator(cfg, log)
	if err != nil {
		return err
	}
	armHandler := http.StripPrefix("/_arm", sim)
	netCfg := cfg.networkConfig(log)
	if cfg.ARMLatency < time.Second {
		// The simulator answers within a second: retry on its scale, not
		// Azure's. With a JIT_ARM_LATENCY of seconds it behaves as ARM
		// does, and the driver retries as it does in Azure.
		netCfg.Retry = policy.RetryOptions{MaxRetries: 4, RetryDelay: 100 * time.Millisecond, MaxRetryDelay: 2 * time.Second}
		netCfg.RetryDelay, netCfg.MaxRetryDelay = 100*time.Millisecond, 2*time.Second
		netCfg.PollFrequency = time.Second // azcore's minimum; the first poll is immediate
	}
	network, err := localmode.SimulatorNetwork(netCfg, "http://arm.local/_arm", inProcess{armHandler})
	if err != nil {
		return err
	}
	notifier, err := newNotifier(cfg)
	if err != nil {
		return err
	}
	lcfg := localmode.Config{
		Path:    filepath.Join(cfg.DataDir, "jitaccess.db"),
		Network: network,
		Service: cfg.serviceConfig(false, notifier, log),
		// The queue hands the worker every due operation of an NSG at
		// once, which it applies in one NSG write.
		Queue:         localqueue.Options{Concurrency: workerConcurrency(cfg.ARMLatency)},
		SweepInterval: cfg.SweepInterval,
	}
	if cfg.ChaosDrop > 0 || cfg.ChaosDuplicate > 0 {
		log.Warn().Float64("drop", cfg.ChaosDrop).Float64("duplicate", cfg.ChaosDuplicate).Msg("fault injection: close operations will be lost and repeated")
		lcfg.WrapQueue = func(q jit.Queue) jit.Queue { return newChaosQueue(q, cfg.ChaosDrop, cfg.ChaosDuplicate, log) }
	}
	app, err := localmode.Open(lcfg)
	if err != nil {
		return err
	}
	defer app.Close(context.Background()) // after the shutdown's Close, a no-op
	api := httpapi.New(app.API, httpapi.Config{Local: true, TrustedProxies: cfg.TrustedProxies, Log: log})
	if cfg.PProf {
		api.Handle("/debug/pprof/", http.HandlerFunc(pprof.Index))
		api.Handle("/debug/pprof/profile", http.HandlerFunc(pprof.Profile))
		api.Handle("/debug/pprof/trace", http.HandlerFunc(pprof.Trace))
	}
	api.Handle("GET /_arm/_stats", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The simulator's call counts since start: ARM calls by kind, faults.
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(sim.Calls())
	}))
	// The bench prepares estates with the simulator's Azure behaviour off.
	var az *armsim.Azure
	if cfg.ARMLatency > 0 {
		az = &cfg.ARMAzure
	}
	api.Handle("PUT /_arm/_azure", sim.AzureSwitch(az))
	api.Handle("/_arm/", emitEvents(armHandler, func(ev jit.ResourceEvent) {
		// As Event Grid would: at once, outside the request.
		app.Go(func(ctx context.Context) {
			if err := app.Reconciler.HandleResourceEvent(ctx, ev); err != nil {
				log.Warn().Err(err).Str("subject", ev.Subject).Msg("handling a simulated resource event failed; the next sweep retries")
			}
		})
	}))
	portal.Mount(api)
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listening on %s (JIT_LISTEN): %w", cfg.Listen, err)
	}
	log.Info().Str("listen", "http://"+ln.Addr().String()).Str("data", cfg.DataDir).Msg("jitaccess local mode is up")
	fmt.Fprintf(os.Stderr, "\njitaccess is running on http://%s (local mode, state in %s)\n"+
		"Try:\n  curl -s http://%s/api/v1/vms\n  see README.md for the walk-through\n\n", ln.Addr(), cfg.DataDir, ln.Addr())

	if err := app.Start(ctx); err != nil {
		return err
	}
	// Every route, /_arm and the portal included, answers only requests
	// addressed to this server.
	return serveUntilDone(ctx, addressedToUs(api, ln.Addr()), ln, localLimits, func(shutdown context.Context) {
		// The sweeps, event tasks and deliveries end before the file closes.
		if err := app.Close(shutdown); err != nil {
			log.Error().Err(err).Msg("closing the store and queue")
		}
		if err := sim.Save(filepath.Join(cfg.DataDir, "arm-estate.json")); err != nil {
			log.Error().Err(err).Msg("saving the simulator's estate")
		}
		log.Info().Msg("stopped")
	})
}

// startSimulator loads the ARM simulator's estate: the saved one from the
// data directory, else JIT_ARM_ESTATE, else the embedded demo estate. Every
// change is saved before the write is answered, as Azure never loses an
// acknowledged write; the save writes only what changed.
func startSimulator(cfg settings, log zerolog.Logger) (*armsim.Server, error) {
	path := filepath.Join(cfg.DataDir, "arm-estate.json")
	var sim *armsim.Server
	opts := armsim.Options{PathPrefix: "/_arm", OnChange: func(armsim.Change) {
		if err := sim.Save(path); err != nil {
			log.Error().Err(err).Msg("saving the simulator's estate")
		}
	}}
	if cfg.ARMLatency > 0 {
		// ARM as Azure runs it: writes that take time, one operation at a
		// time per NSG, the subscription's throttling budgets.
		az := cfg.ARMAzure
		opts.Azure = &az
		log.Info().Dur("writeTime", az.WriteTime).Dur("jitter", az.Jitter).Str("writes", az.Writes.String()).
			Str("deletes", az.Deletes.String()).Str("reads", az.Reads.String()).Msg("the ARM simulator behaves as ARM under load")
	}
	sim = armsim.New(opts)
	if cfg.ARMFaultRate > 0 {
		log.Warn().Float64("rate", cfg.ARMFaultRate).Msg("fault injection: the ARM simulator will fail writes")
		sim.SetChaos(armsim.FaultyWrites(cfg.ARMFaultRate, uint64(time.Now().UnixNano())))
	}
	from := ""
	if _, err := os.Stat(path); err == nil {
		from = path
	} else if cfg.Estate != "" {
		from = cfg.Estate
	}
	if from != "" {
		if err := sim.LoadFile(from); err != nil {
			return nil, fmt.Errorf("loading ARM simulator estate %s: %w", from, err)
		}
	}
	if err := sim.Save(path); err != nil {
		return nil, err
	}
	return sim, nil
}

// newNotifier returns the webhook notifier when JIT_WEBHOOK_URL is set.
// Notifications wait in the store until delivered, so there is nothing to
// drain at shutdown.
func newNotifier(cfg settings) (jit.Notifier, error) {
	if cfg.WebhookURL == "" {
		return nil, nil
	}
	return webhook.New(cfg.WebhookURL, webhook.Options{})
}

// emitEvents reports every successful write made through the simulator's
// public /_arm paths (a person's hand edit) as a resource event, as Event
// Grid reports changes in Azure. The service's own writes go in-process and
// are not reported.
func emitEvents(h http.Handler, emit func(jit.ResourceEvent)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		h.ServeHTTP(rec, r)
		if rec.status/100 != 2 || r.Method == http.MethodGet || strings.Contains(r.URL.Path, "/operations/") {
			return
		}
		typ := jit.EventWriteSuccess
		if r.Method == http.MethodDelete {
			typ = jit.EventDeleteSuccess
		}
		emit(jit.ResourceEvent{ID: "local-" + jit.NewRequestID()[:12], Type: typ, Subject: strings.TrimPrefix(r.URL.Path, "/_arm")})
	})
}

type statusWriter struct {
	http.ResponseWriter
	status int
	wrote  bool
}

func (s *statusWriter) WriteHeader(code int) {
	if !s.wrote {
		s.status, s.wrote = code, true
	}
	s.ResponseWriter.WriteHeader(code)
}

// inProcess serves the SDK's requests with an http.Handler in this process,
// without a socket.
type inProcess struct{ h http.Handler }

func (t inProcess) Do(req *http.Request) (*http.Response, error) {
	in := req.Clone(req.Context())
	if in.Host == "" {
		in.Host = req.URL.Host // servers read the host from here, not the URL
	}
	in.RemoteAddr = "127.0.0.1:0"
	in.RequestURI = req.URL.RequestURI()
	rec := newRecorder()
	t.h.ServeHTTP(rec, in)
	return rec.result(req), nil
}
