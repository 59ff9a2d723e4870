#!/usr/bin/env bash
# Build the terraform CLI from the Go module proxy into .cache/bin/terraform.
#
# Used when no usable terraform is on PATH: acceptance tests need a real binary
# (TF_ACC_TERRAFORM_PATH) and CI machines here have no route to releases.hashicorp.com,
# only to the Go module proxy.
#
# The published module zip cannot be built as is:
#   * its go.mod replaces the remote-state backends (azure, s3, gcs, ...) with nested
#     modules under ./internal, and nested modules are excluded from module zips, so
#     those directories do not exist and the proxy has no such versions;
#   * it sets `godebug tlskyber=0`, a setting newer Go toolchains reject.
# So we drop the replace directives and the requirements they served, compile those
# backends out of internal/backend/init (tests only use the local backend), and
# drop the godebug lines.
#
# Usage: scripts/build-terraform.sh [OUTPUT]   (default: <repo>/.cache/bin/terraform)
# Env:   TERRAFORM_BUILD_VERSION (default v1.11.4, an exact version: the proxy
#        here refuses version lists).
# Build logs go to stderr; nothing is printed on stdout.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
version="${TERRAFORM_BUILD_VERSION:-v1.11.4}"
out="${1:-$repo_root/.cache/bin/terraform}"
module=github.com/hashicorp/terraform

log() { printf 'build-terraform: %s\n' "$*" >&2; }

command -v go >/dev/null 2>&1 || { log "go not found on PATH"; exit 1; }

# Keep the build hermetic from whatever workspace/flags the caller has set.
export GOWORK=off GOFLAGS=-mod=mod CGO_ENABLED=0

work="$(mktemp -d)"
trap 'chmod -R u+w "$work" 2>/dev/null || true; rm -rf "$work"' EXIT

log "downloading $module@$version from the module proxy"
src_dir="$(cd "$work" && go mod download -json "$module@$version" |
	sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')"
[[ -n "$src_dir" && -d "$src_dir" ]] || { log "download of $module@$version failed"; exit 1; }

# The module cache is read-only; build from a writable copy.
mkdir -p "$work/src"
cp -a "$src_dir/." "$work/src/"
chmod -R u+w "$work/src"
cd "$work/src"

init_go=internal/backend/init/init.go
# Local replace targets (=> ./dir) that the zip does not contain.
# Captured first: bash ignores the exit status of a process substitution.
missing_list="$(sed -n 's|^replace \([^ ]*\) => \./\(.*\)$|\1 \2|p' go.mod |
	while read -r path dir; do [[ -d "$dir" ]] || echo "$path"; done)"
missing=()
[[ -z "$missing_list" ]] || mapfile -t missing <<<"$missing_list"

sed -i -e '/^godebug /d' -e '/^replace .* => \.\//d' go.mod
for path in "${missing[@]}"; do
	sed -i "\|^[[:space:]]*$path v|d" go.mod
	# Compile the backend out: drop its import and every line using its alias.
	alias="$(sed -n "s|^[[:space:]]*\([A-Za-z0-9_]*\)[[:space:]]*\"$path\"\$|\1|p" "$init_go")"
	if [[ -n "$alias" ]]; then
		sed -i -e "\|\"$path\"\$|d" -e "/[^A-Za-z0-9_]$alias\./d" "$init_go"
	fi
done

# Any other non-test importer of a removed module would fail below with a clear
# "cannot find module" error, which is the signal to extend the patch above.
log "building terraform $version (takes ~1-3 min on 2 cores)"
mkdir -p "$(dirname "$out")"
go build -trimpath -ldflags "-s -w -X $module/version.dev=no" -o "$work/terraform" .

# Rename into place so concurrent readers never see a half-written binary.
mv -f "$work/terraform" "$out.tmp.$$"
mv -f "$out.tmp.$$" "$out"
log "built $out"
