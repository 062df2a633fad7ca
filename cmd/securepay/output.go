package main

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/proto"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
)

// tabw prints the readable (non --json) output: short sections of aligned columns.
type tabw struct {
	w   io.Writer
	tw  *tabwriter.Writer
	err error
}

func newTab(w io.Writer) *tabw {
	return &tabw{w: w, tw: tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)}
}

func (t *tabw) row(cells ...string) {
	if _, err := fmt.Fprintln(t.tw, strings.Join(cells, "\t")); err != nil && t.err == nil {
		t.err = err
	}
}

func (t *tabw) line(format string, args ...any) {
	t.row(fmt.Sprintf(format, args...))
}

func (t *tabw) blank() { t.row("") }

func (t *tabw) flush() error {
	if err := t.tw.Flush(); err != nil && t.err == nil {
		t.err = err
	}
	return t.err
}

// enumName shortens ACCOUNT_KIND_CUSTOMER to customer.
func enumName(s, prefix string) string {
	return strings.ToLower(strings.TrimPrefix(s, prefix))
}

func (t *tabw) account(a *ledgerv1.Account) {
	t.row("ACCOUNT", "ASSET", "KIND", "STATUS", "CREDIT LIMIT", "OPEN HOLDS", "METADATA")
	var meta []string
	for k, v := range a.GetMetadata() {
		meta = append(meta, k+"="+v)
	}
	t.row(a.GetAccountId(), a.GetAsset(), enumName(a.GetKind().String(), "ACCOUNT_KIND_"), enumName(a.GetStatus().String(), "ACCOUNT_STATUS_"),
		a.GetCreditLimit(), fmt.Sprint(a.GetOpenHolds()), strings.Join(sorted(meta), " "))
	if b := a.GetBalance(); b != nil {
		t.blank()
		t.balances([]*ledgerv1.Balance{b})
	}
}

// balances prints each balance with its own position: the one the answer gives for that
// balance, never the position of the write that answered with it.
func (t *tabw) balances(bs []*ledgerv1.Balance) {
	t.row("ACCOUNT", "ASSET", "POSTED", "HELD", "AVAILABLE", "STATUS", "AT POSITION")
	for _, b := range bs {
		t.row(b.GetAccountId(), b.GetAsset(), b.GetPosted(), b.GetHeld(), b.GetAvailable(),
			enumName(b.GetStatus().String(), "ACCOUNT_STATUS_"), position(b.GetPosition()))
	}
}

// position prints a log position; 0, which no event has, means the answer did not say.
func position(p uint64) string {
	if p == 0 {
		return "-"
	}
	return fmt.Sprint(p)
}

// write prints the part every write answer has; withBalances adds the balances of the
// accounts it touched (an account command already printed its own). A replay's balances
// are those of now (apiClient.wrote), not those the original write left.
func (t *tabw) write(r *ledgerv1.WriteResult, withBalances bool) {
	t.blank()
	if r.GetReplayed() {
		t.line("already applied earlier at log position %d: nothing changed (a safe retry)", r.GetPosition())
	} else {
		t.line("committed at log position %d", r.GetPosition())
	}
	if withBalances && len(r.GetBalances()) > 0 {
		t.blank()
		if r.GetReplayed() {
			t.line("balances now:")
		}
		t.balances(r.GetBalances())
	}
}

// accountWrite is the answer to a write on an account.
type accountWrite interface {
	proto.Message
	GetAccount() *ledgerv1.Account
	GetResult() *ledgerv1.WriteResult
}

func (t *tabw) accountWrite(m accountWrite) {
	t.account(m.GetAccount())
	t.write(m.GetResult(), false)
}

// paymentWrite is the answer to a write on a payment.
type paymentWrite interface {
	proto.Message
	GetPayment() *ledgerv1.Payment
	GetResult() *ledgerv1.WriteResult
}

func (t *tabw) paymentWrite(m paymentWrite) {
	t.payment(m.GetPayment())
	t.write(m.GetResult(), true)
}

func money(m *ledgerv1.Money) string {
	if m == nil {
		return "-"
	}
	return m.GetValue() + " " + m.GetAsset()
}

func (t *tabw) payment(p *ledgerv1.Payment) {
	t.row("PAYMENT", "KIND", "STATUS", "AUTHORISED", "CAPTURED", "REFUNDED", "RELEASED", "EXPIRES")
	expires := "-"
	if p.GetExpiresAt() != nil {
		expires = p.GetExpiresAt().AsTime().Format(time.RFC3339)
	}
	t.row(p.GetPaymentId(), enumName(p.GetKind().String(), "PAYMENT_KIND_"), enumName(p.GetStatus().String(), "PAYMENT_STATUS_"),
		money(p.GetAuthorised()), money(p.GetCaptured()), money(p.GetRefunded()), money(p.GetReleased()), expires)
	if len(p.GetLegs()) > 0 {
		t.blank()
		t.row("FROM", "TO", "AMOUNT")
		for _, l := range p.GetLegs() {
			t.row(l.GetSourceAccountId(), l.GetDestinationAccountId(), money(l.GetAmount()))
		}
	}
	if p.GetReference() != "" {
		t.blank()
		t.line("reference: %s", p.GetReference())
	}
}

func (t *tabw) history(account string, h *ledgerv1.ListHistoryResponse) {
	if len(h.GetEntries()) == 0 {
		t.line("no entries for %s after this position", account)
		return
	}
	t.row("POSITION", "TIME", "KIND", "PAYMENT", "AMOUNT", "POSTED AFTER", "AVAILABLE AFTER")
	for _, e := range h.GetEntries() {
		t.row(fmt.Sprint(e.GetPosition()), e.GetRecordedAt().AsTime().Format(time.RFC3339), enumName(e.GetKind().String(), "ENTRY_KIND_"),
			e.GetPaymentId(), money(e.GetAmount()), e.GetPostedAfter(), e.GetAvailableAfter())
	}
	if next := h.GetNextAfterPosition(); next != 0 {
		t.blank()
		t.line("more: securepay history %s --after %d", account, next)
	}
}

func sorted(s []string) []string {
	sort.Strings(s)
	return s
}
