#!/usr/bin/env bash
# make bench: the provider against the raw libvirt floor on one real host
# (qemu:///system), as specified in README.md's "Performance" section.
#
# For N in 10 and 30, ROUNDS rounds (median reported) of:
#   terraform apply -auto-approve      (base + N linked clones + N running VMs)
#   terraform plan -detailed-exitcode  (no-op: must exit 0)
#   terraform destroy -auto-approve
# at terraform's default -parallelism=10, plus the same at -parallelism=30
# for N=30; next to internal/bench/rawfloor (the same libvirt calls made
# directly by 10 goroutines). Also: linked-clone time on a 64 MiB vs a
# 4 GiB base (raw libvirt and through kvm-hostd), peak RSS of the provider
# and of kvm-hostd, and the placement engine's benchmark.
#
# Prints a markdown table and writes it to .cache/bench/results.md. Everything
# it starts or creates is removed at the end, also on failure: kvm-hostd by
# PID, domains and volumes by their bench prefixes, the pool directory, and
# libvirtd/virtlogd only if this run's realstack-up started them.
#
# Environment: BENCH_NS ("10 30"), BENCH_ROUNDS (3), BENCH_ROOT
# (/var/lib/kvm-hostd-bench), BENCH_SKIP_PLACEMENT=1, BENCH_HOSTD_LOG_LEVEL
# (warn; info logs every request with its phases to .cache/bench/hostd.log),
# and scripts/bench-scale.sh's (BENCH_SKIP_SCALE=1 skips it).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

ns=(${BENCH_NS:-10 30})
rounds="${BENCH_ROUNDS:-3}"
bench_root="${BENCH_ROOT:-/var/lib/kvm-hostd-bench}"
uri="qemu:///system"
tf_prefix="tfbench"
raw_prefix="rawfloor"
clone_prefix="hostdclone"
out_dir="$root/.cache/bench"
mkdir -p "$out_dir"
log="$out_dir/bench.log"
: >"$log"

export CHECKPOINT_DISABLE=1
export TF_IN_AUTOMATION=1
tf="$(scripts/terraform-path.sh)"
export TF_CLI_CONFIG_FILE="$(scripts/dev-terraformrc.sh)"
provider_bin="$root/bin/terraform-provider-kvm"

say() { echo "bench: $*" >&2; echo "bench: $*" >>"$log"; }

work="$(mktemp -d /tmp/kvm-bench.XXXXXX)"
hostd_pid=""
raw_pid=""
realstack_started=0
pool_preexisted=1

virsh_q() { virsh -q -c "$uri" "$@" 2>/dev/null; }

# Remove every domain and volume carrying one of our prefixes (a crashed
# round's leftovers included). Used at the start and at the end.
sweep() {
	local d p v
	for d in $(virsh_q list --all --name); do
		case "$d" in "$tf_prefix"-* | "$raw_prefix"-*)
			virsh_q destroy "$d" >/dev/null || true
			virsh_q undefine "$d" >/dev/null || true
			;;
		esac
	done
	for p in $(virsh_q pool-list --name); do
		# Clones before bases: a base cannot go while a clone uses it (kvm-hostd's
		# rule; libvirt itself would not care).
		for v in $(virsh_q vol-list "$p" | awk '{print $1}' | sort -r); do
			case "$v" in "$tf_prefix"-* | "$raw_prefix"-* | "$clone_prefix"-*)
				virsh_q vol-delete --pool "$p" "$v" >/dev/null || true
				;;
			esac
		done
	done
}

