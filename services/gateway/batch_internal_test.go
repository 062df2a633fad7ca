package gateway

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	hopv1 "github.com/securepay/securepay/api/gen/securepay/hop/v1"
)

// fakeHop is a Forward in memory: it records each batch (the calls' messages), counts
// the Forwards in flight, holds each Forward until release lets it go (when hold is
// set), and answers each call with "re:" and its message, or fails the whole Forward
// when fail says so.
type fakeHop struct {
	hold    bool
	release chan struct{}
	fail    func(batch []string) error

	mu          sync.Mutex
	batches     [][]string
	inFlight    int
	maxInFlight int
	deadlines   []time.Duration // each Forward's time left when it arrived; -1: none
}

func newFakeHop(hold bool) *fakeHop { return &fakeHop{hold: hold, release: make(chan struct{})} }

func (f *fakeHop) forward(ctx context.Context, calls []*hopv1.Call) ([]*hopv1.Result, error) {
	batch := make([]string, len(calls))
	for i, c := range calls {
		batch[i] = string(c.GetMessage())
	}
	f.mu.Lock()
	f.batches = append(f.batches, batch)
	f.inFlight++
	f.maxInFlight = max(f.maxInFlight, f.inFlight)
	left := time.Duration(-1)
	if d, ok := ctx.Deadline(); ok {
		left = time.Until(d)
	}
	f.deadlines = append(f.deadlines, left)
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.inFlight--
		f.mu.Unlock()
	}()
	if f.hold {
		<-f.release
	}
	if f.fail != nil {
		if err := f.fail(batch); err != nil {
			return nil, err
		}
	}
	results := make([]*hopv1.Result, len(calls))
	for i, c := range calls {
		results[i] = &hopv1.Result{Outcome: &hopv1.Result_Message{Message: append([]byte("re:"), c.GetMessage()...)}}
	}
	return results, nil
}

func (f *fakeHop) snapshot() (batches [][]string, maxInFlight int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([][]string(nil), f.batches...), f.maxInFlight
}

// waitFor polls cond until it holds or 10 s pass: the tests wait on the batcher's state,
// never for a time to pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("waited 10s for %s", what)
		}
	}
}

func (b *hopBatcher) queued() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.queue)
}

func (b *hopBatcher) slots() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.inFlight
}

func msgCall(msg string) *hopCall {
	return newHopCall(&hopv1.Call{Procedure: "/securepay.ledger.v1.PaymentService/Transfer", Message: []byte(msg)}, time.Time{})
}

type answer struct {
	msg string
	err error
}

// goDo runs one caller and delivers its answer on the channel returned.
func goDo(ctx context.Context, b *hopBatcher, msg string) <-chan answer {
	out := make(chan answer, 1)
	go func() {
		r, err := b.do(ctx, msgCall(msg))
		out <- answer{msg: string(r.GetMessage()), err: err}
	}()
	return out
}

func TestHopBatcherAloneWhenIdle(t *testing.T) {
	f := newFakeHop(false)
	b := newHopBatcher(f.forward, 4)
	for i := range 5 {
		r, err := b.do(context.Background(), msgCall(fmt.Sprint(i)))
		if err != nil || string(r.GetMessage()) != fmt.Sprintf("re:%d", i) {
			t.Fatalf("call %d: got %q, %v; want re:%d", i, r.GetMessage(), err, i)
		}
	}
	batches, _ := f.snapshot()
	if len(batches) != 5 {
		t.Fatalf("5 calls one after another: %d Forwards %v, want 5 of one call each (no call waits for company)", len(batches), batches)
	}
	waitFor(t, "the slot to be let go", func() bool { return b.slots() == 0 })
}

func TestHopBatcherGathersConcurrentCalls(t *testing.T) {
	const callers, slots = 200, 4
	f := newFakeHop(true)
	b := newHopBatcher(f.forward, slots)
	answers := make([]<-chan answer, callers)
	for i := range callers {
		answers[i] = goDo(context.Background(), b, fmt.Sprintf("call-%d", i))
	}
	// Every slot busy with its first Forward, the rest queued behind them.
	waitFor(t, "all calls sent or queued", func() bool {
		batches, _ := f.snapshot()
		sent := 0
		for _, batch := range batches {
			sent += len(batch)
		}
		return sent+b.queued() == callers
	})
	close(f.release)
	for i, a := range answers {
		got := <-a
		if want := fmt.Sprintf("re:call-%d", i); got.err != nil || got.msg != want {
			t.Fatalf("caller %d got %q, %v; want %q: an answer reached the wrong caller", i, got.msg, got.err, want)
		}
	}
	batches, maxInFlight := f.snapshot()
	if maxInFlight > slots {
		t.Errorf("%d Forwards were in flight at once; the bound is %d", maxInFlight, slots)
	}
	// At most one Forward per slot while they were held, then at most one per slot for
	// what queued meanwhile.
	if len(batches) > 2*slots {
		t.Errorf("200 concurrent calls took %d Forwards, want at most %d: %v", len(batches), 2*slots, batchSizes(batches))
	}
	seen := map[string]int{}
	for _, batch := range batches {
		for _, m := range batch {
			seen[m]++
		}
	}
	for i := range callers {
		if n := seen[fmt.Sprintf("call-%d", i)]; n != 1 {
			t.Errorf("call-%d was sent %d times, want once", i, n)
		}
	}
	waitFor(t, "every slot to be let go", func() bool { return b.slots() == 0 })
}

