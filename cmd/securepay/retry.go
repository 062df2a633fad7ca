package main

// A client must never pay twice because of us. Every unary call goes through invoke (a
// read) or invokeWrite, which retry by themselves, with the same request and so the same
// ids, when the answer was lost or the server asked for a retry; and a write whose answer
// never came back ends in an unknownOutcome error that names the ids it used and the
// command that retries it safely.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"time"

	"connectrpc.com/connect"

	"github.com/securepay/securepay/services"
)

// The bounds of the CLI's own retries, which help and the README quote. All of them also
// fit within --timeout: a wait that would end after it is not started.
const (
	maxAttempts = 4
	// firstRetryDelay doubles after every attempt, up to maxRetryDelay; each wait is drawn
	// from its upper half, so that clients that failed together do not return together.
	firstRetryDelay = 100 * time.Millisecond
	maxRetryDelay   = time.Second
)

// retryHelp is the paragraph every write command's help ends with.
var retryHelp = fmt.Sprintf(`If the answer is lost (the server is unreachable or unavailable, the connection drops,
the server times out or asks for a retry), securepay tries again by itself with the same
ids and the same --idempotency-key: at most %d attempts in all, waiting up to %v, %v
and %v between them (each wait a random half to all of that, doubling, never over %v),
all within --timeout. If there is still no answer, the write may or may not have been
applied: securepay prints the ids it used, those it generated included, and the exact
command that retries it safely, since the ledger applies a write with the same ids at
most once (that command keeps --timeout only if it is at least the default). With --json
they are in the error object: "retry_with": {"payment_id": ..., "command": ...}.`,
	maxAttempts, firstRetryDelay, 2*firstRetryDelay, 4*firstRetryDelay, maxRetryDelay)

// retryDelay is the wait after the attempt-th failed attempt (1-based); rnd returns a
// number in [0, 1).
func retryDelay(attempt int, rnd func() float64) time.Duration {
	d := maxRetryDelay
	if attempt <= 16 { // beyond, the shift overflows long after the cap is reached
		d = min(firstRetryDelay<<(attempt-1), maxRetryDelay)
	}
	return d/2 + time.Duration(rnd()*float64(d/2))
}

// failure is what a failed call says about whether a write was applied.
type failure int

const (
	// refused is a definite answer: the server decided, and a refusal applied nothing.
	refused failure = iota
	// notSent: the request never left this machine (no connection could be made).
	notSent
	// lost: the request may have reached the server, and its answer did not come back.
	lost
)

// classify says what err tells about the call's outcome, and whether asking again may
// get an answer.
func classify(err error) (f failure, retry bool) {
	var cerr *connect.Error
	if !errors.As(err, &cerr) {
		return lost, false
	}
	switch cerr.Code() {
	case connect.CodeUnavailable:
		if isDialError(err) {
			return notSent, true
		}
		return lost, true
	case connect.CodeAborted:
		// A conflict that outlived the server's own retries, or the first request with
		// this Idempotency-Key still running: the server asks for a retry.
		return lost, true
	case connect.CodeDeadlineExceeded:
		if services.ReasonOf(err) == services.ReasonNotCaughtUp {
			// A read's answer: the view is behind. It already waited for it.
			return refused, false
		}
		return lost, true
	case connect.CodeCanceled, connect.CodeInternal, connect.CodeUnknown, connect.CodeDataLoss:
		// Something failed after the request may have been applied; asking again would
		// hide the failure, the retry command does not.
		return lost, false
	default:
		return refused, false
	}
}

// isDialError says whether err is a failure to connect, before any byte of the request
// was sent.
func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// rpc is a unary method of a generated client.
type rpc[Req, Res any] func(context.Context, *connect.Request[Req]) (*connect.Response[Res], error)

// invoke makes a read, retrying it within the bounds above. A failure comes back as
// *apiError.
func invoke[Req, Res any](ctx context.Context, api *apiClient, call rpc[Req, Res], msg *Req) (*connect.Response[Res], error) {
	return callRetrying(ctx, api, nil, call, msg)
}

// invokeWrite makes the command's write, retrying it within the bounds above with the
// same message (so the same ids) and the same Idempotency-Key. A failure whose outcome is
// not known comes back as *unknownOutcome, any other as *apiError.
func invokeWrite[Req, Res any](ctx context.Context, api *apiClient, call rpc[Req, Res], msg *Req) (*connect.Response[Res], error) {
	return callRetrying(ctx, api, api.plan, call, msg)
}

// callRetrying is invoke and invokeWrite; plan is nil for a read.
func callRetrying[Req, Res any](ctx context.Context, api *apiClient, plan *retryPlan, call rpc[Req, Res], msg *Req) (*connect.Response[Res], error) {
	start := time.Now()
	mayHaveApplied := false
	for attempt := 1; ; attempt++ {
		res, err := call(ctx, request(api, msg, plan != nil))
		if err == nil {
			return res, nil
		}
		f, again := classify(err)
		mayHaveApplied = mayHaveApplied || f == lost
		if again && attempt < maxAttempts && ctx.Err() == nil {
			delay := retryDelay(attempt, rand.Float64)
			if deadline, ok := ctx.Deadline(); !ok || time.Until(deadline) > delay {
				t := time.NewTimer(delay)
				select {
				case <-t.C:
					continue
				case <-ctx.Done():
					t.Stop()
				}
			}
		}
		err = explain(err)
		// The last answer decides, unless it is only that this attempt could not connect
		// after an earlier one may have been applied.
		if plan != nil && (f == lost || (f == notSent && mayHaveApplied)) {
			return nil, plan.unknown(err, attempt, time.Since(start))
		}
		return nil, err
	}
}

