#!/usr/bin/env bash
# Print the absolute path of the OpenTofu binary the tests use, building it if
# needed: TOFU_VERSION (default v1.12.6), built once from the Go module proxy by
# scripts/build-tofu.sh and cached outside the checkout (KVM_TOOLS_CACHE,
# default /var/cache/kvm-provider-tools) so fresh clones reuse it, like
# `scripts/terraform-path.sh --modern`. stdout carries only the path; the warm
# path is fast (no network).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
version="${TOFU_VERSION:-v1.12.6}"
tools_cache="${KVM_TOOLS_CACHE:-/var/cache/kvm-provider-tools}"
cache_bin="$tools_cache/tofu-$version"

# usable BIN: exit 0 when BIN runs and reports exactly the wanted version.
usable() {
	local bin="$1" out
	[[ -x "$bin" ]] || return 1
	out="$("$bin" version -json 2>/dev/null)" || return 1
	grep -q "\"terraform_version\": *\"${version#v}\"" <<<"$out"
}

if ! usable "$cache_bin"; then
	# Several make/test processes may ask at once; build only once.
	mkdir -p "$tools_cache"
	exec 9>"$cache_bin.lock"
	flock 9
	if ! usable "$cache_bin"; then
		TOFU_BUILD_VERSION="$version" "$repo_root/scripts/build-tofu.sh" "$cache_bin" >&2
	fi
	usable "$cache_bin" || { echo "tofu-path: built $cache_bin is not usable" >&2; exit 1; }
fi
echo "$cache_bin"
