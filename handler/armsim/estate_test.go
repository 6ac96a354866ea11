package armsim

import (
	"bytes"
	"encoding/json"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v9"
)

// A Save that finds nothing changed writes nothing, even when a change was
// counted after another Save had already written it (a writer's change is
// recorded before it is counted, so a concurrent Save may take it first).
func TestSaveWithNothingChangedWritesNothing(t *testing.T) {
	s := New(Options{})
	path := filepath.Join(t.TempDir(), "estate.json")
	if err := s.Save(path); err != nil {
		t.Fatal(err)
	}
	if err := s.AddRule(DemoID(typeNSG, "nsg-vm-nic"), benchRule(1000)); err != nil {
		t.Fatal(err)
	}
	if err := s.Save(path); err != nil {
		t.Fatal(err)
	}
	snapshot, _ := os.ReadFile(path)
	journal, _ := os.ReadFile(journalPath(path))
	if n := bytes.Count(journal, []byte("\n")); n != 1 {
		t.Fatalf("journal has %d lines after one NSG changed, want 1", n)
	}
	s.changes.Add(1)
	if err := s.Save(path); err != nil {
		t.Fatal(err)
	}
	if now, _ := os.ReadFile(path); !bytes.Equal(now, snapshot) {
		t.Error("snapshot rewritten with nothing changed")
	}
	if now, _ := os.ReadFile(journalPath(path)); !bytes.Equal(now, journal) {
		t.Errorf("journal grew with nothing changed:\n%s", now[len(journal):])
	}
}

// Reads reuse the JSON Save wrote of the resources that did not change
// since; their answers must be the bytes marshalling the resources gives,
// pages and nextLink included, before and after a write.
func TestReadsFromSaveCacheMatchMarshal(t *testing.T) {
	s := New(Options{Empty: true, PageSize: 40})
	if err := s.replaceEstate(largeEstate(100)); err != nil {
		t.Fatal(err)
	}
	if err := s.Save(filepath.Join(t.TempDir(), "estate.json")); err != nil {
		t.Fatal(err)
	}
	nsgs := sortedValues(s.st.nsgs)
	if err := s.AddRule(*nsgs[1].ID, benchRule(1000)); err != nil { // changed since the save
		t.Fatal(err)
	}
	get := func(url string) []byte {
		t.Helper()
		w := httptest.NewRecorder()
		s.ServeHTTP(w, httptest.NewRequest("GET", url, nil))
		if w.Code != 200 {
			t.Fatalf("GET %s: %d %s", url, w.Code, w.Body)
		}
		return w.Body.Bytes()
	}
	for _, nsg := range nsgs[:3] {
		want, _ := json.Marshal(nsg)
		if got := get(*nsg.ID + "?api-version=2025-05-01"); !bytes.Equal(got, want) {
			t.Errorf("GET %s:\n%s\nwant\n%s", *nsg.ID, got, want)
		}
	}
	url := "http://example.test/subscriptions/" + DemoSubscription + "/providers/Microsoft.Network/networkSecurityGroups?api-version=2025-05-01"
	pages := 0
	for page := 0; url != ""; page++ {
		pages++
		got := get(url)
		var answer struct{ NextLink string }
		if err := json.Unmarshal(got, &answer); err != nil {
			t.Fatal(err)
		}
		items := make([]any, 0, 40)
		for _, nsg := range nsgs[page*40 : min(page*40+40, len(nsgs))] {
			items = append(items, nsg)
		}
		want, _ := json.Marshal(struct {
			Value    []any  `json:"value"`
			NextLink string `json:"nextLink,omitempty"`
		}{items, answer.NextLink})
		if !bytes.Equal(got, want) {
			t.Errorf("page %d differs from marshalling it:\n%s\nwant\n%s", page, got, want)
		}
		url = answer.NextLink
	}
	if pages != 3 {
		t.Errorf("%d NSGs came in %d pages of 40", len(nsgs), pages)
	}
}

func benchRule(priority int32) armnetwork.SecurityRule {
	return armnetwork.SecurityRule{Name: to.Ptr("jit-bench"), Properties: &armnetwork.SecurityRulePropertiesFormat{
		Access: to.Ptr(armnetwork.SecurityRuleAccessAllow), Direction: to.Ptr(armnetwork.SecurityRuleDirectionInbound),
		Protocol: to.Ptr(armnetwork.SecurityRuleProtocolTCP), Priority: to.Ptr(priority),
		SourcePortRange: to.Ptr("*"), DestinationPortRange: to.Ptr("22"),
		SourceAddressPrefix: to.Ptr("203.0.113.7"), DestinationAddressPrefix: to.Ptr("10.0.0.4")}}
}
