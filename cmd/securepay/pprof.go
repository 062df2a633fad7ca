package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/securepay/securepay/services"
)

// checkPprofListen keeps the profiler on loopback: a CPU profile stalls nothing but costs
// CPU while it runs, a heap profile names every allocation site, and a goroutine dump
// shows what the server is doing: none of it is for callers of the API.
func checkPprofListen(addr string) error {
	if addr == "" {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("--pprof-listen %q is not host:port: %v", addr, err)
	}
	if !services.IsLoopbackHost(host) {
		return fmt.Errorf("--pprof-listen %s is not a loopback address: the profiler answers anyone who reaches it, so it listens on 127.0.0.1, [::1] or localhost only (e.g. --pprof-listen 127.0.0.1:6060)", addr)
	}
	return nil
}

// pprofHandler serves Go's runtime profiles under /debug/pprof/ on a mux of its own, so
// nothing else (and nothing registered on http.DefaultServeMux) is reachable through it.
func pprofHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index) // heap, goroutine, allocs, block, mutex, ...
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// servePprof serves the profiles on ln until ctx ends. The write timeout leaves room for
// a CPU profile or trace of up to a minute (?seconds=60), the longest one worth taking.
func servePprof(ctx context.Context, ln net.Listener) func() {
	srv := &http.Server{Handler: pprofHandler(), ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second, WriteTimeout: 70 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	return func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if srv.Shutdown(sctx) != nil {
			_ = srv.Close()
		}
		<-done
	}
}