func batchSizes(batches [][]string) []int {
	out := make([]int, len(batches))
	for i, b := range batches {
		out[i] = len(b)
	}
	return out
}

func TestHopBatcherCallerThatLeaves(t *testing.T) {
	f := newFakeHop(true)
	b := newHopBatcher(f.forward, 1)
	// One caller leaves while its call is in flight, one while it is queued, one by its
	// deadline; each gets its answer at once, and the others do not notice.
	sentCtx, cancelSent := context.WithCancel(context.Background())
	sent := goDo(sentCtx, b, "sent")
	waitFor(t, "the first Forward", func() bool { batches, _ := f.snapshot(); return len(batches) == 1 })
	queuedCtx, cancelQueued := context.WithCancel(context.Background())
	deadlineCtx, cancelDeadline := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancelDeadline()
	stays := goDo(context.Background(), b, "stays")
	leaves := goDo(queuedCtx, b, "leaves")
	expires := goDo(deadlineCtx, b, "expires")
	waitFor(t, "three queued calls", func() bool { return b.queued() == 3 })
	cancelSent()
	if got := <-sent; connect.CodeOf(got.err) != connect.CodeCanceled {
		t.Errorf("a caller that left while its call was in flight got %q, %v; want CANCELED at once", got.msg, got.err)
	}
	cancelQueued()
	if got := <-leaves; connect.CodeOf(got.err) != connect.CodeCanceled {
		t.Errorf("a caller that left while queued got %q, %v; want CANCELED at once", got.msg, got.err)
	}
	if got := <-expires; connect.CodeOf(got.err) != connect.CodeDeadlineExceeded {
		t.Errorf("a caller whose deadline passed got %q, %v; want DEADLINE_EXCEEDED at once", got.msg, got.err)
	}
	close(f.release)
	if got := <-stays; got.err != nil || got.msg != "re:stays" {
		t.Errorf("the caller that stayed got %q, %v; want re:stays", got.msg, got.err)
	}
	batches, _ := f.snapshot()
	if fmt.Sprint(batches) != "[[sent] [stays]]" {
		t.Errorf("Forwards %v, want [[sent] [stays]]: a call whose caller left before it was sent is dropped", batches)
	}
	waitFor(t, "the slot to be let go", func() bool { return b.slots() == 0 && b.queued() == 0 })
}

func TestHopBatcherCallerAlreadyGone(t *testing.T) {
	f := newFakeHop(false)
	b := newHopBatcher(f.forward, 1)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := b.do(ctx, msgCall("gone")); connect.CodeOf(err) != connect.CodeCanceled {
		t.Errorf("a caller gone before it called got %v, want CANCELED", err)
	}
	if batches, _ := f.snapshot(); len(batches) != 0 {
		t.Errorf("Forwards %v; a call whose caller is gone is never sent", batches)
	}
}

func TestHopBatcherFailedForwardFailsItsCallsOnly(t *testing.T) {
	down := connect.NewError(connect.CodeUnavailable, errors.New("connection refused"))
	f := newFakeHop(true)
	f.fail = func(batch []string) error {
		if strings.HasPrefix(batch[0], "second") {
			return down
		}
		return nil
	}
	b := newHopBatcher(f.forward, 1)
	first := goDo(context.Background(), b, "first")
	waitFor(t, "the first Forward", func() bool { batches, _ := f.snapshot(); return len(batches) == 1 })
	second := []<-chan answer{goDo(context.Background(), b, "second-a")}
	waitFor(t, "second-a queued", func() bool { return b.queued() == 1 })
	second = append(second, goDo(context.Background(), b, "second-b"))
	waitFor(t, "second-b queued", func() bool { return b.queued() == 2 })
	close(f.release)
	if got := <-first; got.err != nil || got.msg != "re:first" {
		t.Errorf("the first Forward's call got %q, %v; want re:first", got.msg, got.err)
	}
	for _, a := range second {
		if got := <-a; !errors.Is(got.err, down) {
			t.Errorf("a call of the failed Forward got %q, %v; want its error %v", got.msg, got.err, down)
		}
	}
	if r, err := b.do(context.Background(), msgCall("third")); err != nil || string(r.GetMessage()) != "re:third" {
		t.Errorf("a call after the failed Forward got %q, %v; want re:third", r.GetMessage(), err)
	}
}

