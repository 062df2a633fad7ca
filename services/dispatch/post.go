package dispatch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/securepay/securepay/services/telemetry"
)

// userAgent names the sender to receivers.
const userAgent = "SecurePay-Webhooks/1"

// What of a response is read: enough of its body to say why it failed, and the rest up to
// a bound so the connection can be reused; a receiver that answers more is cut off.
const (
	maxErrorBodyBytes   = 256
	maxDrainedBodyBytes = 64 << 10
)

// result is one HTTP attempt's outcome.
type result struct {
	outcome string // telemetry.WebhookDelivered, WebhookFailed or WebhookRejected
	status  int    // 0 without a response
	took    time.Duration
	err     error // nil when delivered
}

// post makes one signed attempt to deliver j.
func (d *Dispatcher) post(ctx context.Context, j job, attempt int) result {
	u, err := url.Parse(j.ep.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		// Never going to work: the registry should have refused it.
		return result{outcome: telemetry.WebhookRejected, err: fmt.Errorf("endpoint %s: the URL is not an absolute http(s) URL", j.ep.ID)}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(j.n.Body))
	if err != nil {
		return result{outcome: telemetry.WebhookRejected, err: fmt.Errorf("endpoint %s: %w", j.ep.ID, err)}
	}
	now := d.cfg.Now()
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", userAgent)
	req.Header.Set(HeaderSignature, Sign(j.ep.Secret, now, j.n.Body))
	req.Header.Set(HeaderEventID, j.n.ID)
	req.Header.Set(HeaderEventType, j.n.Type)
	req.Header.Set(HeaderEndpointID, j.ep.ID)
	req.Header.Set(HeaderAttempt, strconv.Itoa(attempt))
	if tp := telemetry.FormatTraceParent(trace.SpanContextFromContext(ctx)); tp != "" {
		req.Header.Set(HeaderTraceParent, tp)
	}
	start := time.Now()
	resp, err := d.client.Do(req)
	if err != nil {
		// The *url.Error repeats the URL, which may hold a credential of the receiver's:
		// keep only the cause.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return result{outcome: telemetry.WebhookFailed, took: time.Since(start), err: fmt.Errorf("endpoint %s: POST: %w", j.ep.ID, err)}
	}
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBodyBytes))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxDrainedBodyBytes))
	_ = resp.Body.Close()
	res := result{status: resp.StatusCode, took: time.Since(start)}
	switch code := resp.StatusCode; {
	case code >= 200 && code < 300:
		res.outcome = telemetry.WebhookDelivered
		return res
	case code == http.StatusRequestTimeout || code == http.StatusTooEarly || code == http.StatusTooManyRequests || code >= 500:
		res.outcome = telemetry.WebhookFailed
	case code >= 300 && code < 500:
		res.outcome = telemetry.WebhookRejected
	default: // 1xx that is not a final answer
		res.outcome = telemetry.WebhookFailed
	}
	res.err = fmt.Errorf("endpoint %s: HTTP %d: %q", j.ep.ID, resp.StatusCode, snippet)
	return res
}
