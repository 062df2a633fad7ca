#!/usr/bin/env bash
# Lints the API schema and regenerates the Go code under api/gen (committed).
#
#   api/generate.sh
#
# Also rewrites proto/buf/validate/validate.proto from the protovalidate version in go.mod.
set -euo pipefail

api="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$api/.." && pwd)"
bin="$("$root/infra/tools/install.sh")"
export PATH="$bin:$PATH"

cd "$api"
# validate.proto follows the protovalidate version in go.mod.
(cd "$root" && go run ./api/tools/validateproto) > proto/buf/validate/validate.proto.tmp
mv proto/buf/validate/validate.proto.tmp proto/buf/validate/validate.proto

buf lint
rm -rf "$api/gen/securepay"
# Only our files: validate.proto's Go code is the protovalidate module itself.
buf generate --path proto/securepay
