#!/usr/bin/env bash
# make demo / make demo-real: start kvm-hostd hosts on loopback, apply
# examples/quickstart with the provider built in bin/, show what was created
# and where, show that a second plan is empty, then clean up everything this
# script started (by PID).
#
#   scripts/demo.sh embedded   libvirt's test driver + in-memory OVSDB (no daemons, no root)
#   scripts/demo.sh real       real libvirtd/QEMU and a private Open vSwitch
set -euo pipefail
mode="${1:-embedded}"
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
hosts=(host-a host-b host-c)
labels=("zone=a" "zone=b" "zone=c")

export CHECKPOINT_DISABLE=1
tf="$(scripts/terraform-path.sh)"
export TF_CLI_CONFIG_FILE="$(scripts/dev-terraformrc.sh)"
export TF_IN_AUTOMATION=1

work="$(mktemp -d /tmp/kvm-demo.XXXXXX)"
chmod 755 "$work"
pids=()
cleanup() {
	local rc=$?
	if [[ -f "$work/tf/terraform.tfstate" ]] && [[ "${DEMO_DESTROYED:-0}" != 1 ]]; then
		(cd "$work/tf" && "$tf" destroy -auto-approve -input=false -no-color >/dev/null 2>&1) || true
	fi
	for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
	for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
	if [[ -n "${realstack_down:-}" ]]; then eval "$realstack_down" || true; fi
	if ((rc != 0)); then
		echo "demo failed; kvm-hostd logs:" >&2
		tail -n 20 "$work"/*.log >&2 2>/dev/null || true
	fi
	rm -rf "$work"
	exit "$rc"
}
trap cleanup EXIT

libvirt_uri="test:///default"
ovsdb="embedded"
pool_root="$work"
if [[ "$mode" == real ]]; then
	# shellcheck disable=SC1091
	source scripts/realstack-env.sh # sets libvirt_uri, ovsdb, pool_root, realstack_down
	# One kvm-hostd: here every host would share the one system libvirtd, and
	# kvm-hostd's pool is always named "default" — three hosts would put their
	# three golden-base disks in one pool and see each other's VMs. One host,
	# one web VM, on real QEMU and a real OVS bridge.
	hosts=(host-a)
	labels=("zone=a")
	export TF_VAR_web_count=1
fi

# kvm-hostd refuses a token file others can read, and tokens under 16 bytes.
token="demo-$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
(umask 077 && echo "$token" >"$work/token")
export KVM_TOKEN="$token"

kvm_hosts=""
for i in "${!hosts[@]}"; do
	h="${hosts[$i]}"
	mkdir -p "$pool_root/$h"
	bin/kvm-hostd --name "$h" --listen 127.0.0.1:0 --libvirt-uri "$libvirt_uri" --ovsdb "$ovsdb" \
		--pool-dir "$pool_root/$h/pool" --token-file "$work/token" --labels "${labels[$i]}" \
		--tunnel-ip "127.0.0.$((i + 11))" --audit-log "$work/$h-audit.log" --log-format text \
		>"$work/$h.out" 2>"$work/$h.log" &
	pids+=($!)
done
for i in "${!hosts[@]}"; do
	h="${hosts[$i]}"
	for _ in $(seq 100); do
		url="$(sed -n 's/.* listening on //p' "$work/$h.out")"
		[[ -n "$url" ]] && break
		kill -0 "${pids[$i]}" 2>/dev/null || { echo "kvm-hostd $h exited" >&2; exit 1; }
		sleep 0.1
	done
	[[ -n "$url" ]] || { echo "kvm-hostd $h did not start" >&2; exit 1; }
	echo "started kvm-hostd $h at $url ($libvirt_uri, ovsdb $ovsdb)"
	kvm_hosts+="${kvm_hosts:+,}$h=$url"
done
export KVM_HOSTS="$kvm_hosts"
export TF_VAR_demo_mode="$mode"

mkdir -p "$work/tf"
cp -r examples/quickstart/. "$work/tf/"
cd "$work/tf"
echo
echo "== terraform apply (examples/quickstart)"
start=$(date +%s.%N)
if ! "$tf" apply -auto-approve -input=false -no-color >"$work/apply.txt" 2>&1; then
	cat "$work/apply.txt" >&2
	exit 1
fi
grep -E '^(Apply complete|.*: Creation complete|Warning: [^P])' "$work/apply.txt" || true
printf 'apply took %.1f s\n' "$(echo "$(date +%s.%N) - $start" | bc)"
echo
echo "== what was created, and where"
"$tf" output -no-color
if [[ "$mode" == real ]]; then
	echo
	echo "== the VM's NIC on the real Open vSwitch ($ovsdb)"
	bridge="$("$tf" output -no-color -json network | sed -n 's/.*"bridge":"\([^"]*\)".*/\1/p')"
	vsctl=(ovs-vsctl --db="$ovsdb")
	echo "bridge $bridge: datapath_type=$("${vsctl[@]}" get Bridge "$bridge" datapath_type)"
	for port in $("${vsctl[@]}" list-ports "$bridge"); do
		echo "  port $port: tag=$("${vsctl[@]}" get Port "$port" tag)" \
			"type=$("${vsctl[@]}" get Interface "$port" type)" \
			"attached-mac=$("${vsctl[@]}" --if-exists get Interface "$port" external_ids:attached-mac)" \
			"vm-id=$("${vsctl[@]}" --if-exists get Interface "$port" external_ids:vm-id)"
	done
fi
echo
echo "== a second terraform plan"
set +e
"$tf" plan -detailed-exitcode -input=false -no-color >"$work/plan.txt" 2>&1
rc=$?
set -e
if ((rc == 0)); then
	echo "No changes: the second plan is empty."
else
	echo "the second plan is NOT empty (exit $rc):" >&2
	cat "$work/plan.txt" >&2
	exit 1
fi
echo
echo "== terraform destroy"
if ! "$tf" destroy -auto-approve -input=false -no-color >"$work/destroy.txt" 2>&1; then
	cat "$work/destroy.txt" >&2
	exit 1
fi
grep -E '^Destroy complete' "$work/destroy.txt"
DEMO_DESTROYED=1
