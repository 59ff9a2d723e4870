#!/usr/bin/env bash
# Part of `make bench` (called from scripts/bench.sh; runs alone too): the
# scale tables of issue 17, each next to its goal, on simulated hosts (one
# kvm-hostd per host on libvirt's test driver, whose state is per process),
# so they need neither root nor the real stack:
#   - no-op plan time against state size (internal/bench/planscale):
#     100, 1,000 and 5,000 resources (networks, disks, VMs) on 5, 5 and 50
#     hosts, refreshing and -refresh=false (Terraform's own walk), CPU time,
#     HTTP requests per host per plan, and the slope;
#   - kvm-hostd under load (internal/bench/hostdload): idle RSS, p99 of
#     GET /v1/vms with 500 domains, bursts of 500 concurrent mixed requests.
# Medians over BENCH_SCALE_ROUNDS rounds (3), every sample shown. Appends
# its tables to .cache/bench/scale.md (also printed). Every kvm-hostd it
# starts is stopped at the end, also on failure (the bench programs own
# them).
#
# Environment: BENCH_SCALE_SIZES ("100:5,1000:5,5000:50"),
# BENCH_SCALE_ROUNDS (3), BENCH_LOAD_DOMAINS (500), BENCH_LOAD_BURST (500),
# BENCH_SKIP_SCALE=1 skips it.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
[[ "${BENCH_SKIP_SCALE:-0}" == 1 ]] && exit 0

rounds="${BENCH_SCALE_ROUNDS:-3}"
out_dir="$root/.cache/bench"
mkdir -p "$out_dir" "$root/bin"
work="$(mktemp -d /tmp/kvm-bench-scale.XXXXXX)"
trap 'rm -rf "$work"' EXIT

export CHECKPOINT_DISABLE=1 TF_IN_AUTOMATION=1
export TF_CLI_CONFIG_FILE="$(scripts/dev-terraformrc.sh)"
tf="$(scripts/terraform-path.sh)"
[[ -x bin/terraform-provider-kvm && -x bin/kvm-hostd ]] || make --no-print-directory build >&2
export KVM_HOSTD_BIN="$root/bin/kvm-hostd"

go build -o "$work/planscale" ./internal/bench/planscale
go build -o "$work/hostdload" ./internal/bench/hostdload

echo "bench-scale: no-op plan scaling (simulated hosts)" >&2
"$work/planscale" -terraform "$tf" -sizes "${BENCH_SCALE_SIZES:-100:5,1000:5,5000:50}" \
	-rounds "$rounds" -out "$work/plan.md" >"$work/plan.out"
echo "bench-scale: kvm-hostd under load" >&2
rc=0
"$work/hostdload" -domains "${BENCH_LOAD_DOMAINS:-500}" -burst "${BENCH_LOAD_BURST:-500}" \
	-rounds "$rounds" -out "$work/load.md" >"$work/load.out" || rc=$?

{
	echo
	echo "## Scale ($(date -u +%Y-%m-%d), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg))"
	cat "$work/plan.md" "$work/load.md"
} | tee "$out_dir/scale.md"
exit "$rc"
