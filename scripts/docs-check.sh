#!/usr/bin/env bash
# Fails when docs/ is not what `make generate` produces from templates/ and
# examples/: docs are generated, never edited by hand.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
schema="$tmp/schema.json"
scripts/provider-schema.sh >"$schema"
cp -r docs "$tmp/docs.before" 2>/dev/null || mkdir -p "$tmp/docs.before"
go tool tfplugindocs generate --provider-dir . --provider-name kvm --rendered-provider-name kvm \
	--website-source-dir templates --rendered-website-dir "$tmp/docs.after" \
	--providers-schema "$schema" >/dev/null
if ! diff -r "$tmp/docs.before" "$tmp/docs.after" >"$tmp/diff"; then
	echo "docs/ is stale: run 'make generate' and commit the result" >&2
	head -50 "$tmp/diff" >&2
	exit 1
fi
