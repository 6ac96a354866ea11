package localmode_test

import (
	"context"
	"net/http/httptest"
	"path/filepath"
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
	srv := httptest.NewServer(armsim.New(armsim.Options{}))
	t.Cleanup(srv.Close)
	net, err := localmode.SimulatorNetwork(azurenet.Config{Owner: jit.Owner{Deployment: jit.DefaultDeployment}, Subscriptions: []string{sub}}, srv.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	app, err := localmode.Open(localmode.Config{Path: path, Network: net, SweepInterval: 20 * time.Millisecond,
		Service: jit.Config{MinDuration: time.Second, Subscriptions: []string{sub}, Log: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)}})
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
	if _, err := app.Service.PutPolicy(context.Background(), admin, jit.Policy{Name: "p", VMs: []jit.VMPolicy{{ID: vm,
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
