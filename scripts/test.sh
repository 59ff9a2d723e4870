#!/usr/bin/env bash
# make test: unit, integration and acceptance tests, on the embedded default
# and on the real stack. The real stack (system libvirtd/virtlogd, a private
# Open vSwitch) is started here if it is not running and stopped afterwards by
# PID; a libvirtd someone else started is used and left alone. If it cannot
# start, the run fails with the reason. The output ends with
# "N passed, N failed, N skipped" (internal/testreport); with CI=true a
# skipped real-stack test fails the run, and so does anything the tests left
# on the system libvirt.
set -euo pipefail
# Arguments go to go test instead of ./... (e.g. ./backend/hypervisor -run Real).
# Without them (make test) the run also ends with make release-check.
go_test_args=("$@")
whole_suite=0
((${#go_test_args[@]})) || { go_test_args=(./...); whole_suite=1; }
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

export CHECKPOINT_DISABLE=1
export TF_ACC=1
export TF_ACC_TERRAFORM_PATH="$(scripts/terraform-path.sh)"
# Resource identity, `terraform query` and actions need a newer Terraform
# than the oldest one the suite runs on; their tests switch to this one.
export TF_ACC_TERRAFORM_MODERN_PATH="$(scripts/terraform-path.sh --modern)"
# A representative subset of the acceptance tests also runs under OpenTofu
# (provider/kvm/opentofu_test.go).
export TF_ACC_TOFU_PATH="$(scripts/tofu-path.sh)"
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
	# libvirt first (its domains' ports are on this Open vSwitch). Quiet: the
	# report above already ends the output and lists any leftovers.
	scripts/realstack-down.sh >/dev/null || true
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
	exit "$rc"
}
trap stop_stack EXIT

echo "== starting the real stack"
# Captured, not read through a process substitution: bash ignores the exit
# status of <(...), and a real stack that did not start must fail the run.
up_err="$(mktemp)"
if ! up_out="$(go run ./internal/realstack/cmd/realstack-up --ovs-dir "$ovs_dir" 2>"$up_err")"; then
	echo "make test: the real stack did not start:" >&2
	cat "$up_err" >&2
	rm -f "$up_err"
	exit 1
fi
rm -f "$up_err"
while IFS='=' read -r k v; do
	[[ -n "$k" ]] || continue
	export "$k=$v"
	echo "   $k=$v"
done <<<"$up_out"
if [[ -z "${KVM_TEST_LIBVIRT_URI:-}" || -z "${KVM_TEST_OVSDB:-}" ]]; then
	echo "make test: realstack-up did not report KVM_TEST_LIBVIRT_URI and KVM_TEST_OVSDB:" >&2
	echo "$up_out" >&2
	exit 1
fi

# Objects of an earlier run that crashed (or of tests run by hand) would
# poison this one: remove what is provably the tests' own.
echo "== removing leftovers of earlier test runs from $KVM_TEST_LIBVIRT_URI"
go run ./internal/realstack/cmd/realstack-sweep -uri "$KVM_TEST_LIBVIRT_URI"

# go test runs under testreport, not in a pipeline: its exit status is
# judged with the events. The report ends with "N passed, N failed, N
# skipped"; with CI=true a skipped real-stack test fails the run. The last
# check proves the run left nothing on the system libvirt.
go build -o bin/testreport ./internal/testreport/cmd/testreport
echo "== go test ${go_test_args[*]} (unit, integration, acceptance; embedded default and real stack)"
# make release-check runs while the real stack is still up (its smoke test
# starts the packaged kvm-hostd on the system libvirt), after the tests, so
# nothing else uses that libvirt meanwhile, and before the leftovers check.
# KVM_TEST_RELEASE_CHECK=0 leaves it out, =1 adds it to a partial run.
checks=()
if [[ "${KVM_TEST_RELEASE_CHECK:-$whole_suite}" == 1 ]]; then
	checks+=(-check "make release-check=scripts/release-check.sh")
fi
set +e
bin/testreport "${checks[@]}" \
	-check "nothing left on $KVM_TEST_LIBVIRT_URI=go run ./internal/realstack/cmd/realstack-sweep -check -uri '$KVM_TEST_LIBVIRT_URI'" \
	-- go test -json -count=1 -timeout "${TEST_TIMEOUT:-60m}" "${go_test_args[@]}"
rc=$?
set -e
exit "$rc"
