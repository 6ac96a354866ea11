package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"sync"
	"time"
)

// serverLimits bound what one client may hold of the server: how long it
// may take to send a request, how long an idle keep-alive connection stays
// open, and how many connections are served at once. Without them a few
// hundred clients sending a body byte by byte held every file descriptor,
// and /healthz went unanswered.
type serverLimits struct {
	ReadHeader time.Duration // request line and headers
	// Read bounds reading a request's body. It is not http.Server's
	// ReadTimeout, whose deadline stays on the connection while the
	// handler runs: this one is cleared once the body has been read, so a
	// worker invocation or a sweep of minutes never runs against it.
	Read     time.Duration
	Write    time.Duration // from the end of the headers to the end of the answer
	Idle     time.Duration // a keep-alive connection between requests
	MaxConns int           // connections served at once; more wait in the kernel's backlog
}

// localLimits suit `handler local`: request bodies are at most 1 MiB, which
// a slow laptop link sends in seconds; the longest answer is a 30 s profile
// (JIT_PPROF) or a large audit export.
var localLimits = serverLimits{
	ReadHeader: 10 * time.Second,
	Read:       30 * time.Second,
	Write:      2 * time.Minute,
	Idle:       2 * time.Minute,
	MaxConns:   768,
}

// functionsLimits suit Functions mode, whose only peer is the Functions
// host on the loopback. Invocations (the worker's NSG writes) may run for
// minutes: WriteTimeout stays within the host's own client timeout
// (functionTimeout 5 min in host.json, + 1 minute), so the host, not we,
// decides when an invocation has taken too long.
var functionsLimits = serverLimits{
	ReadHeader: 30 * time.Second,
	Read:       time.Minute,
	Write:      6 * time.Minute,
	Idle:       2 * time.Minute,
	MaxConns:   768,
}

// newServer is the http.Server both modes serve with.
func newServer(h http.Handler, l serverLimits) *http.Server {
	return &http.Server{
		Handler:           bodyDeadline(h, l.Read),
		ReadHeaderTimeout: l.ReadHeader,
		WriteTimeout:      l.Write,
		IdleTimeout:       l.Idle,
	}
}

// bodyDeadline gives a request with a body d to send it: the connection's
// read deadline is set when the handler starts and cleared once the body
// has been read to its end (or closed), so a slow body is cut while a long
// handler, its body read, is not.
func bodyDeadline(h http.Handler, d time.Duration) http.Handler {
	if d <= 0 {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
			h.ServeHTTP(w, r)
			return
		}
		rc := http.NewResponseController(w)
		if err := rc.SetReadDeadline(time.Now().Add(d)); err == nil {
			r.Body = &deadlineBody{ReadCloser: r.Body, clear: func() { _ = rc.SetReadDeadline(time.Time{}) }}
		}
		h.ServeHTTP(w, r)
	})
}

// deadlineBody clears the read deadline once the body is done.
type deadlineBody struct {
	io.ReadCloser
	once  sync.Once
	clear func()
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.once.Do(b.clear)
	}
	return n, err
}

func (b *deadlineBody) Close() error {
	b.once.Do(b.clear)
	return b.ReadCloser.Close()
}

// serveUntilDone serves h on ln within the limits until ctx ends (SIGINT,
// SIGTERM) or serving fails, then shuts the server down and calls stop,
// within 10 s.
func serveUntilDone(ctx context.Context, h http.Handler, ln net.Listener, l serverLimits, stop func(shutdown context.Context)) error {
	srv := newServer(h, l)
	if l.MaxConns > 0 {
		ln = limitListener(ln, l.MaxConns)
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = srv.Shutdown(shutdown)
	stop(shutdown)
	return nil
}

// limitListener accepts at most n connections at a time: Accept waits
// until one of them is closed. (golang.org/x/net/netutil has the same; it
// is not worth a dependency.)
func limitListener(ln net.Listener, n int) net.Listener {
	return &limitedListener{Listener: ln, slots: make(chan struct{}, n), done: make(chan struct{})}
}

type limitedListener struct {
	net.Listener
	slots     chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

func (l *limitedListener) Accept() (net.Conn, error) {
	select {
	case l.slots <- struct{}{}:
	case <-l.done:
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.slots
		return nil, err
	}
	return &limitedConn{Conn: c, release: func() { <-l.slots }}, nil
}

func (l *limitedListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.Listener.Close()
}

type limitedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