// retryPlan is what a write command needs so that a lost answer can be retried safely from
// the command line: the command as the user typed it, and the ids the write used.
type retryPlan struct {
	cmd  *Command
	args []string // positional
	ids  []retryID
	// pins are flags the retry must carry with these exact values (the ids the CLI
	// generated, an absolute expiry), and drop the flags they stand for.
	pins map[string]string
	drop []string
}

// retryID is one id a write used: key names it in JSON (payment_id), flagName is the
// flag that sets it ("" for a positional argument).
type retryID struct{ key, flagName, value string }

// uses records an id of the write; the retry command sets --flagName to value.
func (p *retryPlan) uses(key, flagName, value string) {
	if p == nil {
		return
	}
	p.ids = append(p.ids, retryID{key, flagName, value})
	if flagName != "" {
		p.pin(flagName, value)
	}
}

// pin makes the retry command carry --flagName value, dropping the flags in replaces.
func (p *retryPlan) pin(flagName, value string, replaces ...string) {
	if p == nil {
		return
	}
	if p.pins == nil {
		p.pins = map[string]string{}
	}
	p.pins[flagName] = value
	p.drop = append(p.drop, replaces...)
}

func (p *retryPlan) unknown(err error, attempts int, took time.Duration) *unknownOutcome {
	return &unknownOutcome{err: err, what: p.cmd.LongName(), ids: p.ids, command: p.command(), attempts: attempts, took: took}
}

// command is the command line that retries the write: what the user typed (flags from the
// environment are left to the environment), with the pinned ids.
func (p *retryPlan) command() string {
	words := []string{"securepay", p.cmd.LongName()}
	for _, a := range p.args {
		words = append(words, shellQuote(a))
	}
	set := map[string][]string{}
	p.cmd.Flag.Visit(func(f *flag.Flag) {
		if m, ok := f.Value.(*multi); ok {
			set[f.Name] = *m // a repeatable flag, given once per value
			return
		}
		set[f.Name] = []string{f.Value.String()}
	})
	for name, v := range p.pins {
		set[name] = []string{v}
	}
	for _, name := range p.drop {
		delete(set, name)
	}
	if v, ok := set["timeout"]; ok && tooShort(p.cmd, v[0]) {
		// The time that ran out was too short for an answer; the retry gets the default.
		delete(set, "timeout")
	}
	names := make([]string, 0, len(set))
	for name := range set {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		f := p.cmd.Flag.Lookup(name)
		for _, v := range set[name] {
			if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
				words = append(words, "--"+name+"="+v)
				if v == "true" {
					words[len(words)-1] = "--" + name
				}
				continue
			}
			words = append(words, "--"+name, shellQuote(v))
		}
	}
	return strings.Join(words, " ")
}

// tooShort says whether the --timeout value v is shorter than the flag's default.
func tooShort(cmd *Command, v string) bool {
	got, err1 := time.ParseDuration(v)
	def, err2 := time.ParseDuration(cmd.Flag.Lookup("timeout").DefValue)
	return err1 == nil && err2 == nil && got < def
}

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.,:/=@%+") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// unknownOutcome is a write that may or may not have been applied: its answer was lost.
type unknownOutcome struct {
	err      error // the last attempt's, explained
	what     string
	ids      []retryID
	command  string
	attempts int
	took     time.Duration
}

func (u *unknownOutcome) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: no answer, so it is not known whether it was applied: %v", u.what, u.err)
	if u.attempts > 1 {
		fmt.Fprintf(&b, "; %d attempts in %v", u.attempts, u.took.Round(time.Millisecond))
	}
	var used []string
	for _, id := range u.ids {
		used = append(used, strings.ReplaceAll(strings.TrimSuffix(id.key, "_id"), "_", " ")+" id "+id.value)
	}
	// No full stop after an id: ids may end with one.
	if len(used) > 0 {
		fmt.Fprintf(&b, "\nIt used %s; the ledger applies a write with the same ids at most once,", joinAnd(used))
	} else {
		b.WriteString("\nThe ledger applies this write at most once,")
	}
	fmt.Fprintf(&b, "\nso this command finishes it, or shows what happened, without applying it twice:\n  %s", u.command)
	return b.String()
}

func (u *unknownOutcome) Unwrap() error { return u.err }

// retryWith is the error object's "retry_with" under --json: the ids and the command.
func (u *unknownOutcome) retryWith() map[string]string {
	m := map[string]string{"command": u.command}
	for _, id := range u.ids {
		m[id.key] = id.value
	}
	return m
}

func joinAnd(s []string) string {
	if len(s) <= 1 {
		return strings.Join(s, "")
	}
	return strings.Join(s[:len(s)-1], ", ") + " and " + s[len(s)-1]
}
