#!/usr/bin/env bash
# Installs the code-generation tools at pinned versions into a cache directory keyed by
# version, so a second run (or an offline machine with a warm Go module cache) does no work.
#
#   infra/tools/install.sh          install (if missing) and print the bin directory
#
# buf is installed on its own (`go install buf@version`), not as a tool of our go.mod, so
# its large dependency tree never enters the module graph of the product. The protoc
# plugins are built from the versions our go.mod already requires (protobuf and connect),
# so the generated code always matches the runtime it is compiled against.
set -euo pipefail

BUF_VERSION=v1.75.0
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cache="${SECUREPAY_CACHE:-$HOME/.cache/securepay}/tools"

# Versions of the plugins come from go.mod, so bumping a dependency re-keys the cache.
modversion() {
	(cd "$root" && go list -m -f '{{.Version}}' "$1")
}
PROTOBUF_VERSION="$(modversion google.golang.org/protobuf)"
CONNECT_VERSION="$(modversion connectrpc.com/connect)"

bufdir="$cache/buf-$BUF_VERSION/bin"
godir="$cache/protoc-gen-go-$PROTOBUF_VERSION/bin"
connectdir="$cache/protoc-gen-connect-go-$CONNECT_VERSION/bin"

if [[ ! -x "$bufdir/buf" ]]; then
	echo "installing buf $BUF_VERSION into $bufdir" >&2
	mkdir -p "$bufdir"
	# Outside our module so that our go.mod neither constrains nor records buf's dependencies.
	(cd "$cache" && GOFLAGS=-mod=mod GOBIN="$bufdir" go install "github.com/bufbuild/buf/cmd/buf@$BUF_VERSION")
fi
if [[ ! -x "$godir/protoc-gen-go" ]]; then
	echo "installing protoc-gen-go $PROTOBUF_VERSION into $godir" >&2
	mkdir -p "$godir"
	(cd "$root" && GOBIN="$godir" go install google.golang.org/protobuf/cmd/protoc-gen-go)
fi
if [[ ! -x "$connectdir/protoc-gen-connect-go" ]]; then
	echo "installing protoc-gen-connect-go $CONNECT_VERSION into $connectdir" >&2
	mkdir -p "$connectdir"
	(cd "$root" && GOBIN="$connectdir" go install connectrpc.com/connect/cmd/protoc-gen-connect-go)
fi

# One directory on PATH holding all three, so buf.gen.yaml names the plugins by their
# plain local names.
bin="$cache/bin-buf-$BUF_VERSION-go-$PROTOBUF_VERSION-connect-$CONNECT_VERSION"
mkdir -p "$bin"
ln -sf "$bufdir/buf" "$bin/buf"
ln -sf "$godir/protoc-gen-go" "$bin/protoc-gen-go"
ln -sf "$connectdir/protoc-gen-connect-go" "$bin/protoc-gen-connect-go"
echo "$bin"
