# shellcheck shell=bash
# Sourced by scripts/demo.sh in real mode (make demo-real). Makes sure the real
# stack is up and sets what demo.sh needs:
#   libvirt_uri, ovsdb, pool_root  where kvm-hostd finds libvirt, OVS and its pool
#   realstack_down                 a command demo.sh evals on exit; it stops only
#                                  what this script started, by PID
#
# Open vSwitch must be the one on the default socket (/run/openvswitch): libvirt
# plugs VM NICs with ovs-vsctl, which talks to that socket. An OVS already running
# there is used as it is and left running; otherwise a private instance is started
# in /run/openvswitch and stopped afterwards by the PID files in that directory.
# libvirtd likewise: one that answers is used and left alone; one this script
# starts is stopped by scripts/realstack-down.sh (by realstack's PID files).

ovs_dir=/run/openvswitch
realstack_down=""

libvirt_was_up=0
if timeout 20 virsh -c qemu:///system version >/dev/null 2>&1; then
	libvirt_was_up=1
fi
ovs_was_up=0
if [[ -S "$ovs_dir/db.sock" ]] && timeout 10 ovs-vsctl --db="unix:$ovs_dir/db.sock" --timeout=5 show >/dev/null 2>&1; then
	ovs_was_up=1
fi

up_args=()
((ovs_was_up)) || up_args=(--ovs-dir "$ovs_dir")
if ! go run ./internal/realstack/cmd/realstack-up "${up_args[@]}" >/dev/null; then
	echo "realstack-env: could not start the real stack (scripts/install-deps.sh installs it)" >&2
	return 1
fi
# The demo's kvm-hostd defines libvirt's one pool named "default" at its own
# directory when there is none. A pool left behind survives libvirtd
# restarts (autostart) and every later kvm-hostd and test run would use the
# demo's directory: remove it on exit, first, while libvirtd still runs.
if ! timeout 20 virsh -c qemu:///system pool-info default >/dev/null 2>&1; then
	realstack_down+="if timeout 20 virsh -c qemu:///system pool-dumpxml default 2>/dev/null | grep -q '<path>/var/lib/kvm-hostd-demo/'; then "
	realstack_down+="virsh -c qemu:///system pool-destroy default >/dev/null 2>&1; virsh -c qemu:///system pool-undefine default >/dev/null 2>&1; fi; "
fi
# The demo's pool directories, once terraform destroy has emptied them (a
# file left in one is kept for a look).
realstack_down+="find /var/lib/kvm-hostd-demo -type f 2>/dev/null | grep -q . || rm -rf /var/lib/kvm-hostd-demo; "
if ((!ovs_was_up)); then
	realstack_down+="for f in $ovs_dir/ovs-vswitchd.pid $ovs_dir/ovsdb-server.pid; do [[ -f \$f ]] && kill -TERM \"\$(cat \$f)\" 2>/dev/null; done; "
fi
if ((!libvirt_was_up)); then
	# An absolute path: demo.sh evaluates this on exit from its terraform
	# directory, where a relative one failed silently and left libvirtd running.
	realstack_down+="\"$PWD/scripts/realstack-down.sh\" >/dev/null 2>&1; "
fi
echo "real stack: libvirtd $( ((libvirt_was_up)) && echo "already running (left alone)" || echo "started (stopped on exit)"), Open vSwitch at $ovs_dir $( ((ovs_was_up)) && echo "already running (used as is)" || echo "started (stopped on exit)")"

# A libvirtd that was already running may be shared with other runs (tests,
# benchmarks) whose domains count against host-a's admission: on a 2-core
# machine their vCPUs alone can fill cpus × 4. Admit more vCPUs per core here
# unless the caller chose a ratio (the demo's VMs are 1 vCPU / 64 MiB, TCG).
if ((libvirt_was_up)); then
	export KVM_HOSTD_CPU_OVERCOMMIT="${KVM_HOSTD_CPU_OVERCOMMIT:-64}"
fi

libvirt_uri="qemu:///system"
ovsdb="unix:$ovs_dir/db.sock"
pool_root=/var/lib/kvm-hostd-demo
# QEMU runs as libvirt-qemu: the pool directory and every parent must be traversable.
mkdir -p "$pool_root"
chmod 755 /var/lib "$pool_root"
