package bounded_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/securepay/securepay/internal/bounded"
)

// A call that returns in time always gets its own answer, even though its return cancels
// the context Run also watches (the race that made a successful Redis claim look
// cancelled).
func TestAnswerWinsOverItsOwnCancel(t *testing.T) {
	errMine := errors.New("the call's own answer")
	for i := range 20_000 {
		if err := bounded.Run(context.Background(), time.Minute, func(context.Context) error { return nil }); err != nil {
			t.Fatalf("run %d: a call that returned nil: want nil, got %v", i, err)
		}
		if err := bounded.Run(context.Background(), time.Minute, func(context.Context) error { return errMine }); !errors.Is(err, errMine) {
			t.Fatalf("run %d: want the call's error, got %v", i, err)
		}
	}
}

// A call that ignores its context is abandoned at the bound.
func TestBoundCutsAHungCall(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	err := bounded.Run(context.Background(), 10*time.Millisecond, func(context.Context) error { <-release; return nil })
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a hung call: want context.DeadlineExceeded, got %v", err)
	}
}
