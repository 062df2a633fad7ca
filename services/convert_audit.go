package services

import (
	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/eventstore"
)

// Conversions of the AuditService's answers: events exactly as stored.

const (
	defaultReadStreamLimit = 100
	defaultLogBatch        = 500
	maxAuditPage           = 1000
)

func auditLimit(n uint32, def int) int {
	if n == 0 {
		return def
	}
	return int(min(n, maxAuditPage))
}

func eventToProto(e *eventstore.RecordedEvent) *ledgerv1.Event {
	return &ledgerv1.Event{
		Position:      e.Position,
		Stream:        e.Stream,
		StreamVersion: e.StreamVersion,
		Id:            e.ID,
		Type:          e.Type,
		RecordedAt:    timeToProto(e.RecordedAt),
		Data:          e.Data,
		Metadata: &ledgerv1.EventMetadata{
			CorrelationId: e.Metadata.CorrelationID,
			CausationId:   e.Metadata.CausationID,
			Actor:         e.Metadata.Actor,
			TraceParent:   e.Metadata.TraceParent,
		},
		PrevHash: e.PrevHash.String(),
		Hash:     e.Hash.String(),
	}
}

func eventsToProto(events []eventstore.RecordedEvent) []*ledgerv1.Event {
	out := make([]*ledgerv1.Event, 0, len(events))
	for i := range events {
		out = append(out, eventToProto(&events[i]))
	}
	return out
}
