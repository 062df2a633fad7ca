package services

import (
	"fmt"
	"time"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/domain"
)

// Conversions of the PaymentService's requests into domain commands.

func transferFromProto(r *ledgerv1.TransferRequest) (domain.Transfer, error) {
	id, err := paymentIDFromProto(r.GetPaymentId())
	if err != nil {
		return domain.Transfer{}, err
	}
	src, err := accountIDFromProto(r.GetSourceAccountId(), "source_account_id")
	if err != nil {
		return domain.Transfer{}, err
	}
	dst, err := accountIDFromProto(r.GetDestinationAccountId(), "destination_account_id")
	if err != nil {
		return domain.Transfer{}, err
	}
	amount, err := moneyFromProto(r.GetAmount(), "amount")
	if err != nil {
		return domain.Transfer{}, err
	}
	return domain.Transfer{
		PaymentID:   id,
		Source:      src,
		Destination: dst,
		Amount:      amount,
		Reference:   r.GetReference(),
		Metadata:    metadataFromProto(r.GetMetadata()),
	}, nil
}

func batchFromProto(r *ledgerv1.BatchTransferRequest) (domain.BatchTransfer, error) {
	id, err := paymentIDFromProto(r.GetPaymentId())
	if err != nil {
		return domain.BatchTransfer{}, err
	}
	if n := len(r.GetLegs()); n == 0 || n > domain.MaxBatchLegs {
		return domain.BatchTransfer{}, fmt.Errorf("%w: a batch has 1..%d legs, got %d", domain.ErrLimitExceeded, domain.MaxBatchLegs, n)
	}
	legs := make([]domain.Leg, 0, len(r.GetLegs()))
	for i, l := range r.GetLegs() {
		src, err := accountIDFromProto(l.GetSourceAccountId(), fmt.Sprintf("legs[%d].source_account_id", i))
		if err != nil {
			return domain.BatchTransfer{}, err
		}
		dst, err := accountIDFromProto(l.GetDestinationAccountId(), fmt.Sprintf("legs[%d].destination_account_id", i))
		if err != nil {
			return domain.BatchTransfer{}, err
		}
		amount, err := moneyFromProto(l.GetAmount(), fmt.Sprintf("legs[%d].amount", i))
		if err != nil {
			return domain.BatchTransfer{}, err
		}
		legs = append(legs, domain.Leg{Source: src, Destination: dst, Amount: amount})
	}
	return domain.BatchTransfer{
		PaymentID: id,
		Legs:      legs,
		Reference: r.GetReference(),
		Metadata:  metadataFromProto(r.GetMetadata()),
	}, nil
}

func authoriseFromProto(r *ledgerv1.AuthoriseRequest) (domain.Authorise, error) {
	id, err := paymentIDFromProto(r.GetPaymentId())
	if err != nil {
		return domain.Authorise{}, err
	}
	src, err := accountIDFromProto(r.GetSourceAccountId(), "source_account_id")
	if err != nil {
		return domain.Authorise{}, err
	}
	dst, err := accountIDFromProto(r.GetDestinationAccountId(), "destination_account_id")
	if err != nil {
		return domain.Authorise{}, err
	}
	amount, err := moneyFromProto(r.GetAmount(), "amount")
	if err != nil {
		return domain.Authorise{}, err
	}
	if r.GetExpiresAt() == nil {
		return domain.Authorise{}, fmt.Errorf("%w: expires_at is required", domain.ErrInvalidInput)
	}
	if err := r.GetExpiresAt().CheckValid(); err != nil {
		return domain.Authorise{}, fmt.Errorf("%w: expires_at: %v", domain.ErrInvalidInput, err)
	}
	return domain.Authorise{
		PaymentID:   id,
		Source:      src,
		Destination: dst,
		Amount:      amount,
		// Microseconds: the precision the log keeps, so a retry compares equal.
		ExpiresAt: r.GetExpiresAt().AsTime().UTC().Truncate(time.Microsecond),
		Reference: r.GetReference(),
		Metadata:  metadataFromProto(r.GetMetadata()),
	}, nil
}

func captureFromProto(r *ledgerv1.CaptureRequest) (domain.Capture, error) {
	id, err := paymentIDFromProto(r.GetPaymentId())
	if err != nil {
		return domain.Capture{}, err
	}
	op, err := domain.NewOperationID(r.GetCaptureId())
	if err != nil {
		return domain.Capture{}, fmt.Errorf("capture_id: %w", err)
	}
	c := domain.Capture{PaymentID: id, CaptureID: op}
	switch what := r.GetWhat().(type) {
	case *ledgerv1.CaptureRequest_Full:
		if !what.Full {
			return domain.Capture{}, fmt.Errorf("%w: full must be true when given; send an amount for a partial capture", domain.ErrInvalidInput)
		}
		c.Full = true
	case *ledgerv1.CaptureRequest_Amount:
		amount, err := moneyFromProto(what.Amount, "amount")
		if err != nil {
			return domain.Capture{}, err
		}
		c.Amount = amount
	default:
		return domain.Capture{}, fmt.Errorf("%w: give an amount or full = true", domain.ErrInvalidInput)
	}
	return c, nil
}

func voidFromProto(r *ledgerv1.VoidRequest) (domain.Void, error) {
	id, err := paymentIDFromProto(r.GetPaymentId())
	if err != nil {
		return domain.Void{}, err
	}
	return domain.Void{PaymentID: id}, nil
}

func refundFromProto(r *ledgerv1.RefundRequest) (domain.Refund, error) {
	id, err := paymentIDFromProto(r.GetPaymentId())
	if err != nil {
		return domain.Refund{}, err
	}
	op, err := domain.NewOperationID(r.GetRefundId())
	if err != nil {
		return domain.Refund{}, fmt.Errorf("refund_id: %w", err)
	}
	amount, err := moneyFromProto(r.GetAmount(), "amount")
	if err != nil {
		return domain.Refund{}, err
	}
	return domain.Refund{PaymentID: id, RefundID: op, Amount: amount}, nil
}
