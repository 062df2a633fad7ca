package ledger_test

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/services/ledger"
)

// Requests whose metadata no store can record are refused alone, before they join a
// batch: mixed among thousands of good transfers on every backend, none of the good ones
// fails.
func TestPoisonRequestsFailAlone(t *testing.T) {
	poisons := []eventstore.Metadata{
		{TraceParent: "00-" + strings.Repeat("\xff", 32) + "-00f067aa0ba902b7-01"}, // 55 bytes of invalid UTF-8
		{Actor: "spiffe://securepay.dev/\x00nul"},
		{CorrelationID: strings.Repeat("c", eventstore.MaxMetadataBytes+1)},
		{Actor: "cut-in-the-middle-of-\xe2\x82"},
	}
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			store, _ := b.open(t)
			p := newProcessor(t, store, ledger.Config{SharedStore: b.shared})
			open(t, p, "world", usd, domain.KindExternal, 0)
			open(t, p, "sink", usd, domain.KindCustomer, 0)
			const good, poisonEvery = 3000, 10
			var wg sync.WaitGroup
			var mu sync.Mutex
			var goodFailed, poisonPassed, poisonSent int
			sem := make(chan struct{}, 64)
			for i := range good + good/poisonEvery {
				wg.Add(1)
				sem <- struct{}{}
				go func() {
					defer func() { <-sem; wg.Done() }()
					meta := eventstore.Metadata{Actor: "client"}
					poison := i%(poisonEvery+1) == poisonEvery
					if poison {
						meta = poisons[i%len(poisons)]
					}
					_, err := p.Execute(ctxT(t), ledger.Request{Meta: meta, Command: domain.Transfer{
						PaymentID: domain.PaymentID(fmt.Sprintf("p-%d", i)), Source: "world", Destination: "sink", Amount: money(1, usd)}})
					mu.Lock()
					defer mu.Unlock()
					switch {
					case poison:
						poisonSent++
						if !errors.Is(err, domain.ErrInvalidInput) {
							poisonPassed++
							t.Errorf("poison request %d (%q): want invalid input, got %v", i, meta, err)
						}
					case err != nil:
						goodFailed++
						t.Errorf("good request %d: %v", i, err)
					}
				}()
			}
			wg.Wait()
			sink, err := p.Account(ctxT(t), "sink")
			if err != nil {
				t.Fatalf("sink: %v", err)
			}
			if goodFailed != 0 || poisonPassed != 0 || sink.Posted != int64(good) {
				t.Fatalf("%d good requests among %d poison ones: want 0 good failed, 0 poison passed, sink %d; got %d, %d, sink %d",
					good, poisonSent, good, goodFailed, poisonPassed, sink.Posted)
			}
		})
	}
}
