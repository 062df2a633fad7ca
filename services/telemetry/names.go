package telemetry

// The metric families SecurePay exports, one constant each. The dashboard and alert rules
// under infra/observability may query only these (dashboard_test.go checks every name they
// use against a registry that registered all of them), so a renamed metric breaks a test,
// not a dashboard in production.
//
// Units are in the names (Prometheus convention): _seconds, _total, _events, _commands.
const (
	// Connect RPCs served, by procedure ("/securepay.ledger.v1.PaymentService/Transfer")
	// and code ("ok" or a Connect code such as "failed_precondition"). The histogram's
	// _count is the request rate.
	MetricRPCDuration = "securepay_rpc_duration_seconds"

	// Calls the public gateway refused itself before forwarding, by reason
	// (RefusalReasons: unauthenticated, forbidden, rate_limited, stream_quota,
	// limiter_unavailable).
	MetricGatewayRefusals = "securepay_gateway_refusals_total"

	// Calls per HopService.Forward the gateway sent payments (services/gateway/batch.go):
	// 1 while the hop keeps up, more as calls queue behind the Forwards in flight.
	MetricGatewayHopForwardCalls = "securepay_gateway_hop_forward_calls"

	// The ledger's write path (services/ledger), one batch = one atomic append.
	MetricAppendDuration      = "securepay_ledger_append_duration_seconds"   // {outcome: ok|conflict|error}
	MetricAppendBatchCommands = "securepay_ledger_append_batch_commands"     // commands per appended batch
	MetricAppendBatchEvents   = "securepay_ledger_append_batch_events"       // events per appended batch
	MetricAppendConflicts     = "securepay_ledger_append_conflicts_total"    // appends refused on an expected version
	MetricLedgerRetries       = "securepay_ledger_retries_total"             // {reason}: a command decided again
	MetricCommandDuration     = "securepay_ledger_command_duration_seconds"  // {command, outcome}: queue to answer
	MetricProjectionLagEvents = "securepay_projection_lag_events"            // {projector}
	MetricProjectionLagSecs   = "securepay_projection_lag_seconds"           // {projector}: age of the oldest unapplied event
	MetricProjectionCheckpt   = "securepay_projection_checkpoint"            // {projector}: last applied position
	MetricProjectionUp        = "securepay_projection_running"               // {projector}: 1 running, 0 otherwise
	MetricProjectionStatusErr = "securepay_projection_status_failures_total" // a scrape could not read the lag
	MetricLogHead             = "securepay_log_head_position"                // the global log's last position
	MetricRelayPublished      = "securepay_relay_published_total"            // {topic}: messages the broker acknowledged
	MetricRelayPublishErrors  = "securepay_relay_publish_errors_total"       // {topic}: publishes the broker refused or timed out
	MetricRelayCheckpoint     = "securepay_relay_checkpoint"                 // log position acknowledged by the broker
	MetricRelayLagEvents      = "securepay_relay_lag_events"                 // log head minus relay checkpoint
	MetricRelayLagSeconds     = "securepay_relay_lag_seconds"                // age of the oldest unpublished event
	MetricRelayInFlight       = "securepay_relay_inflight_messages"          // sent, not yet acknowledged
	MetricRelayLatency        = "securepay_relay_commit_to_ack_seconds"      // event recorded -> broker ack
	MetricWebhookAttempts     = "securepay_webhook_attempts_total"           // {outcome: delivered|failed|rejected}
	MetricWebhookDeadLetters  = "securepay_webhook_dead_letters_total"       // {reason}: notifications given up on
	MetricWebhookDuration     = "securepay_webhook_attempt_duration_seconds" // one HTTP attempt
	MetricWebhookCircuitsOpen = "securepay_webhook_circuits_open"            // endpoints whose breaker is open
)

// Label values of the ledger metrics: closed sets, so a series never comes from input.
const (
	OutcomeOK       = "ok"
	OutcomeConflict = "conflict"
	OutcomeError    = "error"
	OutcomeReplayed = "replayed"
	OutcomeRefused  = "refused"

	WebhookDelivered = "delivered" // 2xx
	WebhookFailed    = "failed"    // network error, timeout, 5xx, 429: retried
	WebhookRejected  = "rejected"  // other 4xx: the receiver refused it
)
