#!/usr/bin/env bash
# Runs staticcheck at a pinned version, installing it first into the tool cache (keyed by
# version) when it is missing, so CI on a fresh machine and a rerun on a warm one run the
# same linter.
#
#   infra/tools/staticcheck.sh ./...
#
# Installed outside our module (like buf in install.sh) so its dependencies never enter our
# go.mod. Exceptions are written beside the code they excuse, as //lint:ignore CHECK reason.
set -euo pipefail

STATICCHECK_VERSION=v0.8.2 # staticcheck 2026.1.2; supports Go 1.26
cache="${SECUREPAY_CACHE:-$HOME/.cache/securepay}/tools"
bindir="$cache/staticcheck-$STATICCHECK_VERSION/bin"

if [[ ! -x "$bindir/staticcheck" ]]; then
	echo "installing staticcheck $STATICCHECK_VERSION into $bindir" >&2
	mkdir -p "$bindir"
	(cd "$cache" && GOFLAGS=-mod=mod GOBIN="$bindir" go install "honnef.co/go/tools/cmd/staticcheck@$STATICCHECK_VERSION")
fi
exec "$bindir/staticcheck" "$@"
