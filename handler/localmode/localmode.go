// Package localmode assembles local mode: the bbolt store and the local
// queue in one file, the service, the queue's delivery to it, and the sweep
// loop. `handler local`, the bench and the tests build local mode here and
// nowhere else, so that what they measure and test is what users run.
//
// The queue is built first and the service on it; the service becomes the
// queue's worker when the app starts, so neither needs the other to exist
// first.
package localmode

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/rs/zerolog"

	"jitaccess/handler/azurenet"
	"jitaccess/handler/boltstore"
	"jitaccess/handler/jit"
	"jitaccess/handler/localqueue"
)

// Config is what differs between the builds of local mode.
type Config struct {
	// Path is the bbolt file of the store and the queue.
	Path string
	// Network is the ARM side (see SimulatorNetwork).
	Network jit.Network
	// Service configures the service.
	Service jit.Config
	// Queue tunes the local queue; it logs to the service's logger.
	Queue localqueue.Options
	// SweepInterval, when positive, makes Start sweep at once (closing what
	// is overdue, reading the inventory) and reconcile every interval.
	// Zero leaves sweeping to the caller.
	SweepInterval time.Duration
	// WrapStore and WrapQueue, when set, wrap the store and the queue the
	// service uses: fault tests put faults between them.
	WrapStore func(jit.Store) jit.Store
	WrapQueue func(jit.Queue) jit.Queue
}

// App is local mode, built.
type App struct {
	DB    *boltstore.DB
	Store jit.Store // what the service uses (wrapped if asked)
	Queue *localqueue.Queue
	// The service's roles, built in this order over the store, the
	// network and the queue: the API queues operations, the queue delivers
	// them to the Worker when it starts, and the Reconciler sweeps.
	API        *jit.API
	Worker     *jit.Applier
	Reconciler *jit.Reconciler

	cfg    Config
	log    zerolog.Logger
	ctx    context.Context // the tasks' context, from Start
	cancel context.CancelFunc
	tasks  sync.WaitGroup
	mu     sync.Mutex
	closed bool
}

// Open builds local mode on the file at cfg.Path. Nothing runs until Start.
func Open(cfg Config) (*App, error) {
	if cfg.Network == nil {
		return nil, errors.New("local mode needs a network")
	}
	db, err := boltstore.Open(cfg.Path)
	if err != nil {
		return nil, err
	}
	store, err := boltstore.New(db.Bolt())
	if err != nil {
		db.Close()
		return nil, err
	}
	cfg.Queue.Logger = cfg.Service.Log
	queue, err := localqueue.New(db.Bolt(), cfg.Queue)
	if err != nil {
		db.Close()
		return nil, err
	}
	var st jit.Store = store
	if cfg.WrapStore != nil {
		st = cfg.WrapStore(st)
	}
	var q jit.Queue = queue
	if cfg.WrapQueue != nil {
		q = cfg.WrapQueue(q)
	}
	a := &App{DB: db, Store: st, Queue: queue, cfg: cfg, log: cfg.Service.Log}
	// The service's background work (delivering notifications) is a task
	// of the app: Close waits for it before the file closes.
	cfg.Service.Go = a.Go
	core := jit.NewCore(st, cfg.Network, cfg.Service)
	a.API = jit.NewAPI(core, q)
	a.Worker = jit.NewApplier(core)
	a.Reconciler = jit.NewReconciler(a.API, a.Worker)
	return a, nil
}

// Start starts the queue's delivery to the service and, with a sweep
// interval, the sweeps. Tasks end when ctx is done or at Close.
func (a *App) Start(ctx context.Context) error {
	a.mu.Lock()
	a.ctx, a.cancel = context.WithCancel(ctx)
	a.mu.Unlock()
	if err := a.Queue.Start(a.ctx, a.Worker); err != nil {
		a.cancel()
		return err
	}
	if a.cfg.SweepInterval > 0 {
		// Overdue closes run at once, beside the API (which must answer
		// while a long backlog is worked off): access ends even when the
		// process was down at the end time.
		a.Go(func(ctx context.Context) {
			if n, err := a.Reconciler.Sweep(ctx); err != nil {
				a.log.Warn().Err(err).Int("closed", n).Msg("start-up sweep incomplete; the next sweep retries")
			}
			if err := a.Reconciler.RefreshInventory(ctx); err != nil {
				a.log.Warn().Err(err).Msg("reading the VM inventory failed; GET /api/v1/vms will read it")
			}
			a.sweepEvery(ctx, a.cfg.SweepInterval)
		})
	}
	return nil
}

// Go runs fn as a task of the started app: Close cancels its context and
// waits for it. Before Start or after Close, fn does not run.
func (a *App) Go(fn func(context.Context)) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed || a.ctx == nil {
		a.log.Warn().Msg("a background task came while local mode was not running; the next sweep does its work")
		return
	}
	a.tasks.Add(1)
	ctx := a.ctx
	go func() {
		defer a.tasks.Done()
		fn(ctx)
	}()
}

func (a *App) sweepEvery(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if _, err := a.Reconciler.Reconcile(ctx); err != nil && !errors.Is(err, context.Canceled) {
				a.log.Warn().Err(err).Msg("sweep incomplete; the next sweep retries")
			}
		}
	}
}

// Close stops the tasks and waits for them, then lets running operations
// finish (until ctx is done) and closes the file. Operations not yet run
// stay in it for the next start.
func (a *App) Close(ctx context.Context) error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil
	}
	a.closed = true
	a.mu.Unlock()
	if a.cancel != nil {
		a.cancel()
	}
	a.tasks.Wait()
	qerr := a.Queue.Close(ctx)
	if err := a.DB.Close(); err != nil {
		return errors.Join(qerr, fmt.Errorf("closing %s: %w", a.cfg.Path, err))
	}
	return qerr
}

// SimulatorNetwork is the azurenet driver on an ARM simulator at endpoint,
// reached through transport (nil: over HTTP). The simulator checks no
// tokens; the driver is handed a placeholder.
func SimulatorNetwork(cfg azurenet.Config, endpoint string, transport policy.Transporter) (*azurenet.Driver, error) {
	return azurenet.New(cfg, placeholderCredential{}, &arm.ClientOptions{ClientOptions: azcore.ClientOptions{
		Cloud: cloud.Configuration{Services: map[cloud.ServiceName]cloud.ServiceConfiguration{
			cloud.ResourceManager: {Endpoint: endpoint, Audience: "https://management.azure.com"},
		}},
		Transport:                       transport,
		InsecureAllowCredentialWithHTTP: true,
	}})
}

type placeholderCredential struct{}

func (placeholderCredential) GetToken(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error) {
	return azcore.AccessToken{Token: "local-simulator", ExpiresOn: time.Now().Add(time.Hour)}, nil
}
