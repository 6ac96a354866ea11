package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// checkLocalListen refuses a listen address beyond the loopback unless the
// operator said so: local mode has no sign-in, and every caller is an
// administrator who can open any port of any VM.
func checkLocalListen(listen string, allowAny bool) error {
	if allowAny {
		return nil
	}
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return fmt.Errorf("JIT_LISTEN %q is not host:port: %w", listen, err)
	}
	if strings.EqualFold(host, "localhost") {
		return nil
	}
	if ip, err := netip.ParseAddr(host); err == nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("JIT_LISTEN %q is not a loopback address: in local mode every caller is an administrator, without sign-in; "+
		"listen on 127.0.0.1, or set JIT_LISTEN_ANY=true if only trusted people can reach this address", listen)
}

// addressedToUs answers 421 to a request whose Host header names anything
// but this server: its listen address, localhost or the loopback, on any
// port (a forwarded port reaches it too). A web page can make a browser send requests to 127.0.0.1
// under a name of its own (DNS rebinding) and read the answers; such
// requests carry that name in Host. A name other than localhost is refused
// even when listening on every address, where only IP literals are
// accepted.
func addressedToUs(h http.Handler, listen net.Addr) http.Handler {
	ap, err := netip.ParseAddrPort(listen.String())
	if err != nil {
		panic(fmt.Sprintf("listen address %s: %v", listen, err)) // a TCP listener's address always parses
	}
	own := ap.Addr().Unmap()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hostIsUs(r.Host, own) {
			h.ServeHTTP(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusMisdirectedRequest)
		_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{
			"code": "MisdirectedRequest",
			"message": fmt.Sprintf("the Host header %q does not name this server: local mode answers only requests to localhost, 127.0.0.1, [::1] or its listen address %s "+
				"(against DNS rebinding from web pages)", r.Host, listen),
		}})
	})
}

func hostIsUs(hostHeader string, own netip.Addr) bool {
	// Any port: a forwarded port (ssh -L, a container's) reaches this
	// server too, and DNS rebinding needs a name of the attacker's, which
	// is what is refused.
	host, _, err := net.SplitHostPort(hostHeader)
	if err != nil {
		host = strings.TrimSuffix(strings.TrimPrefix(hostHeader, "["), "]")
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return false
	}
	ip = ip.Unmap()
	return ip.IsLoopback() || ip == own || own.IsUnspecified()
}