cleanup() {
	local rc=$?
	set +e
	trap - EXIT INT TERM
	if [[ -n "$raw_pid" ]] && kill -0 "$raw_pid" 2>/dev/null; then
		kill -TERM "$raw_pid" 2>/dev/null; wait "$raw_pid" 2>/dev/null
	fi
	if [[ -f "$work/tf/terraform.tfstate" ]] && [[ -n "$hostd_pid" ]] && kill -0 "$hostd_pid" 2>/dev/null; then
		if [[ "$(cd "$work/tf" && "$tf" state list 2>/dev/null | wc -l)" != 0 ]]; then
			say "cleanup: terraform destroy"
			(cd "$work/tf" && "$tf" destroy -auto-approve -input=false -no-color -var "n=0" >>"$log" 2>&1)
		fi
	fi
	if [[ -n "$hostd_pid" ]]; then
		kill -TERM "$hostd_pid" 2>/dev/null
		wait "$hostd_pid" 2>/dev/null
	fi
	sweep
	# The pool kvm-hostd defined, if it was ours and nothing else is left in it.
	if ((pool_preexisted == 0)); then
		local path
		path="$(virsh_q pool-dumpxml default | sed -n 's:.*<path>\(.*\)</path>.*:\1:p' | head -n1)"
		if [[ "$path" == "$bench_root/pool" ]] && [[ -z "$(virsh_q vol-list default)" ]]; then
			virsh_q pool-destroy default >/dev/null
			virsh_q pool-undefine default >/dev/null
		fi
	fi
	# rmdir removes only empty directories: anyone else's volumes stay.
	rmdir "$bench_root/raw" "$bench_root/pool" "$bench_root" 2>/dev/null
	if ((realstack_started == 1)); then
		scripts/realstack-down.sh >>"$log" 2>&1
	fi
	if ((rc != 0)); then
		echo "bench failed (exit $rc); log: $log" >&2
		tail -n 30 "$work/hostd.log" 2>/dev/null >&2
	fi
	# Kept for reading: with BENCH_HOSTD_LOG_LEVEL=info every request's
	# phases (lock, define, start, ...) are in it.
	cp "$work/hostd.log" "$out_dir/hostd.log" 2>/dev/null
	rm -rf "$work"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[[ "${BENCH_SKIP_ENCRYPTION:-0}" == 1 ]] || scripts/bench-encryption.sh "$out_dir/encryption.md" # first: it starts and stops its own real stack
# --- real stack ------------------------------------------------------------
pidfile=/run/libvirt/realstack-libvirtd.pid
had_pidfile=0
[[ -f "$pidfile" ]] && had_pidfile=1
say "ensuring libvirtd ($uri)"
go run ./internal/realstack/cmd/realstack-up >>"$log" 2>&1
if ((had_pidfile == 0)) && [[ -f "$pidfile" ]]; then
	realstack_started=1
fi
sweep

say "building the bench helpers"
go build -o "$work/rawfloor" ./internal/bench/rawfloor
go build -o "$work/hostdclone" ./internal/bench/hostdclone

# QEMU runs as libvirt-qemu: the pool directory and every parent must be
# traversable (0755).
mkdir -p "$bench_root/pool" "$bench_root/raw"
chmod 755 "$bench_root" "$bench_root/pool" "$bench_root/raw"
d="$bench_root"
while [[ "$d" != / ]]; do d="$(dirname "$d")"; chmod o+x "$d"; done

if ! virsh_q pool-info default >/dev/null; then
	pool_preexisted=0
fi
pool_note=""
if ((pool_preexisted == 1)); then
	pool_path="$(virsh_q pool-dumpxml default | sed -n 's:.*<path>\(.*\)</path>.*:\1:p' | head -n1)"
	if [[ "$pool_path" != "$bench_root/pool" ]]; then
		# kvm-hostd uses an existing pool named "default" as it is.
		pool_note="kvm-hostd used libvirt's existing pool \"default\" at $pool_path"
		say "$pool_note"
	fi
fi

# --- kvm-hostd --------------------------------------------------------------
# kvm-hostd refuses a token file others can read, and tokens under 16 bytes.
token="bench-$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
(umask 077 && echo "$token" >"$work/token")
export KVM_TOKEN="$token"
# Admission control is not what is measured, and it counts every domain of
# this libvirt (other users' too): 30 one-vCPU VMs on a 2-core host need a
# vCPU overcommit far above the default 4.
overcommit=1000
bin/kvm-hostd --name bench --listen 127.0.0.1:0 --libvirt-uri "$uri" --ovsdb embedded \
	--pool-dir "$bench_root/pool" --token-file "$work/token" \
	--cpu-overcommit "$overcommit" --memory-overcommit 4 --log-format text --log-level "${BENCH_HOSTD_LOG_LEVEL:-warn}" \
	>"$work/hostd.out" 2>"$work/hostd.log" &
hostd_pid=$!
url=""
for _ in $(seq 300); do
	url="$(sed -n 's/.* listening on //p' "$work/hostd.out")"
	[[ -n "$url" ]] && break
	kill -0 "$hostd_pid" 2>/dev/null || { echo "kvm-hostd exited:" >&2; cat "$work/hostd.log" >&2; exit 1; }
	sleep 0.1
done
[[ -n "$url" ]] || { echo "kvm-hostd did not start" >&2; exit 1; }
export KVM_HOSTS="bench=$url"
virt_type="$(curl -fsS -H "Authorization: Bearer $token" "$url/v1/host" | sed -n 's/.*"hypervisor_type": *"\([a-z]*\)".*/\1/p')" || true
say "kvm-hostd (pid $hostd_pid) at $url"

mkdir -p "$work/tf"
cp examples/bench/main.tf "$work/tf/"
cd "$work/tf"

# --- helpers ----------------------------------------------------------------
median() { sort -g | awk '{a[NR]=$1} END {if (NR==0) {print "nan"} else if (NR%2) {print a[(NR+1)/2]} else {print (a[NR/2]+a[NR/2+1])/2}}'; }
now() { date +%s.%N; }

# Peak RSS (VmHWM, kB) of the provider processes terraform starts: poll the
# children of terraform every 50 ms and keep the highest VmHWM seen.
sample_provider_rss() {
	local tfpid="$1" outfile="$2" max=0 c exe hwm
	while kill -0 "$tfpid" 2>/dev/null; do
		for c in $(cat /proc/"$tfpid"/task/*/children 2>/dev/null); do
			exe="$(readlink /proc/"$c"/exe 2>/dev/null)" || continue
			[[ "$exe" == "$provider_bin" ]] || continue
			hwm="$(awk '/^VmHWM:/ {print $2}' /proc/"$c"/status 2>/dev/null)" || continue
			[[ -n "$hwm" ]] && ((hwm > max)) && max=$hwm
		done
		echo "$max" >"$outfile"
		sleep 0.05
	done
}

provider_peak_kb=0
# tf_timed NAME ARGS...: runs terraform, sets TF_T to its wall time in
# seconds and records the provider's peak RSS; the exit status is terraform's.
TF_T=""
tf_timed() {
	local name="$1"
	shift
	local start end rc hwm
	start="$(now)"
	"$tf" "$@" -input=false -no-color >"$work/$name.out" 2>&1 &
	local pid=$!
	sample_provider_rss "$pid" "$work/$name.rss" &
	local spid=$!
	set +e
	wait "$pid"
	rc=$?
	set -e
	end="$(now)"
	wait "$spid" 2>/dev/null || true
	hwm="$(cat "$work/$name.rss" 2>/dev/null || echo 0)"
	((hwm > provider_peak_kb)) && provider_peak_kb=$hwm
	cat "$work/$name.out" >>"$log"
	TF_T="$(echo "$end - $start" | bc)"
	return "$rc"
}

declare -A T # T[key]=space-separated samples

run_round() { # N PARALLELISM ROUND
	local n="$1" par="$2" r="$3" key="n$1_p$2" rc
	say "N=$n parallelism=$par round $r: apply"
	tf_timed "apply-$key-$r" apply -auto-approve -parallelism="$par" -var "n=$n" || {
		echo "terraform apply failed (N=$n):" >&2; tail -n 40 "$work/apply-$key-$r.out" >&2; exit 1; }
	T[apply_$key]+="$TF_T "
	say "  apply ${TF_T}s"
	rc=0
	tf_timed "plan-$key-$r" plan -detailed-exitcode -parallelism="$par" -var "n=$n" || rc=$?
	if ((rc != 0)); then
		echo "the no-op plan (N=$n) exited $rc, not 0 (empty):" >&2
		tail -n 60 "$work/plan-$key-$r.out" >&2
		exit 1
	fi
	T[plan_$key]+="$TF_T "
	say "  no-op plan ${TF_T}s"
	tf_timed "destroy-$key-$r" destroy -auto-approve -parallelism="$par" -var "n=$n" || {
		echo "terraform destroy failed (N=$n):" >&2; tail -n 40 "$work/destroy-$key-$r.out" >&2; exit 1; }
	T[destroy_$key]+="$TF_T "
	say "  destroy ${TF_T}s"
}

raw_round() { # N ROUND
	local n="$1" r="$2" line k v
	say "raw floor N=$n round $r"
	"$work/rawfloor" -uri "$uri" -pool "$bench_root/raw" -n "$n" -workers 10 -prefix "$raw_prefix" >"$work/raw.out" 2>>"$log" &
	raw_pid=$!
	wait "$raw_pid"
	raw_pid=""
	while read -r line k v; do
		[[ "$line" == RESULT ]] || continue
		case "$k" in create_s | read_s | teardown_s) T[raw_${k%_s}_n$n]+="$v " ;; esac
	done <"$work/raw.out"
	say "  $(grep -E 'create_s|read_s|teardown_s' "$work/raw.out" | tr '\n' ' ')"
}

# --- the runs ---------------------------------------------------------------
# No `terraform init`: dev_overrides point kvmfleet/kvm at bin/.
# Rounds interleave the raw floor and the provider, so both see the same
# background load.
load_start="$(cut -d' ' -f1-3 /proc/loadavg)"
for n in "${ns[@]}"; do
	for r in $(seq "$rounds"); do
		raw_round "$n" "$r"
		run_round "$n" 10 "$r"
		if ((n >= 30)); then run_round "$n" 30 "$r"; fi
	done
done
load_end="$(cut -d' ' -f1-3 /proc/loadavg)"

say "linked-clone time vs base size"
"$work/rawfloor" -uri "$uri" -pool "$bench_root/raw" -clone-bench -clone-samples 7 -prefix "$raw_prefix" >"$work/clone.out" 2>>"$log"
"$work/hostdclone" -endpoint "$url" -token "$token" -samples 7 -prefix "$clone_prefix" >>"$work/clone.out" 2>>"$log"
declare -A C
while read -r line k v; do [[ "$line" == RESULT ]] && C[$k]="$v"; done <"$work/clone.out"

hostd_peak_kb="$(awk '/^VmHWM:/ {print $2}' /proc/"$hostd_pid"/status)"

cd "$root"
placement_out=""
if [[ "${BENCH_SKIP_PLACEMENT:-0}" != 1 ]]; then
	say "placement engine benchmark"
	placement_out="$(go test -run '^$' -bench . -benchmem ./internal/placement/ 2>&1)"
	echo "$placement_out" >>"$log"
fi

# --- the table --------------------------------------------------------------
med() { tr ' ' '\n' <<<"${T[$1]:-}" | grep -v '^$' | median; }
fmt_s() { [[ "$1" == nan || -z "$1" ]] && { echo "–"; return; }; printf '%.2f s' "$1"; }
fmt_ms() { [[ "$1" == nan || -z "$1" ]] && { echo "–"; return; }; printf '%.0f ms' "$(echo "$1 * 1000" | bc -l)"; }
ratio() { [[ "$1" == nan || "$2" == nan || -z "$1" || -z "$2" ]] && { echo "–"; return; }; printf '%.2f×' "$(echo "$1 / $2" | bc -l)"; }
samples() { tr ' ' '\n' <<<"${T[$1]:-}" | grep -v '^$' | xargs printf '%.1f / ' | sed 's: / $::'; }

{
	echo "### kvm-hostd bench, $(date -u +%Y-%m-%d) on $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), domain type \`${virt_type:-?}\` ($([[ -r /dev/kvm ]] && echo "KVM available" || echo "no KVM: TCG"))"
	echo
	echo "One kvm-hostd on \`$uri\` (ovsdb embedded), Terraform $("$tf" version -json | sed -n 's/.*"terraform_version": *"\([^"]*\)".*/\1/p'), each VM 64 MiB / 1 vCPU / running on a linked clone of one 64 MiB qcow2 base; \`shutdown_timeout = 0\` (the VMs have no OS to answer ACPI, so destroy powers them off at once). Median of $rounds rounds (samples in brackets). Raw floor: \`internal/bench/rawfloor\`, the same libvirt calls (volume create with backing store, define, start; destroy, undefine, delete) from 10 goroutines on one libvirt connection."
	echo
	echo "| N | step | provider | raw floor | ratio |"
	echo "|---|---|---|---|---|"
	for n in "${ns[@]}"; do
		for par in 10 30; do
			((par == 30 && n < 30)) && continue
			key="n${n}_p${par}"
			a="$(med "apply_$key")"; p="$(med "plan_$key")"; d="$(med "destroy_$key")"
			rc="$(med "raw_create_n$n")"; rr="$(med "raw_read_n$n")"; rt="$(med "raw_teardown_n$n")"
			echo "| $n | apply (-parallelism=$par) | $(fmt_s "$a") [$(samples "apply_$key")] | $(fmt_s "$rc") create | $(ratio "$a" "$rc") |"
			echo "| $n | no-op plan, $((2 * n + 1)) resources (-parallelism=$par) | $(fmt_s "$p") [$(samples "plan_$key")] | $(fmt_ms "$rr") read-back | $(ratio "$p" "$rr") |"
			echo "| $n | destroy (-parallelism=$par) | $(fmt_s "$d") [$(samples "destroy_$key")] | $(fmt_s "$rt") teardown | $(ratio "$d" "$rt") |"
		done
	done
	# Issue 17's apply goal, next to its result.
	a30="$(med apply_n30_p10)"; rc30="$(med raw_create_n30)"
	if [[ "$a30" != nan && "$rc30" != nan && -n "$a30" && -n "$rc30" ]]; then
		r30="$(echo "$a30 / $rc30" | bc -l)"
		echo
		echo "| goal | result |"
		echo "|---|---|"
		echo "| apply within 1.3× of the raw floor at N=30, -parallelism=10 | $(printf '%.2f×' "$r30"): $(echo "$r30 <= 1.3" | bc -l | sed 's/1/met/;s/0/**missed**/') |"
	fi
	echo
	echo "| linked clone (median of 7) | 64 MiB base | 4 GiB base |"
	echo "|---|---|---|"
	echo "| raw libvirt (vol-create with backingStore) | $(fmt_ms "${C[clone_small_base_s]:-nan}") | $(fmt_ms "${C[clone_big_base_s]:-nan}") |"
	echo "| through kvm-hostd (PUT volume, read back) | $(fmt_ms "${C[hostd_clone_small_base_s]:-nan}") | $(fmt_ms "${C[hostd_clone_big_base_s]:-nan}") |"
	echo
	echo "| peak RSS (VmHWM) | |"
	echo "|---|---|"
	echo "| terraform-provider-kvm (max over all runs, sampled every 50 ms) | $((provider_peak_kb / 1024)) MiB |"
	echo "| kvm-hostd (whole bench) | $((${hostd_peak_kb:-0} / 1024)) MiB |"
	if [[ -n "$placement_out" ]]; then
		echo
		echo "Placement engine, 10,000 requests on 1,000 hosts (\`go test -run ^\$ -bench . ./internal/placement/\`):"
		echo
		echo "| benchmark | time/op | B/op | allocs/op |"
		echo "|---|---|---|---|"
		awk '/^Benchmark/ {name=$1; sub(/-[0-9]+$/, "", name); t=$3; u=$4; printf "| %s | %.1f ms | %s | %s |\n", name, (u=="ns/op" ? t/1e6 : t), $5, $7}' <<<"$placement_out"
	fi
	echo
	echo "Load average (1/5/15 min) at the start of the timed runs: $load_start; at the end: $load_end; other domains on this libvirt at the end: $(virsh_q list --name | grep -vc -e "^$tf_prefix-" -e "^$raw_prefix-" -e '^$')."
	if [[ -n "$pool_note" ]]; then
		echo
		echo "Note: $pool_note (--pool-dir applies only when kvm-hostd defines the pool)."
	fi
} | tee "$out_dir/results.md"
say "table written to $out_dir/results.md"

# --- scale (issue 17) ---------------------------------------------------------
# Plan time against state size and kvm-hostd under load, on simulated hosts
# (the test driver): no real stack needed, appended to the tables above.
"$root/scripts/bench-scale.sh" | tee -a "$out_dir/results.md"
