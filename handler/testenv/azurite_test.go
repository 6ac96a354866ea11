package testenv

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"
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
