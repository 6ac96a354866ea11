// Package portal is the jitaccess web page: a plain HTML, CSS and JavaScript
// front end to the REST API (/api/v1), embedded in the binary and served at
// "/" with its assets under "/portal/". It has no build step and loads
// nothing from elsewhere. It must not depend on the jit domain or any
// adapter: everything it shows comes from the public API, as for a bot.
package portal

import (
	"embed"
	"io/fs"
	"net/http"
)

//go:embed static
var static embed.FS

// Mux is where the portal's routes go (an *http.ServeMux, or the API server).
type Mux interface {
	Handle(pattern string, h http.Handler)
}

// Mount serves the page at "GET /" (that path only) and its assets under
// "GET /portal/".
func Mount(m Mux) {
	h := Handler()
	m.Handle("GET /{$}", h)
	m.Handle("GET /portal/", h)
}

// Handler serves the page for "/" and the assets for "/portal/...".
func Handler() http.Handler {
	assets, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	files := http.StripPrefix("/portal/", http.FileServerFS(assets))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		setHeaders(w.Header())
		if r.URL.Path == "/" {
			http.ServeFileFS(w, r, assets, "index.html")
			return
		}
		if r.URL.Path == "/portal/" || r.URL.Path == "/portal/index.html" {
			// One address for the page; the file server would list or redirect.
			http.Redirect(w, r, "/", http.StatusFound)
			return
		}
		files.ServeHTTP(w, r)
	})
}

// setHeaders keeps the page to its own origin: no inline script, no
// framing, no third-party anything.
func setHeaders(h http.Header) {
	h.Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "+
		"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Frame-Options", "DENY")
	// Assets change with the binary and carry no version in their names.
	h.Set("Cache-Control", "no-cache")
}
