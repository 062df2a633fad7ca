package audit

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
)

// ReplayOptions tune Replay.
type ReplayOptions struct {
	PageSize int
}

// ReplayLine is one line of Replay's output: an event and the aggregate's state after it.
type ReplayLine struct {
	Position      uint64          `json:"position"`
	StreamVersion uint64          `json:"stream_version"`
	Type          string          `json:"type"`
	RecordedAt    string          `json:"recorded_at"`
	Payload       json.RawMessage `json:"payload,omitempty"`
	Account       *AccountState   `json:"account,omitempty"`
	Payment       *PaymentState   `json:"payment,omitempty"`
}

// AccountState is an account's state in replay output. Amounts are decimal strings of
// minor units, as in the events.
type AccountState struct {
	ID          string            `json:"id"`
	Asset       string            `json:"asset"`
	Scale       uint8             `json:"scale"`
	Kind        string            `json:"kind"`
	Status      string            `json:"status"`
	CreditLimit int64             `json:"credit_limit_minor,string"`
	Posted      int64             `json:"posted_minor,string"`
	Held        int64             `json:"held_minor,string"`
	Available   int64             `json:"available_minor,string"`
	OpenHolds   int               `json:"open_holds"`
	Version     uint64            `json:"version"`
	Metadata    map[string]string `json:"metadata,omitempty"`
}

// PaymentState is a payment's state in replay output.
type PaymentState struct {
	ID         string            `json:"id"`
	Kind       string            `json:"kind"`
	Status     string            `json:"status"`
	Legs       []LegState        `json:"legs"`
	Reference  string            `json:"reference,omitempty"`
	Authorised int64             `json:"authorised_minor,string"`
	Captured   int64             `json:"captured_minor,string"`
	Refunded   int64             `json:"refunded_minor,string"`
	Released   int64             `json:"released_minor,string"`
	ExpiresAt  string            `json:"expires_at,omitempty"`
	Version    uint64            `json:"version"`
	Metadata   map[string]string `json:"metadata,omitempty"`
}

// LegState is one leg of a payment.
type LegState struct {
	Source      string `json:"source"`
	Destination string `json:"destination"`
	Amount      int64  `json:"amount_minor,string"`
	Asset       string `json:"asset"`
}

func accountState(a domain.Account) *AccountState {
	return &AccountState{ID: string(a.ID), Asset: a.Asset.Code, Scale: a.Asset.Scale, Kind: a.Kind.String(), Status: a.Status.String(),
		CreditLimit: a.CreditLimit, Posted: a.Posted, Held: a.Held, Available: a.Available(), OpenHolds: a.OpenHolds,
		Version: a.Version, Metadata: a.Metadata}
}

func paymentState(p domain.Payment) *PaymentState {
	out := &PaymentState{ID: string(p.ID), Kind: p.Kind.String(), Status: p.Status.String(), Reference: p.Reference,
		Authorised: p.Authorised, Captured: p.Captured, Refunded: p.Refunded, Released: p.Released, Version: p.Version,
		Metadata: p.Metadata, Legs: []LegState{}}
	if !p.ExpiresAt.IsZero() {
		out.ExpiresAt = p.ExpiresAt.UTC().Format(time.RFC3339Nano)
	}
	for _, l := range p.Legs {
		out.Legs = append(out.Legs, LegState{Source: string(l.Source), Destination: string(l.Destination), Amount: l.Amount.Minor, Asset: l.Amount.Asset.Code})
	}
	return out
}

// Replay writes each event of stream with the state of its account or payment after it
// (domain.EvolveAccount / EvolvePayment), one JSON object per line. An event that does not
// decode stops the replay with an error naming its position.
func Replay(ctx context.Context, s eventstore.Store, w io.Writer, stream string, opts ReplayOptions) (uint64, error) {
	acct, pay, ok := domain.ParseStream(stream)
	if !ok {
		return 0, fmt.Errorf("audit replay: %q is neither an account stream (account-ID) nor a payment stream (payment-ID)", stream)
	}
	bw := bufio.NewWriterSize(w, 64<<10)
	enc := json.NewEncoder(bw)
	enc.SetEscapeHTML(false)
	a := domain.Account{ID: acct}
	p := domain.Payment{ID: pay}
	limit := pageSize(opts.PageSize)
	var after, n uint64
	for {
		page, err := s.ReadStream(ctx, stream, after, limit)
		if err != nil {
			return n, fmt.Errorf("audit replay: read %s after version %d: %w", stream, after, err)
		}
		for i := range page {
			e := &page[i]
			ev, err := domain.DecodeEvent(e.Type, e.Data)
			if err != nil {
				_ = bw.Flush()
				return n, fmt.Errorf("audit replay: %s version %d (position %d): %w", stream, e.StreamVersion, e.Position, err)
			}
			line := ReplayLine{Position: e.Position, StreamVersion: e.StreamVersion, Type: e.Type,
				RecordedAt: e.RecordedAt.UTC().Format(time.RFC3339Nano)}
			if json.Valid(e.Data) {
				line.Payload = e.Data
			}
			if acct != "" {
				a = domain.EvolveAccount(a, ev)
				line.Account = accountState(a)
			} else {
				p = domain.EvolvePayment(p, ev)
				line.Payment = paymentState(p)
			}
			if err := enc.Encode(line); err != nil {
				return n, fmt.Errorf("audit replay: write: %w", err)
			}
			n++
		}
		if len(page) < limit {
			break
		}
		after = page[len(page)-1].StreamVersion
	}
	if err := bw.Flush(); err != nil {
		return n, fmt.Errorf("audit replay: flush: %w", err)
	}
	if n == 0 {
		return 0, fmt.Errorf("audit replay: stream %s has no events", stream)
	}
	return n, nil
}
