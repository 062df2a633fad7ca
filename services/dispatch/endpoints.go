package dispatch

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
)

// Bounds of an endpoints file: a static list is for a handful of receivers; a registry
// (services/webhook) serves more.
const (
	maxStaticEndpoints = 1000
	minSecretBytes     = 16
	maxSecretBytes     = 1024
)

// ParseEndpoints reads a static endpoint list (`securepay serve dispatcher
// --endpoints-file`, docs/WEBHOOKS.md):
//
//	{"endpoints": [{"id": "ep-1", "url": "https://example.com/hook", "secret": "…",
//	                "accounts": ["alice", "bob"], "event_types": ["ledger.account.credited.v1"]}]}
//
// accounts "*" is every account; event_types empty is every notification type. Every
// problem is named at once; unknown fields are refused (a misspelt "acounts" would
// otherwise subscribe nobody, silently).
func ParseEndpoints(data []byte) (StaticDirectory, error) {
	var file struct {
		Endpoints []struct {
			ID         string   `json:"id"`
			URL        string   `json:"url"`
			Secret     string   `json:"secret"`
			Accounts   []string `json:"accounts"`
			EventTypes []string `json:"event_types"`
		} `json:"endpoints"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&file); err != nil {
		return nil, fmt.Errorf("endpoints: not the JSON of docs/WEBHOOKS.md: %w", err)
	}
	if dec.More() {
		return nil, errors.New("endpoints: more than one JSON value")
	}
	if len(file.Endpoints) > maxStaticEndpoints {
		return nil, fmt.Errorf("endpoints: %d endpoints, at most %d in a file", len(file.Endpoints), maxStaticEndpoints)
	}
	known := NotificationTypes()
	dir := StaticDirectory{}
	ids := map[string]bool{}
	var errs []error
	for i, e := range file.Endpoints {
		bad := func(format string, args ...any) {
			errs = append(errs, fmt.Errorf("endpoint %d (%q): %s", i+1, clip(e.ID), fmt.Sprintf(format, args...)))
		}
		switch {
		case e.ID == "":
			bad("no id")
		case ids[e.ID]:
			bad("the id is used twice")
		}
		ids[e.ID] = true
		if u, err := url.Parse(e.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			bad("url %q is not an absolute http(s) URL", clip(e.URL))
		}
		if len(e.Secret) < minSecretBytes || len(e.Secret) > maxSecretBytes {
			bad("the secret has %d bytes, want %d to %d (random, e.g. openssl rand -hex 32)", len(e.Secret), minSecretBytes, maxSecretBytes)
		}
		if len(e.Accounts) == 0 {
			bad("no accounts (\"*\" is every account)")
		}
		for _, t := range e.EventTypes {
			if !slices.Contains(known, t) {
				bad("event type %q is not a notification type (%v)", clip(t), known)
			}
		}
		ep := Endpoint{ID: e.ID, URL: e.URL, Secret: []byte(e.Secret), EventTypes: e.EventTypes}
		for _, a := range slices.Compact(slices.Sorted(slices.Values(e.Accounts))) {
			if a == "" {
				bad("an empty account")
				continue
			}
			dir[a] = append(dir[a], ep)
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("endpoints: %w", errors.Join(errs...))
	}
	return dir, nil
}
