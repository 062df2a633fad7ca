package mtls

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// WorkloadStartTimeout bounds how long [WorkloadSource] waits for the first SVID.
const WorkloadStartTimeout = 15 * time.Second

// WorkloadSource connects to the SPIFFE Workload API at socketAddr
// ("unix:///run/spire/agent.sock") and waits, at most [WorkloadStartTimeout] or until ctx
// ends, for this workload's first X.509-SVID and bundle. After that the source follows
// rotations in the background until it is closed.
//
// An error means the component has no identity: it must report not ready and serve
// nothing (there is no plaintext fallback). The usual causes are named in the error: no
// agent listening at socketAddr, or no registration entry matching this workload.
//
// Pass [WithID] with the component's own ID: a workload that matches several
// registration entries gets several SVIDs, and without it the source uses the agent's
// first, whichever that is.
func WorkloadSource(ctx context.Context, socketAddr string, opts ...WorkloadOption) (*workloadapi.X509Source, error) {
	if socketAddr == "" {
		return nil, errors.New("mtls: the SPIFFE Workload API address is required (for example unix:///run/spire/agent.sock)")
	}
	if err := workloadapi.ValidateAddress(socketAddr); err != nil {
		return nil, fmt.Errorf("mtls: Workload API address %q: %w", socketAddr, err)
	}
	var cfg workloadConfig
	for _, o := range opts {
		o(&cfg)
	}
	sourceOpts := []workloadapi.X509SourceOption{workloadapi.WithClientOptions(workloadapi.WithAddr(socketAddr))}
	var offered []spiffeid.ID // what the agent issued, for the error when want is absent
	var mu sync.Mutex
	if !cfg.want.IsZero() {
		sourceOpts = append(sourceOpts, workloadapi.WithDefaultX509SVIDPicker(func(svids []*x509svid.SVID) *x509svid.SVID {
			mu.Lock()
			defer mu.Unlock()
			offered = offered[:0]
			for _, s := range svids {
				if s.ID == cfg.want {
					return s
				}
				offered = append(offered, s.ID)
			}
			// No SVID: handshakes fail and CheckSVID reports not ready, rather than
			// the component speaking as another.
			return nil
		}))
	}
	ctx, cancel := context.WithTimeout(ctx, WorkloadStartTimeout)
	defer cancel()
	src, err := workloadapi.NewX509Source(ctx, sourceOpts...)
	if err != nil {
		return nil, fmt.Errorf("mtls: no X.509-SVID from the SPIFFE Workload API at %s: %w "+
			"(is the SPIRE agent running there, and is a registration entry matching this workload?)", socketAddr, err)
	}
	// The wanted SVID may come in a later update: an entry registered just before the
	// component started reaches the agent at its next sync.
	for {
		if _, err := src.GetX509SVID(); err == nil {
			return src, nil
		}
		if err := src.WaitUntilUpdated(ctx); err != nil {
			_ = src.Close()
			mu.Lock()
			defer mu.Unlock()
			return nil, fmt.Errorf("mtls: the SPIFFE Workload API at %s issued this workload %v but not %s within %s: "+
				"check the registration entry of %s", socketAddr, offered, cfg.want, WorkloadStartTimeout, cfg.want)
		}
	}
}

// WorkloadOption configures [WorkloadSource].
type WorkloadOption func(*workloadConfig)

type workloadConfig struct {
	want spiffeid.ID
}

// WithID makes the source use the SVID of id, and only that one.
func WithID(id spiffeid.ID) WorkloadOption {
	return func(c *workloadConfig) { c.want = id }
}

// CheckSVID reports whether src holds an SVID valid at now: the readiness of a component's
// identity. A Workload API source keeps its last SVID when the agent goes away, and that
// SVID expires; from then on every handshake fails, so the component should report not
// ready rather than accept connections it cannot authenticate.
func CheckSVID(src Source, now time.Time) error {
	svid, err := src.GetX509SVID()
	if err != nil {
		return fmt.Errorf("mtls: no X.509-SVID: %w", err)
	}
	if len(svid.Certificates) == 0 {
		return errors.New("mtls: the X.509-SVID has no certificate")
	}
	leaf := svid.Certificates[0]
	switch {
	case now.Before(leaf.NotBefore):
		return fmt.Errorf("mtls: the X.509-SVID of %s is not valid before %s", svid.ID, leaf.NotBefore.UTC().Format(time.RFC3339))
	case now.After(leaf.NotAfter):
		return fmt.Errorf("mtls: the X.509-SVID of %s expired at %s; is the SPIRE agent still running?", svid.ID, leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	return nil
}
