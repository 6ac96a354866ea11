package portal

import (
	"io/fs"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestRoutes(t *testing.T) {
	mux := http.NewServeMux()
	Mount(mux)
	for _, tc := range []struct {
		path, wantType string
		wantStatus     int
	}{
		{"/", "text/html", http.StatusOK},
		{"/portal/app.js", "text/javascript", http.StatusOK},
		{"/portal/style.css", "text/css", http.StatusOK},
		{"/portal/nope.js", "", http.StatusNotFound},
		{"/portal/", "", http.StatusFound},
	} {
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest("GET", tc.path, nil))
		if rec.Code != tc.wantStatus {
			t.Errorf("GET %s: status %d, want %d", tc.path, rec.Code, tc.wantStatus)
		}
		if tc.wantType != "" && !strings.HasPrefix(rec.Header().Get("Content-Type"), tc.wantType) {
			t.Errorf("GET %s: Content-Type %q, want %s", tc.path, rec.Header().Get("Content-Type"), tc.wantType)
		}
		if csp := rec.Header().Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") {
			t.Errorf("GET %s: Content-Security-Policy %q", tc.path, csp)
		}
	}
	// Only "/" itself is the page: other paths stay the API's to answer.
	if _, pattern := mux.Handler(httptest.NewRequest("GET", "/other", nil)); pattern != "" {
		t.Errorf("GET /other is routed to %q; want it left to the API", pattern)
	}
}

// TestNoUnsafeSinks keeps API data out of HTML parsing and the page free of
// anything loaded from elsewhere.
func TestNoUnsafeSinks(t *testing.T) {
	forbidden := []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function",
		"http://", "https://", "<script>", "style=\""}
	err := fs.WalkDir(static, "static", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := static.ReadFile(path)
		if err != nil {
			return err
		}
		for _, f := range forbidden {
			if strings.Contains(string(b), f) {
				t.Errorf("%s contains %q", path, f)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
