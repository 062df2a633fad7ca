#!/usr/bin/env bash
# The test command (README, .ci/run): on a fresh machine it installs and starts what the
# tests need — a throw-away PostgreSQL, Redis and Kafka broker on loopback, in a temporary directory —
# runs the checks and `go test -race ./...`, and stops everything afterwards.
#
#   bash infra/local/test.sh            # everything
#   bash infra/local/test.sh ./domain/... ./services/ledger/...   # chosen packages
set -euo pipefail
cd "$(dirname "$0")/../.."

log() { printf '== %s\n' "$*" >&2; }

# Tools and caches live outside the clone, keyed by version, so a rerun is fast and a fresh
# machine still works.
export SECUREPAY_CACHE=${SECUREPAY_CACHE:-$HOME/.cache/securepay}
mkdir -p "$SECUREPAY_CACHE"

free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

work=$(mktemp -d /tmp/securepay-test.XXXXXX)
chmod 755 "$work"
cleanup() {
	local rc=$?
	bash infra/local/kafka.sh stop "$work/kafka" || true
	bash infra/local/spire.sh stop "$work/spire" || true
	bash infra/local/redis.sh stop "$work/redis" || true
	bash infra/local/postgres.sh stop "$work/pg" || true
	rm -rf "$work"
	exit $rc
}
trap cleanup EXIT INT TERM

log "PostgreSQL"
SECUREPAY_TEST_POSTGRES_DSN=$(bash infra/local/postgres.sh start "$work/pg" "$(free_port)")
export SECUREPAY_TEST_POSTGRES_DSN
log "Redis"
SECUREPAY_TEST_REDIS_ADDR=$(bash infra/local/redis.sh start "$work/redis" "$(free_port)")
export SECUREPAY_TEST_REDIS_ADDR
log "SPIRE (server + agent; built and cached on first use)"
bash infra/local/spire.sh start "$work/spire" >/dev/null
export SECUREPAY_TEST_SPIRE_DIR=$work/spire
log "Kafka"
SECUREPAY_TEST_KAFKA_ADDR=$(bash infra/local/kafka.sh start "$work/kafka")
export SECUREPAY_TEST_KAFKA_ADDR

if ! command -v promtool >/dev/null; then
	log "promtool (checks infra/observability's alert rules): installing the Debian package prometheus"
	[[ $(id -u) -eq 0 ]] || { echo "promtool is not installed and we are not root: apt-get install -y prometheus" >&2; exit 1; }
	apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus >&2
fi

if [[ -x api/check-generated.sh ]]; then
	log "generated code is fresh"
	bash api/check-generated.sh
fi

log "gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './.git/*'))
if [[ -n "$unformatted" ]]; then
	printf 'gofmt would change:\n%s\n' "$unformatted" >&2
	exit 1
fi

log "go vet"
go vet ./...

log "staticcheck"
bash infra/tools/staticcheck.sh ./...

pkgs=("$@")
[[ ${#pkgs[@]} -gt 0 ]] || pkgs=(./...)
log "go test -race ${pkgs[*]}"
go test -race -count=1 -timeout 30m "${pkgs[@]}"
