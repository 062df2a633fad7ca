#!/usr/bin/env bash
# Fails when the committed generated code (api/gen, proto/buf/validate/validate.proto) is
# not what api/generate.sh would produce now, when the schema does not lint, and — when git
# history has a previous version of the schema — when it breaks compatibility with the last
# commit. Changes nothing in the work tree.
set -euo pipefail

api="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$api/.." && pwd)"
bin="$("$root/infra/tools/install.sh")"
export PATH="$bin:$PATH"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cd "$api"
status=0

(cd "$root" && go run ./api/tools/validateproto) > "$tmp/validate.proto"
if ! diff -u proto/buf/validate/validate.proto "$tmp/validate.proto" > "$tmp/validate.diff"; then
	echo "stale: api/proto/buf/validate/validate.proto differs from the protovalidate version in go.mod; run api/generate.sh" >&2
	head -40 "$tmp/validate.diff" >&2
	status=1
fi

# The printed validate.proto must compile to exactly the descriptor protovalidate embeds.
buf build -o "$tmp/image.binpb"
(cd "$root" && go run ./api/tools/validateproto -check "$tmp/image.binpb")

buf lint
buf generate --path proto/securepay --output "$tmp"
if ! diff -ru gen "$tmp/gen" > "$tmp/gen.diff"; then
	echo "stale: api/gen differs from what api/generate.sh produces; run api/generate.sh and commit" >&2
	head -60 "$tmp/gen.diff" >&2
	status=1
fi

# Compare with the last commit: HEAD while the schema has uncommitted changes (a developer's
# tree), HEAD~1 when the tree is HEAD itself (CI's clean clone of the new commit).
against=HEAD
if git -C "$root" diff --quiet HEAD -- api/proto 2>/dev/null && [[ -z "$(git -C "$root" ls-files --others --exclude-standard -- api/proto)" ]]; then
	against=HEAD~1
fi
if git -C "$root" rev-parse --verify -q "$against" >/dev/null && git -C "$root" cat-file -e "$against:api/buf.yaml" 2>/dev/null; then
	buf breaking --against "$root/.git#ref=$against,subdir=api"
	echo "buf breaking: no breaking change against $against"
else
	echo "buf breaking: skipped, $against has no api/buf.yaml to compare with (the schema is new)"
fi

if [[ $status -eq 0 ]]; then
	echo "api: generated code is up to date"
fi
exit $status
