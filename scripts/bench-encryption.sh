#!/usr/bin/env bash
# Disk encryption throughput, for make bench (scripts/bench.sh calls it):
# one real guest (scripts/guest-image.sh's image) with an encrypted (LUKS
# qcow2) and a plain data disk runs dd with direct I/O on each, several
# rounds; prints a markdown table of the median write and read throughput,
# their spread, and the encrypted/plain ratio, and writes it to
# .cache/bench/encryption.md (or $1).
#
# It runs the benchmark as a test on the real stack (scripts/test.sh starts
# and stops it; the guest and its kvm-hostd live in a network namespace
# and are removed at the end, also on failure).
#
# Environment: BENCH_ENC_ROUNDS (5). make bench skips it with BENCH_SKIP_ENCRYPTION=1.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
out="${1:-$root/.cache/bench/encryption.md}"
mkdir -p "$(dirname "$out")"
rm -f "$out"
log="$(dirname "$out")/encryption.log"

[[ -x bin/kvm-hostd && -x bin/terraform-provider-kvm ]] || make build >&2
echo "bench-encryption: one guest, ${BENCH_ENC_ROUNDS:-5} rounds of dd on an encrypted and a plain disk (log: $log)" >&2
if ! KVM_TEST_LOG="$(dirname "$out")/encryption-test.json" KVM_BENCH_ENCRYPTION=1 KVM_BENCH_ENCRYPTION_ROUNDS="${BENCH_ENC_ROUNDS:-5}" KVM_BENCH_ENCRYPTION_OUT="$out" \
	scripts/test.sh ./provider/kvm -run '^TestEncryptionThroughputBench$' -v -count=1 >"$log" 2>&1; then
	echo "bench-encryption: failed; the end of $log:" >&2
	tail -n 40 "$log" >&2
	exit 1
fi
cat "$out"
