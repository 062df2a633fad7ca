package services

import (
	"context"
	"fmt"

	"connectrpc.com/connect"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/services/ledger"
)

// Commands is the write side the handlers need: *ledger.Processor.
type Commands interface {
	Execute(ctx context.Context, r ledger.Request) (ledger.Result, error)
	// AccountAt is the account as the write side knows it now, with the log position
	// that state is true at.
	AccountAt(ctx context.Context, id domain.AccountID) (domain.Account, uint64, error)
}

type accountService struct {
	cmds Commands
	meta metaFunc
}

var _ ledgerv1connect.AccountServiceHandler = (*accountService)(nil)

// accountWrite runs an account command and shapes the common part of the response.
func (s *accountService) accountWrite(ctx context.Context, h connect.AnyRequest, id domain.AccountID, cmd domain.Command) (*ledgerv1.Account, *ledgerv1.WriteResult, error) {
	meta, err := s.meta(ctx, h, string(id))
	if err != nil {
		return nil, nil, err
	}
	res, err := s.cmds.Execute(ctx, ledger.Request{Command: cmd, Meta: meta})
	if err != nil {
		return nil, nil, err
	}
	for i, a := range res.Accounts {
		if a.ID == id {
			return accountToProto(a, positionOf(res, i)), writeResult(res), nil
		}
	}
	return nil, nil, fmt.Errorf("processor result for %T has no account %s", cmd, id)
}

func (s *accountService) OpenAccount(ctx context.Context, req *connect.Request[ledgerv1.OpenAccountRequest]) (*connect.Response[ledgerv1.OpenAccountResponse], error) {
	cmd, err := openAccountFromProto(req.Msg)
	if err != nil {
		return nil, err
	}
	acc, wr, err := s.accountWrite(ctx, req, cmd.AccountID, cmd)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&ledgerv1.OpenAccountResponse{Account: acc, Result: wr}), nil
}

func (s *accountService) GetAccount(ctx context.Context, req *connect.Request[ledgerv1.GetAccountRequest]) (*connect.Response[ledgerv1.GetAccountResponse], error) {
	id, err := accountIDFromProto(req.Msg.GetAccountId(), "account_id")
	if err != nil {
		return nil, err
	}
	a, pos, err := s.cmds.AccountAt(ctx, id)
	if err != nil {
		return nil, err
	}
	if !a.Exists() {
		return nil, fmt.Errorf("%w: account %s", domain.ErrAccountUnknown, id)
	}
	return connect.NewResponse(&ledgerv1.GetAccountResponse{Account: accountToProto(a, pos)}), nil
}

func (s *accountService) FreezeAccount(ctx context.Context, req *connect.Request[ledgerv1.FreezeAccountRequest]) (*connect.Response[ledgerv1.FreezeAccountResponse], error) {
	cmd, err := freezeFromProto(req.Msg)
	if err != nil {
		return nil, err
	}
	acc, wr, err := s.accountWrite(ctx, req, cmd.AccountID, cmd)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&ledgerv1.FreezeAccountResponse{Account: acc, Result: wr}), nil
}

func (s *accountService) UnfreezeAccount(ctx context.Context, req *connect.Request[ledgerv1.UnfreezeAccountRequest]) (*connect.Response[ledgerv1.UnfreezeAccountResponse], error) {
	cmd, err := unfreezeFromProto(req.Msg)
	if err != nil {
		return nil, err
	}
	acc, wr, err := s.accountWrite(ctx, req, cmd.AccountID, cmd)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&ledgerv1.UnfreezeAccountResponse{Account: acc, Result: wr}), nil
}

func (s *accountService) CloseAccount(ctx context.Context, req *connect.Request[ledgerv1.CloseAccountRequest]) (*connect.Response[ledgerv1.CloseAccountResponse], error) {
	cmd, err := closeFromProto(req.Msg)
	if err != nil {
		return nil, err
	}
	acc, wr, err := s.accountWrite(ctx, req, cmd.AccountID, cmd)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&ledgerv1.CloseAccountResponse{Account: acc, Result: wr}), nil
}
