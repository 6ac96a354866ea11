package e2etest

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"jitaccess/handler/armsim"
)

// callKinds collects the kinds of ARM call ("PUT securityRules", ...) a test
// saw the service make, so that the test can hold the deployed custom role
// against them.
type callKinds struct {
	mu    sync.Mutex
	kinds map[string]bool
}

func (k *callKinds) add(kind string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.kinds == nil {
		k.kinds = map[string]bool{}
	}
	k.kinds[kind] = true
}

// addStats adds the kinds a local-mode process's simulator counted
// (GET /_arm/_stats).
func (k *callKinds) addStats(base string) {
	resp, err := http.Get(base + "/_arm/_stats")
	if err != nil {
		return
	}
	defer resp.Body.Close()
	var st struct{ ByKind map[string]int }
	if json.NewDecoder(resp.Body).Decode(&st) == nil {
		for kind := range st.ByKind {
			k.add(kind)
		}
	}
}

// checkRoleCovers fails the test when the service made an ARM call whose
// permission the custom role in infra/main.bicep lacks: in Azure that call
// would answer 403.
func (k *callKinds) checkRoleCovers(t *testing.T) {
	t.Helper()
	role := customRoleActions(t)
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(k.kinds) == 0 {
		t.Fatal("no ARM calls were recorded: the role cannot be checked")
	}
	for kind := range k.kinds {
		action, ok := armsim.RoleAction(kind)
		if !ok {
			t.Errorf("ARM call %q has no known permission: add it to armsim's callActions", kind)
			continue
		}
		if !slices.Contains(role, action) {
			t.Errorf("the service makes %q, which needs %s: infra/main.bicep's custom role lacks it", kind, action)
		}
	}
}

// customRoleActions reads the actions of the custom role from main.bicep.
func customRoleActions(t *testing.T) []string {
	t.Helper()
	src, err := os.ReadFile(filepath.Join("..", "..", "infra", "main.bicep"))
	if err != nil {
		t.Fatal(err)
	}
	_, block, ok := strings.Cut(string(src), "var jitOperatorActions = [")
	block, _, closed := strings.Cut(block, "]")
	if !ok || !closed {
		t.Fatal("infra/main.bicep has no jitOperatorActions list")
	}
	var actions []string
	for _, line := range strings.Split(block, "\n") {
		if a := strings.Trim(strings.TrimSpace(line), "'"); a != "" {
			actions = append(actions, a)
		}
	}
	return actions
}
