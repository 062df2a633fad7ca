package gateway

import (
	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
)

// Role is a right a token's roles claim grants.
type Role string

// The roles. A principal may hold several (a treasury service that owns the "world"
// account is a customer of it; an operator who also audits holds both).
const (
	// RoleCustomer moves money out of the accounts its token lists, and reads them and
	// the payments they take part in.
	RoleCustomer Role = "customer"
	// RoleOperator runs the ledger: opens any account (external ones, credit limits),
	// freezes, unfreezes and closes, and reads any account and payment. It moves no money:
	// funding goes through a principal that owns the external account as a customer.
	RoleOperator Role = "operator"
	// RoleAuditor reads the whole log (AuditService) and any account and payment.
	RoleAuditor Role = "auditor"
)

// Roles lists every role, for documentation and tests.
func Roles() []Role { return []Role{RoleCustomer, RoleOperator, RoleAuditor} }

func knownRole(r Role) bool {
	for _, k := range Roles() {
		if k == r {
			return true
		}
	}
	return false
}

// Check is what a role must show, besides holding the role, to call a procedure.
type Check int

const (
	// Any: holding the role is enough.
	Any Check = iota + 1
	// OwnsAccounts: every account the request names as its subject (the account of an
	// account or balance RPC, the source of every leg of a payment) is in the token's
	// accounts claim.
	OwnsAccounts
	// OwnsNewAccount: OpenAccount of an id in the token's accounts claim, not external, with
	// no credit limit (a customer cannot grant itself credit or mint through an external
	// account).
	OwnsNewAccount
	// PartyToPayment: the payment (looked up first) has a leg whose source or destination
	// the token owns.
	PartyToPayment
	// PayeeOfPayment: the token owns the destination of the payment's leg; a refund moves
	// money out of it.
	PayeeOfPayment
	// OwnsEndpoint: the webhook endpoint (looked up first) belongs to an account in the
	// token's accounts claim and was registered by this principal (the token's subject).
	OwnsEndpoint
)

// Rule maps each role allowed to call a procedure to its check. A role absent from the
// rule is refused (PERMISSION_DENIED); a procedure absent from Policy is refused to all.
type Rule map[Role]Check

// Policy is the whole authorisation of the public API, deny by default. Object-level
// refusals (a customer naming an account or payment it does not own) answer exactly what
// a missing account or payment answers (NOT_FOUND), so they reveal nothing.
//
// Capture and Void are open to either party of the authorisation: the payee (a merchant)
// captures, the payer may cancel; neither moves money out of the other's balance beyond
// what the payer authorised.
func Policy() map[string]Rule {
	readAny := func(customer Check) Rule {
		return Rule{RoleCustomer: customer, RoleOperator: Any, RoleAuditor: Any}
	}
	return map[string]Rule{
		ledgerv1connect.AccountServiceOpenAccountProcedure:     {RoleCustomer: OwnsNewAccount, RoleOperator: Any},
		ledgerv1connect.AccountServiceGetAccountProcedure:      readAny(OwnsAccounts),
		ledgerv1connect.AccountServiceFreezeAccountProcedure:   {RoleOperator: Any},
		ledgerv1connect.AccountServiceUnfreezeAccountProcedure: {RoleOperator: Any},
		ledgerv1connect.AccountServiceCloseAccountProcedure:    {RoleOperator: Any},

		ledgerv1connect.PaymentServiceTransferProcedure:      {RoleCustomer: OwnsAccounts},
		ledgerv1connect.PaymentServiceBatchTransferProcedure: {RoleCustomer: OwnsAccounts},
		ledgerv1connect.PaymentServiceAuthoriseProcedure:     {RoleCustomer: OwnsAccounts},
		ledgerv1connect.PaymentServiceCaptureProcedure:       {RoleCustomer: PartyToPayment},
		ledgerv1connect.PaymentServiceVoidProcedure:          {RoleCustomer: PartyToPayment},
		ledgerv1connect.PaymentServiceRefundProcedure:        {RoleCustomer: PayeeOfPayment},
		ledgerv1connect.PaymentServiceGetPaymentProcedure:    readAny(PartyToPayment),

		ledgerv1connect.BalanceServiceGetBalanceProcedure:   readAny(OwnsAccounts),
		ledgerv1connect.BalanceServiceListHistoryProcedure:  readAny(OwnsAccounts),
		ledgerv1connect.BalanceServiceWatchAccountProcedure: readAny(OwnsAccounts),

		ledgerv1connect.AuditServiceReadStreamProcedure:  {RoleAuditor: Any},
		ledgerv1connect.AuditServiceStreamLogProcedure:   {RoleAuditor: Any},
		ledgerv1connect.AuditServiceVerifyChainProcedure: {RoleAuditor: Any},
		// Checkpoints and proofs are hashes, signed or to be checked against a signature:
		// anyone may hold them. A customer proves a payment it is party to (its receipt),
		// never a log position, which would show another's event.
		ledgerv1connect.AuditServiceGetCheckpointProcedure:    readAny(Any),
		ledgerv1connect.AuditServiceProveInclusionProcedure:   readAny(PartyToPayment),
		ledgerv1connect.AuditServiceProveConsistencyProcedure: readAny(Any),

		// Webhook endpoints: a customer registers them for its own accounts and sees and
		// manages only those it registered (ListEndpoints shows a customer only its own);
		// an operator manages any. Auditors have no use for receivers' URLs.
		ledgerv1connect.WebhookServiceRegisterEndpointProcedure: {RoleCustomer: OwnsAccounts, RoleOperator: Any},
		ledgerv1connect.WebhookServiceListEndpointsProcedure:    {RoleCustomer: OwnsAccounts, RoleOperator: Any},
		ledgerv1connect.WebhookServiceGetEndpointProcedure:      {RoleCustomer: OwnsEndpoint, RoleOperator: Any},
		ledgerv1connect.WebhookServiceDeleteEndpointProcedure:   {RoleCustomer: OwnsEndpoint, RoleOperator: Any},
		ledgerv1connect.WebhookServiceRotateSecretProcedure:     {RoleCustomer: OwnsEndpoint, RoleOperator: Any},
	}
}
