package main

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/securepay/securepay/services"
	"github.com/securepay/securepay/services/edge"
	"github.com/securepay/securepay/services/mtls"
	"github.com/securepay/securepay/services/webhook"
)

// The webhook key seals the endpoints' signing secrets at rest (services/webhook.Key): a
// dump of the database then holds no key that signs webhooks. Like the snapshot key it
// lives outside the database, in a file only the server's user reads, and is the same for
// every payments instance (and the dispatcher, which opens the secrets to sign).

// devWebhookKeyFile is the key `securepay dev` keeps beside its ledger.
const devWebhookKeyFile = "webhook.key"

// loadWebhookKey reads a webhook key file: private (readSecretFile) and at least
// webhook.MinKeyBytes long once trimmed.
func loadWebhookKey(name string) (*webhook.Key, error) {
	v, err := readSecretFile(name)
	if err != nil {
		return nil, fmt.Errorf("the webhook key (--webhook-key-file): %w", err)
	}
	key, err := webhook.NewKey([]byte(v))
	if err != nil {
		return nil, fmt.Errorf("the webhook key (--webhook-key-file) %s: %w", name, err)
	}
	return key, nil
}

// devWebhookKey returns the key kept in dir, generating it on first use, and its path.
func devWebhookKey(dir string) (*webhook.Key, string, error) {
	return devKeyFile(filepath.Join(dir, devWebhookKeyFile), "webhook key", loadWebhookKey)
}

// openWebhookRegistry is the registry on PostgreSQL for serve: the schema must have been
// migrated, and every stored secret must open under key (a wrong --webhook-key-file is
// refused at start, naming both keys' ids).
func openWebhookRegistry(ctx context.Context, pool *pgxpool.Pool, schema string, key *webhook.Key, log *slog.Logger) (*webhook.Registry, error) {
	st, err := webhook.OpenPostgres(ctx, pool, schema)
	if err != nil {
		return nil, err
	}
	reg, err := webhook.NewRegistry(webhook.Config{Store: st, Key: key, Logger: log})
	if err != nil {
		return nil, err
	}
	if err := reg.Check(ctx); err != nil {
		return nil, err
	}
	return reg, nil
}

// devComponentCaller is the principal function of dev's components (newDevStack): the
// gateway's assertion, trusted from its SVID.
func devComponentCaller() services.CallerFunc {
	caller, _ := edge.ForComponent(mtls.WellKnownIDs(spiffeid.RequireTrustDomainFromString(mtls.DefaultTrustDomain)).Gateway)
	return caller
}

// webhookHandler serves reg as the payments component's WebhookService.
func webhookHandler(reg *webhook.Registry, caller services.CallerFunc) (*webhook.Service, error) {
	if caller == nil {
		caller = services.AnonymousCaller
	}
	return webhook.NewService(reg, caller)
}
