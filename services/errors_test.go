package services

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"connectrpc.com/connect"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/projections"
)

// TestEveryDomainErrorHasACode walks every domain sentinel: each must map to a deliberate
// Connect code, with its reason, and keep its message (written for people).
func TestEveryDomainErrorHasACode(t *testing.T) {
	sentinels := []error{
		domain.ErrInsufficientFunds, domain.ErrAccountUnknown, domain.ErrAccountFrozen,
		domain.ErrAccountClosed, domain.ErrAccountNotEmpty, domain.ErrAssetMismatch,
		domain.ErrInvalidAmount, domain.ErrInvalidInput, domain.ErrPaymentUnknown,
		domain.ErrPaymentState, domain.ErrDuplicateID, domain.ErrLimitExceeded,
	}
	if len(sentinels) != len(codeOfReason) {
		t.Fatalf("codeOfReason maps %d reasons, the test knows %d sentinels: a new domain error needs a code", len(codeOfReason), len(sentinels))
	}
	for _, s := range sentinels {
		reason := domain.ReasonOf(s)
		code, ok := codeOfReason[reason]
		if !ok {
			t.Errorf("%v (reason %q) has no Connect code", s, reason)
			continue
		}
		err := toConnectError(context.Background(), slog.New(slog.DiscardHandler), "/test", fmt.Errorf("decide: %w: details for the caller", s))
		if connect.CodeOf(err) != code || ReasonOf(err) != reason || !strings.Contains(err.Error(), "details for the caller") {
			t.Errorf("%v: want %v %s with the message, got %v %q", s, code, reason, err, ReasonOf(err))
		}
	}
}

func TestErrorMapping(t *testing.T) {
	for _, tc := range []struct {
		name   string
		err    error
		code   connect.Code
		reason string
	}{
		{"conflict", fmt.Errorf("append: %w", &eventstore.ConflictError{Stream: "account-a"}), connect.CodeAborted, ReasonConflict},
		{"view behind", fmt.Errorf("wait: %w", projections.ErrNotCaughtUp), connect.CodeDeadlineExceeded, ReasonNotCaughtUp},
		{"trimmed history", projections.ErrHistoryTrimmed, connect.CodeFailedPrecondition, ReasonHistoryTrimmed},
		{"store closed", eventstore.ErrClosed, connect.CodeUnavailable, ReasonUnavailable},
		{"internal", errors.New("pgx: connect to postgres://admin:hunter2@10.0.0.5/ledger: refused"), connect.CodeInternal, ReasonInternal},
	} {
		var logged bytes.Buffer
		log := slog.New(slog.NewTextHandler(&logged, nil))
		err := toConnectError(context.Background(), log, "/securepay.ledger.v1.PaymentService/Transfer", tc.err)
		if connect.CodeOf(err) != tc.code || ReasonOf(err) != tc.reason {
			t.Errorf("%s: want %v %s, got %v %q", tc.name, tc.code, tc.reason, err, ReasonOf(err))
		}
		if tc.code == connect.CodeInternal {
			var cerr *connect.Error
			if !errors.As(err, &cerr) || cerr.Message() != "internal error" {
				t.Errorf("%s: want the client to see only \"internal error\", got %v", tc.name, err)
			}
			if !strings.Contains(logged.String(), "hunter2") {
				t.Errorf("%s: want the full error in the log for operators, got log %q", tc.name, logged.String())
			}
		}
	}
}
