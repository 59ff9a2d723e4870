#!/usr/bin/env bash
# Renders the provider docs from templates/ and examples/ (and the schema's
# MarkdownDescriptions) with tfplugindocs into the directory given (default
# docs/). Needs bin/terraform-provider-kvm (make build).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
out="${1:-docs}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
scripts/provider-schema.sh >"$tmp/schema.json"
go tool tfplugindocs generate --provider-dir . --provider-name kvm --rendered-provider-name kvm \
	--website-source-dir templates --rendered-website-dir "$out" \
	--providers-schema "$tmp/schema.json" >/dev/null
