package loadtest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
)

// The kinds of request a scenario sends; each has its own latency histogram.
const (
	opTransfer  = "transfer"
	opAuthorise = "authorise"
	opCapture   = "capture"
	opRefund    = "refund"
	opBalance   = "balance"
	opHistory   = "history"
	opWatch     = "watch"
)

// Scenarios, by the name --scenario takes.
const (
	ScenarioUniform = "uniform" // transfers between random payers
	ScenarioHot     = "hot"     // like uniform, but a share of payments go to one merchant
	ScenarioCard    = "card"    // authorise, two partial captures, a partial refund
	ScenarioRead    = "read"    // balances, history pages and watches, with a fifth of transfers
	ScenarioMix     = "mix"     // all of the above
)

// Scenarios lists every scenario, in the order help shows them.
var Scenarios = []string{ScenarioUniform, ScenarioHot, ScenarioCard, ScenarioRead, ScenarioMix}

// asset is what every account of a run holds: two decimals, so amounts are cents.
const asset = "USD"

// fundingMinor is what each payer is given at set-up: enough that no transfer of a run
// is refused for want of money (at most 10.00 leaves a payer per transfer).
const fundingMinor = 100_000_000_00

// world is the run's accounts: payers, one hot merchant, one external source of funds.
type world struct {
	run      string // unique to the run: ids of accounts and payments start with it
	payers   []string
	merchant string
	source   string
}

func newWorld(run string, accounts int) *world {
	w := &world{run: run, merchant: run + "-merchant", source: run + "-world"}
	for i := range accounts {
		w.payers = append(w.payers, run+"-p"+strconv.Itoa(i))
	}
	return w
}

// caller is one of the concurrent callers of a run: its own random source (seeded from
// the run's seed and its index, so a run repeats) and its own id sequence.
type caller struct {
	index    int
	rng      *rand.Rand
	seq      int
	w        *world
	payments ledgerv1connect.PaymentServiceClient
	balances ledgerv1connect.BalanceServiceClient
	rec      *recorder
	hotShare float64
}

func (c *caller) nextID(prefix string) string {
	c.seq++
	return c.w.run + "-" + prefix + strconv.Itoa(c.index) + "." + strconv.Itoa(c.seq)
}

// cents formats minor units of a two-decimal asset.
func cents(minor int64) string {
	return strconv.FormatInt(minor/100, 10) + "." + fmt.Sprintf("%02d", minor%100)
}

func (c *caller) payer() string { return c.w.payers[c.rng.IntN(len(c.w.payers))] }

// pair picks two different payers.
func (c *caller) pair() (string, string) {
	n := len(c.w.payers)
	i := c.rng.IntN(n)
	j := c.rng.IntN(n - 1)
	if j >= i {
		j++
	}
	return c.w.payers[i], c.w.payers[j]
}

// do runs one request and records it. The first request of an iteration is timed from
// the iteration's intended start; the rest from when they were sent.
func (c *caller) do(kind string, intended *time.Time, call func() error) error {
	start := *intended
	err := call()
	end := time.Now()
	c.rec.record(kind, start, end, err)
	*intended = end
	return err
}

func (c *caller) transfer(ctx context.Context, at *time.Time, src, dst string) error {
	return c.do(opTransfer, at, func() error {
		_, err := c.payments.Transfer(ctx, connect.NewRequest(&ledgerv1.TransferRequest{
			PaymentId: c.nextID("t"), SourceAccountId: src, DestinationAccountId: dst,
			Amount: &ledgerv1.Money{Value: cents(1 + c.rng.Int64N(1000)), Asset: asset},
		}))
		return err
	})
}

// uniform moves money between two random payers.
func (c *caller) uniform(ctx context.Context, at time.Time) {
	src, dst := c.pair()
	_ = c.transfer(ctx, &at, src, dst)
}

// hot sends a share of payments to the one merchant, the rest between payers.
func (c *caller) hot(ctx context.Context, at time.Time) {
	if c.rng.Float64() < c.hotShare {
		_ = c.transfer(ctx, &at, c.payer(), c.w.merchant)
		return
	}
	c.uniform(ctx, at)
}

