package localmode_test

import (
	"context"
	"errors"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"jitaccess/handler/armsim"
	"jitaccess/handler/azurenet"
	"jitaccess/handler/jit"
	"jitaccess/handler/localmode"
)

const sub = "11111111-1111-1111-1111-111111111111"

func open(t *testing.T, path string) *localmode.App {
	t.Helper()
	return openWith(t, path, nil)
}

func openWith(t *testing.T, path string, n jit.Notifier) *localmode.App {
	t.Helper()
	srv := httptest.NewServer(armsim.New(armsim.Options{}))
	t.Cleanup(srv.Close)
	net, err := localmode.SimulatorNetwork(azurenet.Config{Owner: jit.Owner{Deployment: jit.DefaultDeployment}, Subscriptions: []string{sub}}, srv.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	app, err := localmode.Open(localmode.Config{Path: path, Network: net, SweepInterval: 20 * time.Millisecond,
		Service: jit.Config{MinDuration: time.Second, Subscriptions: []string{sub}, Notifier: n, NoticeBackoff: 10 * time.Millisecond,
			Log: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)}})
	if err != nil {
		t.Fatal(err)
	}
	return app
}

// Close ends the app's tasks and waits for them before it closes the file,
// so nothing (a notifier, the store) is used after it is closed; a task
// that comes after Close does not run; what was stored is there at the
// next start.
func TestCloseWaitsForTasks(t *testing.T) {
	path := filepath.Join(t.TempDir(), "jitaccess.db")
	app := open(t, path)
	if err := app.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	admin := jit.Principal{ID: "admin", Roles: []string{jit.RoleAdmin}}
	vm := "/subscriptions/" + sub + "/resourceGroups/demo/providers/Microsoft.Compute/virtualMachines/vm-nic-nsg"
	if _, err := app.API.PutPolicy(context.Background(), admin, jit.Policy{Name: "p", VMs: []jit.VMPolicy{{ID: vm,
		Ports: []jit.PortRule{{Number: 22, Protocol: jit.ProtocolTCP, AllowedSources: []string{"*"}, MaxDuration: time.Hour}}}}}, ""); err != nil {
		t.Fatalf("PutPolicy: %v", err)
	}
	var ended atomic.Bool
	started := make(chan struct{})
	app.Go(func(ctx context.Context) {
		close(started)
		<-ctx.Done()
		time.Sleep(50 * time.Millisecond) // still working when Close is called
		ended.Store(true)
	})
	<-started
	if err := app.Close(context.Background()); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if !ended.Load() {
		t.Fatal("Close returned before a running task ended")
	}
	var late atomic.Bool
	app.Go(func(context.Context) { late.Store(true) })
	time.Sleep(20 * time.Millisecond)
	if late.Load() {
		t.Error("a task given after Close ran")
	}

	again := open(t, path)
	defer again.Close(context.Background())
	if _, err := again.Store.GetPolicy(context.Background(), "p"); err != nil {
		t.Errorf("the policy stored before Close: %v", err)
	}
}

type receiver struct {
	mu   sync.Mutex
	down bool
	got  []jit.Notification
}

func (r *receiver) Deliver(_ context.Context, n jit.Notification) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.down {
		return errors.New("receiver down (injected)")
	}
	r.got = append(r.got, n)
	return nil
}

func (r *receiver) ids() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, n := range r.got {
		out = append(out, n.ID)
	}
	return out
}

// A notification stored while its receiver was down, by a process that
// then stopped, is delivered by the next start, once.
func TestNotificationsSurviveRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "jitaccess.db")
	down := &receiver{down: true}
	app := openWith(t, path, down)
	if err := app.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	ev := jit.AuditEvent{ID: "failure-1", Time: time.Now(), Action: jit.AuditFailure, Actor: "jitaccess", Result: jit.ResultFailure,
		Detail: "open failed", Notice: &jit.Notification{ID: "failure-1", Event: jit.EventFailed, Time: time.Now(), Detail: "open failed"}}
	if err := app.Store.AppendAudit(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	if _, err := app.API.DeliverNotices(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := app.Close(context.Background()); err != nil {
		t.Fatal(err)
	}

	up := &receiver{}
	again := openWith(t, path, up)
	if err := again.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer again.Close(context.Background())
	deadline := time.Now().Add(10 * time.Second)
	for len(up.ids()) == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
		if _, err := again.API.DeliverNotices(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if got := up.ids(); len(got) != 1 || got[0] != "failure-1" {
		t.Fatalf("delivered after the restart: %v, want failure-1 once", got)
	}
}
