#!/usr/bin/env bash
# make test: unit, integration and acceptance tests, on the embedded default
# and on the real stack. The real stack (system libvirtd/virtlogd, a private
# Open vSwitch) is started here if it is not running and stopped afterwards by
# PID; a libvirtd someone else started is used and left alone.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

export CHECKPOINT_DISABLE=1
export TF_ACC=1
export TF_ACC_TERRAFORM_PATH="$(scripts/terraform-path.sh)"
export KVM_HOSTD_BIN="$root/bin/kvm-hostd"
export KVM_PROVIDER_BIN="$root/bin/terraform-provider-kvm"
# One libvirtd serves every test package of the run (see internal/realstack).
export KVM_REALSTACK_KEEP=1
export KVM_TEST_REALSTACK=1

# libvirt attaches VM NICs with ovs-vsctl on the default socket, so when no
# Open vSwitch runs there, the tests' own instance takes the default location
# (/run/openvswitch) and real VMs reach it; otherwise it gets a private
# directory and the running one is left alone.
if [[ -S /run/openvswitch/db.sock ]]; then
	ovs_dir="$(mktemp -d /tmp/kvm-test-ovs.XXXXXX)"
	chmod 755 "$ovs_dir"
	remove_ovs_dir=1
else
	remove_ovs_dir=$([[ -d /run/openvswitch ]] && echo 0 || echo 1)
	ovs_dir=/run/openvswitch
	mkdir -p "$ovs_dir"
fi
stop_stack() {
	local rc=$?
	for pidfile in "$ovs_dir"/ovs-vswitchd.pid "$ovs_dir"/ovsdb-server.pid; do
		if [[ -f "$pidfile" ]]; then
			pid="$(cat "$pidfile")"
			kill -TERM "$pid" 2>/dev/null || true
			for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		fi
	done
	if [[ "$remove_ovs_dir" == 1 ]]; then
		rm -rf "$ovs_dir"
	else
		rm -f "$ovs_dir"/{conf.db,.conf.db.~lock~,db.sock,ovsdb-server.ctl,ovs-vswitchd.ctl,ovsdb-server.pid,ovs-vswitchd.pid,ovsdb-server.log,ovs-vswitchd.log}
	fi
	scripts/realstack-down.sh || true
	exit "$rc"
}
trap stop_stack EXIT

echo "== starting the real stack"
while IFS='=' read -r k v; do
	export "$k=$v"
	echo "   $k=$v"
done < <(go run ./internal/realstack/cmd/realstack-up --ovs-dir "$ovs_dir")

echo "== go test ./... (unit, integration, acceptance; embedded default and real stack)"
start=$(date +%s)
go test -count=1 -timeout "${TEST_TIMEOUT:-60m}" ./... 2>&1 | grep -v '^\s*time=' | grep -Ev '^(=== (RUN|PAUSE|CONT))' || { echo "tests failed" >&2; exit 1; }
echo "== tests passed in $(($(date +%s) - start)) s"