// card authorises 30.00 from a payer to the merchant, captures 10.00 and 5.00 of it, and
// refunds 7.00. A step that fails ends the flow (its error is recorded).
func (c *caller) card(ctx context.Context, at time.Time) {
	id := c.nextID("c")
	if c.do(opAuthorise, &at, func() error {
		_, err := c.payments.Authorise(ctx, connect.NewRequest(&ledgerv1.AuthoriseRequest{
			PaymentId: id, SourceAccountId: c.payer(), DestinationAccountId: c.w.merchant,
			Amount: &ledgerv1.Money{Value: "30.00", Asset: asset}, ExpiresAt: timestamppb.New(time.Now().Add(time.Hour)),
		}))
		return err
	}) != nil {
		return
	}
	for i, amount := range []string{"10.00", "5.00"} {
		if c.do(opCapture, &at, func() error {
			_, err := c.payments.Capture(ctx, connect.NewRequest(&ledgerv1.CaptureRequest{
				PaymentId: id, CaptureId: "cap" + strconv.Itoa(i),
				What: &ledgerv1.CaptureRequest_Amount{Amount: &ledgerv1.Money{Value: amount, Asset: asset}},
			}))
			return err
		}) != nil {
			return
		}
	}
	_ = c.do(opRefund, &at, func() error {
		_, err := c.payments.Refund(ctx, connect.NewRequest(&ledgerv1.RefundRequest{
			PaymentId: id, RefundId: "ref0", Amount: &ledgerv1.Money{Value: "7.00", Asset: asset},
		}))
		return err
	})
}

// read is mostly reads: 40 % balances, 30 % history pages, 10 % watches (time to the
// first message, then the stream is closed), 20 % transfers so the reads see change.
func (c *caller) read(ctx context.Context, at time.Time) {
	switch r := c.rng.IntN(10); {
	case r < 4:
		_ = c.do(opBalance, &at, func() error {
			_, err := c.balances.GetBalance(ctx, connect.NewRequest(&ledgerv1.GetBalanceRequest{AccountId: c.payer()}))
			return err
		})
	case r < 7:
		_ = c.do(opHistory, &at, func() error {
			_, err := c.balances.ListHistory(ctx, connect.NewRequest(&ledgerv1.ListHistoryRequest{AccountId: c.payer(), PageSize: 20}))
			return err
		})
	case r < 8:
		_ = c.do(opWatch, &at, func() error {
			wctx, cancel := context.WithCancel(ctx)
			defer cancel()
			s, err := c.balances.WatchAccount(wctx, connect.NewRequest(&ledgerv1.WatchAccountRequest{AccountId: c.payer()}))
			if err != nil {
				return err
			}
			defer s.Close()
			if !s.Receive() {
				if err := s.Err(); err != nil {
					return err
				}
				return connect.NewError(connect.CodeUnknown, fmt.Errorf("watch ended before its first message"))
			}
			return nil
		})
	default:
		c.uniform(ctx, at)
	}
}

// mix: half uniform transfers, 15 % to the hot merchant, 10 % card flows, 25 % reads.
func (c *caller) mix(ctx context.Context, at time.Time) {
	switch r := c.rng.IntN(20); {
	case r < 10:
		c.uniform(ctx, at)
	case r < 13:
		_ = c.transfer(ctx, &at, c.payer(), c.w.merchant)
	case r < 15:
		c.card(ctx, at)
	default:
		c.read(ctx, at) // 80 % of these are reads
	}
}

// iteration returns the scenario's step.
func (c *caller) iteration(scenario string) (func(context.Context, time.Time), error) {
	switch scenario {
	case ScenarioUniform:
		return c.uniform, nil
	case ScenarioHot:
		return c.hot, nil
	case ScenarioCard:
		return c.card, nil
	case ScenarioRead:
		return c.read, nil
	case ScenarioMix:
		return c.mix, nil
	}
	return nil, fmt.Errorf("unknown scenario %q: say one of %v", scenario, Scenarios)
}
