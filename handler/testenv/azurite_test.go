package testenv

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"
)

func TestStartAzurite(t *testing.T) {
	az := StartAzurite(t)
	if az.Port() == 0 {
		t.Fatal("Azurite has no port")
	}
	cs := az.ConnectionString()
	for _, want := range []string{"AccountName=devstoreaccount1;", "AccountKey=" + AzuriteKey + ";", "TableEndpoint=" + az.TableURL() + ";"} {
		if !strings.Contains(cs, want) {
			t.Errorf("ConnectionString() = %q, want it to contain %q", cs, want)
		}
	}
	// An unauthenticated request reaches the table service, which refuses it.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, az.TableURL()+"/Tables", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET /Tables: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden && resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("GET /Tables without credentials = %s, want 403 from the table service", resp.Status)
	}
}

// An Azurite on disk comes back from Restart with its tables; one in
// memory refuses to restart.
func TestAzuriteRestart(t *testing.T) {
	az := StartAzuriteOnDisk(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	svc, err := aztables.NewServiceClientFromConnectionString(az.ConnectionString(), nil)
	if err != nil {
		t.Fatal(err)
	}
	table := svc.NewClient("restart")
	if _, err := table.CreateTable(ctx, nil); err != nil {
		t.Fatal(err)
	}
	entity, _ := json.Marshal(aztables.EDMEntity{Entity: aztables.Entity{PartitionKey: "p", RowKey: "r"}, Properties: map[string]any{"Kept": "yes"}})
	if _, err := table.AddEntity(ctx, entity, nil); err != nil {
		t.Fatal(err)
	}
	if err := az.Restart(500 * time.Millisecond); err != nil {
		t.Fatal(err)
	}
	got, err := table.GetEntity(ctx, "p", "r", nil)
	if err != nil {
		t.Fatalf("reading the entity after the restart: %v", err)
	}
	if !strings.Contains(string(got.Value), `"Kept":"yes"`) {
		t.Errorf("after the restart the entity is %s", got.Value)
	}
	if err := StartAzurite(t).Restart(0); err == nil {
		t.Error("an Azurite in memory restarted")
	}
}
