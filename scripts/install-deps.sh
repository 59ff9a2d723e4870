#!/usr/bin/env bash
# Install everything `make test` needs: the Debian packages for libvirt/QEMU/Open vSwitch
# (cgo build of kvm-hostd and the real-stack tests) and a terraform binary for the
# acceptance tests.
#
# Idempotent and silent when everything is already present (dpkg-query + command -v
# only, well under a second), so it can run at the start of every CI job and `make test`.
# Package scripts do not start services here (no systemd); internal/realstack starts
# the daemons the tests need.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

packages=(
	libvirt-dev libvirt-daemon-system libvirt-clients
	qemu-system-x86 qemu-utils
	openvswitch-switch dnsmasq-base
	iproute2 util-linux # ip netns, nsenter/unshare/flock for multi-host tests
	iputils-ping        # port-security test: real traffic between VM ports
	pkg-config gcc make # cgo for libvirt.org/go/libvirt
	ovmf                # UEFI VMs (firmware = "efi", secure_boot): libvirt's firmware descriptors
	swtpm swtpm-tools   # emulated TPMs (kvm_vm.tpm)
	zip unzip curl gpg  # make release/release-check: registry zips, healthz, signature
	openssl             # the kvm-hostd package depends on it (postinst's certificate)
	# rbd pools: QEMU's rbd block driver, libvirt's rbd storage backend, and the
	# one-node Ceph (mon, mgr, memstore osd; rbd/ceph tools) internal/realstack
	# starts for the tests. A libvirtd that was running before the rbd driver was
	# installed must be restarted to load it (realstack-up does that for the one
	# it started; namespace hosts start their own).
	qemu-block-extra libvirt-daemon-driver-storage-rbd
	ceph-mon ceph-mgr ceph-osd ceph-common
)
# --guest-image: also what scripts/guest-image.sh builds the image with (only
# then, so plain `make test` stays lean).
if [[ "${1:-}" == --guest-image ]]; then
	packages+=(mmdebstrap e2fsprogs dosfstools mtools fdisk grub-pc-bin)
fi

# One dpkg-query for all packages keeps the warm path fast; a package dpkg has never
# heard of is simply missing.
missing_packages() {
	local installed
	installed="$(dpkg-query -W -f='${Package} ${db:Status-Status}\n' "${packages[@]}" 2>/dev/null || true)"
	local pkg
	for pkg in "${packages[@]}"; do
		[[ $'\n'"$installed"$'\n' == *$'\n'"$pkg installed"$'\n'* ]] || echo "$pkg"
	done
}

# apt-get as root; env inside sudo because sudo resets the environment.
apt_get() {
	local sudo=()
	[[ "$(id -u)" -eq 0 ]] || sudo=(sudo)
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "$@"
}

# Not `mapfile < <(...)`: bash ignores a process substitution's exit status.
missing_list="$(missing_packages)"
missing=()
[[ -z "$missing_list" ]] || mapfile -t missing <<<"$missing_list"
if ((${#missing[@]} > 0)); then
	echo "install-deps: installing ${missing[*]}" >&2
	# A fresh image has empty package lists; refresh only then (or if install fails
	# because the lists are stale), since `apt-get update` is the slow network part.
	if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
		apt_get update -qq
	fi
	if ! apt_get install -y -qq --no-install-recommends "${missing[@]}" >&2; then
		apt_get update -qq
		apt_get install -y -qq --no-install-recommends "${missing[@]}" >&2
	fi
fi

# Without udev (no systemd here) a /dev/kvm node keeps the kernel's root-only
# 0600 mode. QEMU runs as libvirt-qemu, so libvirt then sees KVM while probing
# as root but not when starting a domain, re-probes QEMU on every call (seconds
# per define) and cannot use KVM at all. Give the node the mode Debian's udev
# rule gives it (root:kvm 0660); machines without /dev/kvm keep TCG.
if [[ -c /dev/kvm ]] && getent group kvm >/dev/null && [[ "$(id -u)" -eq 0 ]]; then
	if [[ "$(stat -c '%G %a' /dev/kvm)" != "kvm 660" && "$(stat -c '%a' /dev/kvm)" != 666 ]]; then
		chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
	fi
fi

# Resolves terraform on PATH (>= 1.5) or builds it into .cache/bin; the path itself is
# asked for again by the Makefile, so only fail here if none can be had.
"$repo_root/scripts/terraform-path.sh" >/dev/null
