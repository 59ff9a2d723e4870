#!/usr/bin/env bash
# make demo / make demo-real: start kvm-hostd hosts on loopback, apply an
# example with the provider built in bin/, show what was created and where,
# show that a second plan is empty, then clean up everything this script
# started (by PID).
#
#   scripts/demo.sh embedded   examples/quickstart on libvirt's test driver +
#                              in-memory OVSDB (no daemons, no root)
#   scripts/demo.sh real       examples/guest on real libvirtd/QEMU and Open vSwitch:
#                              boots the guest image (scripts/guest-image.sh), waits
#                              until it answers SSH on its static address and shows
#                              how to log in. DEMO_HOLD=1 waits for Enter before
#                              cleaning up, to log in yourself.
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
	if [[ -n "${probe_port:-}" ]]; then
		ovs-vsctl --db="$ovsdb" --timeout=10 --if-exists del-port "$probe_port" >/dev/null 2>&1 || true
	fi
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
example=examples/quickstart
hostd_args=()
if [[ "$mode" == real ]]; then
	# shellcheck disable=SC1091
	source scripts/realstack-env.sh # sets libvirt_uri, ovsdb, pool_root, realstack_down
	# One kvm-hostd: here every host would share the one system libvirtd, and
	# kvm-hostd's pool is always named "default" — three hosts would put their
	# three golden-base disks in one pool and see each other's VMs. One host,
	# one web VM, on real QEMU and a real OVS bridge.
	hosts=(host-a)
	labels=("zone=a")
	example=examples/guest

	# The guest image, served to kvm-hostd (which fetches source_url itself)
	# from loopback, and a key pair for the guest's user debian.
	echo "== guest image (scripts/guest-image.sh; built on first use, then cached)"
	image="$(scripts/guest-image.sh | tail -n 1)"
	echo "$image ($(du -m "$image" | cut -f1) MiB)"
	mkdir -p "$work/www"
	ln -s "$image" "$work/www/guest.qcow2"
	/usr/bin/python3 -m http.server --bind 127.0.0.1 --directory "$work/www" 0 >"$work/http.out" 2>"$work/http.log" &
	pids+=($!)
	for _ in $(seq 100); do
		http_port="$(sed -n 's/.* port \([0-9]*\).*/\1/p' "$work/http.out")"
		[[ -n "$http_port" ]] && break
		sleep 0.1
	done
	[[ -n "${http_port:-}" ]] || { echo "image server did not start" >&2; exit 1; }
	export TF_VAR_image_url="http://127.0.0.1:$http_port/guest.qcow2"
	ssh-keygen -q -t ed25519 -N '' -C kvm-demo -f "$work/id_ed25519"
	export TF_VAR_ssh_public_key="$(cat "$work/id_ed25519.pub")"
	hostd_args=(--fetch-allow 127.0.0.1/32)
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
		--tunnel-ip "127.0.0.$((i + 11))" --audit-log "$work/$h-audit.log" --log-format text "${hostd_args[@]}" \
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
cp -r "$example"/. "$work/tf/"
cd "$work/tf"
echo
echo "== terraform apply ($example)"
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
	bridge="$("$tf" output -raw bridge)"
	address="$("$tf" output -raw address)"
	vsctl=(ovs-vsctl --db="$ovsdb" --timeout=10)
	echo "bridge $bridge: datapath_type=$("${vsctl[@]}" get Bridge "$bridge" datapath_type)"
	for port in $("${vsctl[@]}" list-ports "$bridge"); do
		echo "  port $port: type=$("${vsctl[@]}" get Interface "$port" type)" \
			"attached-mac=$("${vsctl[@]}" --if-exists get Interface "$port" external_ids:attached-mac)" \
			"vm-id=$("${vsctl[@]}" --if-exists get Interface "$port" external_ids:vm-id)"
	done
	# This machine's way onto the guest's segment: an internal port on the
	# bridge with an address in the guest's subnet (removed before destroy).
	probe_port=kvmdemo0
	"${vsctl[@]}" --may-exist add-port "$bridge" "$probe_port" -- set Interface "$probe_port" type=internal
	for _ in $(seq 50); do ip link show "$probe_port" >/dev/null 2>&1 && break; sleep 0.1; done
	ip addr replace "${address%.*}.1/24" dev "$probe_port"
	ip link set "$probe_port" up
	echo
	echo "== the guest agent reported $address (wait_for_ip); waiting until it answers SSH"
	ssh_cmd=(ssh -i "$work/id_ed25519" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
		-o BatchMode=yes -o ConnectTimeout=5 -o LogLevel=ERROR "debian@$address")
	boot_start=$(date +%s)
	until out="$("${ssh_cmd[@]}" 'test -f /var/lib/cloud/instance/boot-finished && hostname && ip -4 -o addr show dev eth0' 2>/dev/null)"; do
		if (($(date +%s) - boot_start > 600)); then
			echo "the guest did not answer SSH within 10 minutes" >&2
			exit 1
		fi
		sleep 3
	done
	echo "guest answers SSH $(($(date +%s) - boot_start)) s after apply (cloud-init finished):"
	echo "  hostname: $(echo "$out" | sed -n 1p)"
	echo "  $(echo "$out" | sed -n 2p | awk '{print $2, $3, $4}')"
	echo
	echo "Log in (while the demo runs; the key is removed with the demo's files):"
	echo "  ssh -i $work/id_ed25519 -o UserKnownHostsFile=/dev/null debian@$address"
	if [[ "${DEMO_HOLD:-0}" == 1 ]]; then
		read -r -p "press Enter to clean up " _ || true
	fi
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
start=$(date +%s.%N)
if [[ -n "${probe_port:-}" ]]; then
	ovs-vsctl --db="$ovsdb" --timeout=10 --if-exists del-port "$probe_port"
	probe_port=""
fi
if ! "$tf" destroy -auto-approve -input=false -no-color >"$work/destroy.txt" 2>&1; then
	cat "$work/destroy.txt" >&2
	exit 1
fi
grep -E '^Destroy complete' "$work/destroy.txt"
printf 'destroy took %.1f s\n' "$(echo "$(date +%s.%N) - $start" | bc)"
DEMO_DESTROYED=1
