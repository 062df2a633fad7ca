// Package projections is the read side of SecurePay: projectors follow the global log from
// a checkpoint and keep views (balances, history, payments, notifications) that the API
// reads. It is laid out the way eventstore is: the contract at the top, one package per
// backend below it.
//
//   - runtime.go: the Projector contract and the Runner that drives projectors, one
//     goroutine each, with read-your-writes waits.
//   - fold.go, rows.go: the fold, pure, that every view of accounts and payments runs, so
//     views can differ from a replay of the log only by storage, never by arithmetic.
//   - query.go: the query contract, Reader and its read model, which the API depends on.
//   - admin.go: what operators see of any backend's projectors (list, status, rebuild).
//
// The backends: projections/pg (PostgreSQL views, their rebuild and migrations),
// projections/redis (the balance cache and notification streams) and projections/memory
// (the views of `securepay dev`). This package links none of their drivers; a test walks
// its dependencies to keep it that way.
package projections
