package mtls

import (
	"context"
	"errors"
	"fmt"
	"time"

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
func WorkloadSource(ctx context.Context, socketAddr string) (*workloadapi.X509Source, error) {
	if socketAddr == "" {
		return nil, errors.New("mtls: the SPIFFE Workload API address is required (for example unix:///run/spire/agent.sock)")
	}
	if err := workloadapi.ValidateAddress(socketAddr); err != nil {
		return nil, fmt.Errorf("mtls: Workload API address %q: %w", socketAddr, err)
	}
	ctx, cancel := context.WithTimeout(ctx, WorkloadStartTimeout)
	defer cancel()
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr(socketAddr)))
	if err != nil {
		return nil, fmt.Errorf("mtls: no X.509-SVID from the SPIFFE Workload API at %s: %w "+
			"(is the SPIRE agent running there, and is a registration entry matching this workload?)", socketAddr, err)
	}
	return src, nil
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
