#!/usr/bin/env bash
# Build the OpenTofu CLI (tofu) from the Go module proxy.
#
# The acceptance tests run a representative subset under OpenTofu as well
# (provider/kvm/opentofu_test.go), and CI machines reach only the Go module
# proxy, not OpenTofu's release downloads. Unlike Terraform's, OpenTofu's
# module zip builds as published: it has no nested modules behind local
# replace directives (its only replace points at another published module).
# The version comes from the embedded version/VERSION file; -X ...dev=no drops
# the "-dev" suffix so `tofu version` reports the release it was built from.
#
# Usage: scripts/build-tofu.sh [OUTPUT]   (default: <repo>/.cache/bin/tofu)
# Env:   TOFU_BUILD_VERSION (default v1.12.6, the newest 1.12 patch the module
#        proxy serves; an exact version: the proxy here refuses version lists).
# Build logs go to stderr; nothing is printed on stdout.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
version="${TOFU_BUILD_VERSION:-v1.12.6}"
out="${1:-$repo_root/.cache/bin/tofu}"
module=github.com/opentofu/opentofu

log() { printf 'build-tofu: %s\n' "$*" >&2; }

command -v go >/dev/null 2>&1 || { log "go not found on PATH"; exit 1; }

# Keep the build hermetic from whatever workspace/flags the caller has set.
export GOWORK=off GOFLAGS=-mod=readonly CGO_ENABLED=0

work="$(mktemp -d)"
trap 'chmod -R u+w "$work" 2>/dev/null || true; rm -rf "$work"' EXIT

log "downloading $module@$version from the module proxy"
src_dir="$(cd "$work" && go mod download -json "$module@$version" |
	sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')"
[[ -n "$src_dir" && -d "$src_dir" ]] || { log "download of $module@$version failed"; exit 1; }

# Built from inside the module's own (read-only) directory so its go.mod
# (requirements, the hcl replace, godebug settings) applies as published;
# -mod=readonly: go build only reads it.
cd "$src_dir"
log "building tofu $version (takes ~2-5 min on 2 cores with a cold module cache)"
mkdir -p "$(dirname "$out")"
go build -trimpath -ldflags "-s -w -X $module/version.dev=no" -o "$work/tofu" ./cmd/tofu

# Rename into place so concurrent readers never see a half-written binary.
mv -f "$work/tofu" "$out.tmp.$$"
mv -f "$out.tmp.$$" "$out"
log "built $out"
