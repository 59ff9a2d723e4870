#!/usr/bin/env bash
# Print the absolute path of the terraform binary the tests should use, building one
# if needed. Meant for `TF_ACC_TERRAFORM_PATH := $(shell scripts/terraform-path.sh)`,
# so stdout carries only the path and the warm path is fast (no network).
#
# Order: terraform on PATH if >= 1.11 (the oldest supported) (unless FORCE_BUILD_TERRAFORM=1), then a cached
# build in .cache/bin/terraform, else build it from the Go module proxy.
#
# With --modern it prints a Terraform new enough for resource identity, list
# resources (`terraform query`) and actions (>= 1.14): TERRAFORM_MODERN_VERSION
# (default v1.16.4), built once from the module proxy and cached outside the
# checkout (KVM_TOOLS_CACHE, default /var/cache/kvm-provider-tools) so fresh
# clones reuse it: the build takes minutes.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache_bin="$repo_root/.cache/bin/terraform"
min_major=1 min_minor=11
modern=0
if [[ "${1:-}" == --modern ]]; then
	modern=1
	modern_version="${TERRAFORM_MODERN_VERSION:-v1.16.4}"
	tools_cache="${KVM_TOOLS_CACHE:-/var/cache/kvm-provider-tools}"
	cache_bin="$tools_cache/terraform-$modern_version"
	min_major=1 min_minor=14
fi

# Skip HashiCorp's update check: it is a network call on every `terraform version`.
export CHECKPOINT_DISABLE=1

# usable BIN: exit 0 when BIN runs and reports a version >= the minimum.
usable() {
	local bin="$1" out ver major minor
	[[ -x "$bin" ]] || return 1
	out="$("$bin" version -json 2>/dev/null)" || return 1
	ver="$(sed -n 's/.*"terraform_version": *"\([0-9][0-9.]*\).*/\1/p' <<<"$out")"
	IFS=. read -r major minor _ <<<"$ver"
	[[ -n "$major" && -n "$minor" ]] || return 1
	((major > min_major || (major == min_major && minor >= min_minor)))
}

if [[ "$modern" == 0 && "${FORCE_BUILD_TERRAFORM:-0}" != 1 ]]; then
	if on_path="$(command -v terraform 2>/dev/null)" && usable "$on_path"; then
		readlink -f "$on_path"
		exit 0
	fi
fi

if ! usable "$cache_bin"; then
	# Several make/test processes may ask at once; build only once.
	mkdir -p "$(dirname "$cache_bin")"
	exec 9>"$cache_bin.lock"
	flock 9
	if ! usable "$cache_bin"; then
		if [[ "$modern" == 1 ]]; then
			TERRAFORM_BUILD_VERSION="$modern_version" "$repo_root/scripts/build-terraform.sh" "$cache_bin" >&2
		else
			"$repo_root/scripts/build-terraform.sh" "$cache_bin" >&2
		fi
	fi
	usable "$cache_bin" || { echo "terraform-path: built $cache_bin is not usable" >&2; exit 1; }
fi
echo "$cache_bin"
