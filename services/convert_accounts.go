package services

import (
	"fmt"
	"strings"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/domain"
)

// Conversions of the AccountService's requests into domain commands.

func openAccountFromProto(r *ledgerv1.OpenAccountRequest) (domain.OpenAccount, error) {
	id, err := accountIDFromProto(r.GetAccountId(), "account_id")
	if err != nil {
		return domain.OpenAccount{}, err
	}
	asset, err := domain.ParseAsset(r.GetAsset())
	if err != nil {
		return domain.OpenAccount{}, fmt.Errorf("asset: %w", err)
	}
	kind, err := kindFromProto(r.GetKind())
	if err != nil {
		return domain.OpenAccount{}, err
	}
	limit, err := creditLimitFromProto(r.GetCreditLimit(), asset)
	if err != nil {
		return domain.OpenAccount{}, err
	}
	return domain.OpenAccount{
		AccountID:   id,
		Asset:       asset,
		Kind:        kind,
		CreditLimit: limit,
		Metadata:    metadataFromProto(r.GetMetadata()),
	}, nil
}

// creditLimitFromProto accepts "" and zero ("0", "0.00") as no limit; anything else must be
// an exact positive amount of the account's asset.
func creditLimitFromProto(s string, a domain.Asset) (int64, error) {
	if strings.Trim(s, "0.") == "" {
		if strings.Count(s, ".") > 1 || strings.HasPrefix(s, ".") || strings.HasSuffix(s, ".") {
			return 0, fmt.Errorf("%w: credit_limit %q is not a decimal number", domain.ErrInvalidAmount, s)
		}
		return 0, nil
	}
	m, err := domain.ParseAmount(s, a)
	if err != nil {
		return 0, fmt.Errorf("credit_limit: %w", err)
	}
	return m.Minor, nil
}

func freezeFromProto(r *ledgerv1.FreezeAccountRequest) (domain.FreezeAccount, error) {
	id, err := accountIDFromProto(r.GetAccountId(), "account_id")
	if err != nil {
		return domain.FreezeAccount{}, err
	}
	return domain.FreezeAccount{AccountID: id, Reason: r.GetReason()}, nil
}

func unfreezeFromProto(r *ledgerv1.UnfreezeAccountRequest) (domain.UnfreezeAccount, error) {
	id, err := accountIDFromProto(r.GetAccountId(), "account_id")
	if err != nil {
		return domain.UnfreezeAccount{}, err
	}
	return domain.UnfreezeAccount{AccountID: id}, nil
}

func closeFromProto(r *ledgerv1.CloseAccountRequest) (domain.CloseAccount, error) {
	id, err := accountIDFromProto(r.GetAccountId(), "account_id")
	if err != nil {
		return domain.CloseAccount{}, err
	}
	return domain.CloseAccount{AccountID: id}, nil
}
