package main

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestPprofListenIsLoopbackOnly(t *testing.T) {
	cases := []struct {
		addr string
		ok   bool
	}{
		{"", true}, // none
		{"127.0.0.1:0", true},
		{"127.0.0.1:6060", true},
		{"[::1]:6060", true},
		{"localhost:6060", true},
		{":6060", false}, // every interface
		{"0.0.0.0:6060", false},
		{"[::]:6060", false},
		{"10.1.2.3:6060", false},
		{"pprof.example.com:6060", false},
		{"127.0.0.1", false}, // no port
	}
	for _, tc := range cases {
		err := checkPprofListen(tc.addr)
		if (err == nil) != tc.ok {
			t.Errorf("checkPprofListen(%q) = %v, want accepted=%v", tc.addr, err, tc.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "--pprof-listen") {
			t.Errorf("checkPprofListen(%q) = %q: the refusal should name the flag", tc.addr, err)
		}
	}
}

// TestPprofHandlerServesOnlyProfiles: the profiler's mux answers /debug/pprof/ and nothing
// else, not even what a library registered on http.DefaultServeMux.
func TestPprofHandlerServesOnlyProfiles(t *testing.T) {
	srv := httptest.NewServer(pprofHandler())
	defer srv.Close()
	for path, want := range map[string]int{
		"/debug/pprof/":             http.StatusOK,
		"/debug/pprof/cmdline":      http.StatusOK,
		"/debug/pprof/heap?debug=1": http.StatusOK,
		"/":                         http.StatusNotFound,
		"/metrics":                  http.StatusNotFound,
		"/debug/vars":               http.StatusNotFound,
	} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET %s: status %d, want %d", path, resp.StatusCode, want)
		}
	}
}
