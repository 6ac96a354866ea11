package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestSlowClientsAreCut holds the server open to a slowloris crowd, some
// sending their headers and some their body a byte at a time, more of them
// than the connection cap: /healthz must still answer, and every slow
// connection must be closed once its time is up. The limits are
// localLimits' shape on a shorter clock.
func TestSlowClientsAreCut(t *testing.T) {
	limits := serverLimits{ReadHeader: 300 * time.Millisecond, Read: 800 * time.Millisecond,
		Write: 5 * time.Second, Idle: 800 * time.Millisecond, MaxConns: 16}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, `{"status":"ok"}`) })
	mux.HandleFunc("POST /api/v1/echo", func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20)); err != nil {
			http.Error(w, "reading the body: "+err.Error(), http.StatusBadRequest)
		}
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- serveUntilDone(ctx, mux, ln, limits, func(context.Context) {}) }()
	t.Cleanup(func() { cancel(); <-served })

	const slow = 48 // three times the cap
	const giveUp = 6 * time.Second
	start := time.Now()
	closedAfter := make([]time.Duration, slow)
	var wg sync.WaitGroup
	for i := range slow {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		head := "POST /api/v1/echo HTTP/1.1\r\nHost: " + addr + "\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
		drip := strings.Repeat("x", 1000)
		if i%2 == 0 { // headers that never end
			head, drip = "GET /healthz HTTP/1.1\r\nHost: "+addr+"\r\nX-Slow: ", strings.Repeat("a", 1000)
		}
		if _, err := io.WriteString(c, head); err != nil {
			t.Fatal(err)
		}
		wg.Add(2)
		closed := make(chan struct{})
		go func() { // one byte every 100 ms until the server hangs up
			defer wg.Done()
			for j := 0; j < len(drip); j++ {
				select {
				case <-closed:
					return
				case <-time.After(100 * time.Millisecond):
				}
				if time.Since(start) > giveUp {
					return
				}
				if _, err := c.Write([]byte{drip[j]}); err != nil {
					return
				}
			}
		}()
		go func() {
			defer wg.Done()
			_ = c.SetReadDeadline(start.Add(giveUp))
			_, err := io.Copy(io.Discard, c)
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				closedAfter[i] = -1 // still open when the test gave up
			} else {
				closedAfter[i] = time.Since(start)
			}
			close(closed)
		}()
	}

	client := &http.Client{Timeout: giveUp}
	t0 := time.Now()
	resp, err := client.Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatalf("/healthz while %d slow clients are connected: %v", slow, err)
	}
	resp.Body.Close()
	// The slow clients fill the cap in waves, each cut after limits.Read.
	if took := time.Since(t0); resp.StatusCode != 200 || took > 4*limits.Read {
		t.Errorf("/healthz answered %d after %v with %d slow clients connected, want 200 within %v", resp.StatusCode, took, slow, 4*limits.Read)
	}

	// An idle keep-alive connection is closed after limits.Idle.
	idle, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	fmt.Fprintf(idle, "GET /healthz HTTP/1.1\r\nHost: %s\r\n\r\n", addr)
	br := bufio.NewReader(idle)
	r, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("keep-alive request: %v", err)
	}
	_, _ = io.Copy(io.Discard, r.Body)
	r.Body.Close()
	t1 := time.Now()
	_ = idle.SetReadDeadline(t1.Add(limits.Idle + 2*time.Second))
	if _, err := br.ReadByte(); err == nil {
		t.Error("an idle keep-alive connection received data")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Errorf("an idle keep-alive connection was still open %v later, want it closed after %v", time.Since(t1), limits.Idle)
	}

	wg.Wait()
	open := 0
	for i, d := range closedAfter {
		if d < 0 {
			open++
			if open <= 3 {
				kind := "body"
				if i%2 == 0 {
					kind = "headers"
				}
				t.Errorf("slow client %d (dripping its %s) was still connected after %v; want it cut after %v (ReadHeader %v)", i, kind, giveUp, limits.Read, limits.ReadHeader)
			}
		}
	}
	if open > 0 {
		t.Errorf("%d of %d slow clients were never cut", open, slow)
	}
}

// TestLongHandlersAreNotCut: a request whose body came in time may take
// longer than the body's deadline (a worker invocation writing NSGs for
// minutes, a sweep): its context is not cancelled and its answer arrives.
func TestLongHandlersAreNotCut(t *testing.T) {
	limits := serverLimits{ReadHeader: 200 * time.Millisecond, Read: 200 * time.Millisecond, Write: 5 * time.Second, Idle: time.Second, MaxConns: 8}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /worker", func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.ReadAll(r.Body); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		select {
		case <-time.After(700 * time.Millisecond):
			fmt.Fprint(w, "done")
		case <-r.Context().Done():
			http.Error(w, "cancelled", http.StatusServiceUnavailable)
		}
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- serveUntilDone(ctx, mux, ln, limits, func(context.Context) {}) }()
	t.Cleanup(func() { cancel(); <-served })
	resp, err := http.Post("http://"+ln.Addr().String()+"/worker", "application/json", strings.NewReader(`{"Data":{}}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(body) != "done" {
		t.Errorf("a handler running past the body deadline: %d %s", resp.StatusCode, body)
	}
}