func TestHopBatcherBounds(t *testing.T) {
	t.Run("calls", func(t *testing.T) {
		f := newFakeHop(true)
		b := newHopBatcher(f.forward, 1)
		first := goDo(context.Background(), b, "first")
		waitFor(t, "the first Forward", func() bool { batches, _ := f.snapshot(); return len(batches) == 1 })
		const n = maxBatchCalls + 500
		answers := make([]<-chan answer, n)
		for i := range n {
			answers[i] = goDo(context.Background(), b, fmt.Sprint(i))
		}
		waitFor(t, "all queued", func() bool { return b.queued() == n })
		close(f.release)
		<-first
		for _, a := range answers {
			if got := <-a; got.err != nil {
				t.Fatal(got.err)
			}
		}
		batches, _ := f.snapshot()
		if got := batchSizes(batches); len(got) != 3 || got[1] != maxBatchCalls || got[2] != 500 {
			t.Errorf("1 call, then %d queued: Forwards of %v calls, want [1 %d 500]", n, got, maxBatchCalls)
		}
	})
	t.Run("bytes", func(t *testing.T) {
		f := newFakeHop(true)
		b := newHopBatcher(f.forward, 1)
		first := goDo(context.Background(), b, "first")
		waitFor(t, "the first Forward", func() bool { batches, _ := f.snapshot(); return len(batches) == 1 })
		big := strings.Repeat("x", 300<<10)
		huge := strings.Repeat("y", 2<<20) // more than a batch's bytes: it goes alone
		var answers []<-chan answer
		for i, m := range []string{big, big, big, big, huge, big} {
			answers = append(answers, goDo(context.Background(), b, m))
			waitFor(t, "queued", func() bool { return b.queued() == i+1 })
		}
		close(f.release)
		<-first
		for _, a := range answers {
			if got := <-a; got.err != nil {
				t.Fatal(got.err)
			}
		}
		batches, _ := f.snapshot()
		if got := batchSizes(batches); fmt.Sprint(got) != "[1 3 1 1 1]" {
			t.Errorf("four calls of 300 KiB, one of 2 MiB, one of 300 KiB: Forwards of %v calls, want [1 3 1 1 1] (at most 1 MiB each, a larger call alone)", got)
		}
	})
	t.Run("queue", func(t *testing.T) {
		f := newFakeHop(true)
		b := newHopBatcher(f.forward, 1)
		b.maxQueued = 2
		first := goDo(context.Background(), b, "first")
		waitFor(t, "the first Forward", func() bool { batches, _ := f.snapshot(); return len(batches) == 1 })
		q1, q2 := goDo(context.Background(), b, "q1"), goDo(context.Background(), b, "q2")
		waitFor(t, "two queued", func() bool { return b.queued() == 2 })
		if _, err := b.do(context.Background(), msgCall("over")); connect.CodeOf(err) != connect.CodeUnavailable {
			t.Errorf("a call beyond the queue's bound got %v, want UNAVAILABLE", err)
		}
		close(f.release)
		for _, a := range []<-chan answer{first, q1, q2} {
			if got := <-a; got.err != nil {
				t.Error(got.err)
			}
		}
	})
}

func TestHopBatcherForwardDeadline(t *testing.T) {
	f := newFakeHop(false)
	b := newHopBatcher(f.forward, 1)
	b.noDeadline = 42 * time.Second
	if _, err := b.do(context.Background(), msgCall("none")); err != nil {
		t.Fatal(err)
	}
	c := msgCall("bounded")
	c.deadline = time.Now().Add(5 * time.Second)
	if _, err := b.do(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if d := f.deadlines[0]; d <= 40*time.Second || d > 42*time.Second {
		t.Errorf("a Forward of a call without a deadline had %v left, want noDeadline (42s)", d)
	}
	if d := f.deadlines[1]; d <= 5*time.Second || d > 6*time.Second {
		t.Errorf("a Forward of a call with 5s left had %v left, want the call's deadline and a second", d)
	}
}

func TestHopBatcherWrongNumberOfResults(t *testing.T) {
	b := newHopBatcher(func(context.Context, []*hopv1.Call) ([]*hopv1.Result, error) {
		return nil, nil
	}, 1)
	_, err := b.do(context.Background(), msgCall("lost"))
	var cerr *connect.Error
	if err == nil || errors.As(err, &cerr) {
		t.Errorf("a Forward answered with no results gave %v; want a plain error (upstreamError: INTERNAL)", err)
	}
}
