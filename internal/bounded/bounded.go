// Package bounded runs a call that may not honour its context (go-redis while it dials)
// so that the caller gets an answer within a bound whatever the call does.
package bounded

import (
	"context"
	"time"
)

// Run runs call with a context bounded by d and returns call's error, or the bound's
// error if call has not returned by then. An abandoned call goes on in the background and
// its context is cancelled when it returns. Call's results may be read only when Run
// returned call's own error, never the bound's.
//
// When call returns just as the bound passes, call's answer wins: a successful Redis claim
// reported as a timeout would leave a key claimed by a request that believes it failed.
func Run(ctx context.Context, d time.Duration, call func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	done := make(chan error, 1)
	go func() {
		defer cancel()
		done <- call(ctx)
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		// The deferred cancel above also closes ctx.Done, after call's answer was sent.
		select {
		case err := <-done:
			return err
		default:
			return ctx.Err()
		}
	}
}
