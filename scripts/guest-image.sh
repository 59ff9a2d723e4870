#!/usr/bin/env bash
# Build the guest image the real-guest tests and `make demo-real` boot: a small
# Debian 12 qcow2 with kernel, systemd, cloud-init (NoCloud), qemu-guest-agent and
# openssh-server that boots with BIOS (GRUB in the MBR gap) and with UEFI, Secure
# Boot included (Microsoft-signed shim -> Debian-signed GRUB -> signed kernel).
#
# Built from the configured apt sources without loop mounts: mmdebstrap unpacks the
# root file system into a directory, `mkfs.ext4 -d` and `mkfs.vfat` + mtools turn
# directories into partitions, and the disk is assembled as an ordinary file.
#
# Layout (msdos): p1 = ESP (vfat, type ef) with EFI/BOOT/BOOTX64.EFI = shim,
# grubx64.efi beside it and EFI/debian/grub.cfg (the signed GRUB's prefix);
# p2 = root ext4, with /boot/grub/grub.cfg for BIOS GRUB (boot.img in the MBR,
# core.img in the sectors before p1).
#
# Trimmed for boot time under TCG (no KVM), where every process start and every
# byte on the serial port is expensive: a small initramfs with only the drivers a
# root disk can sit behind, a quiet kernel, cloud-init limited to NoCloud and the
# modules a server guest here uses, and no periodic maintenance units.
#
# The image is cached in $KVM_GUEST_IMAGE_CACHE (default /var/cache/kvm-hostd-guest)
# under a hash of this script, so a second run costs nothing. The image's absolute
# path is the last line of the output. Needs root (mmdebstrap --mode=root).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache_dir="${KVM_GUEST_IMAGE_CACHE:-/var/cache/kvm-hostd-guest}"

suite=bookworm
disk_mib=2048 # virtual size; the qcow2 holds only what is written
esp_mib=64
# Everything the guest needs; the package list is part of this script and so of
# the cache key. dbus lets systemd-logind run, which turns the ACPI power
# button (kvm-hostd's graceful shutdown) into a clean poweroff.
packages=(
	linux-image-amd64 systemd-sysv udev dbus
	cloud-init qemu-guest-agent openssh-server
	ifupdown isc-dhcp-client iproute2 iputils-ping netbase
	e2fsprogs cloud-guest-utils procps zstd
)
# Boot loaders, unpacked on the build host (not installed in the guest).
boot_packages=(shim-signed grub-efi-amd64-signed)

key="$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-16)"
image="$cache_dir/debian-$suite-$key.qcow2"

if [[ -f "$image" ]]; then
	echo "$image"
	exit 0
fi

if [[ "$(id -u)" -ne 0 ]]; then
	echo "guest-image: building the image needs root (mmdebstrap --mode=root)" >&2
	exit 1
fi
"$repo_root/scripts/install-deps.sh" --guest-image

mkdir -p "$cache_dir"
# One build at a time; a waiting run finds the image the first one built.
exec 9>"$cache_dir/.lock"
flock 9
if [[ -f "$image" ]]; then
	echo "$image"
	exit 0
fi

work="$(mktemp -d "$cache_dir/build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
start=$SECONDS

root_uuid="$(cat /proc/sys/kernel/random/uuid)"
esp_serial="$(printf '%08X' $((RANDOM * 32768 + RANDOM)))"
# quiet: the kernel logs warnings and errors only; every console byte is an
# emulated UART write under TCG. The serial log still shows errors, systemd's
# failures and cloud-init's stages (its units write to journal+console), the
# login prompt and the kernel's "reboot: Power down". ttyS0 last: /dev/console.
cmdline="root=UUID=$root_uuid ro quiet console=tty0 console=ttyS0,115200n8"

# --- root file system -------------------------------------------------------
echo "guest-image: mmdebstrap $suite" >&2
exclude=(
	'/usr/share/doc/*' '/usr/share/man/*' '/usr/share/info/*' '/usr/share/locale/*'
	'/usr/share/lintian/*' '/usr/share/linda/*' '/usr/share/groff/*'
)
dpkg_opts=()
for p in "${exclude[@]}"; do dpkg_opts+=(--dpkgopt="path-exclude=$p"); done
dpkg_opts+=(--dpkgopt='path-include=/usr/share/doc/*/copyright')
dpkg_opts+=(--dpkgopt='path-include=/usr/share/locale/locale.alias')

include="$(
	IFS=,
	echo "${packages[*]}"
)"

# The initramfs only has to find an ext4 root on whichever disk bus the VM uses
# (virtio, virtio-scsi, sata, ide): MODULES=list instead of Debian's "most"
# (29 MiB, seconds to load and unpack under TCG). No swap, so no resume probe;
# the root has no fsck pass (see fstab). Written before the packages are
# installed, so the kernel's postinst builds the small initramfs once.
mkdir -p "$work/initramfs/conf.d" "$work/initramfs/modules.d"
cat >"$work/initramfs/conf.d/kvm-guest.conf" <<'EOF'
MODULES=list
RESUME=none
COMPRESS=zstd
EOF
printf '%s\n' virtio_pci virtio_blk virtio_scsi sd_mod ahci ata_piix ext4 \
	>"$work/initramfs/modules.d/kvm-guest"

mmdebstrap --mode=root --variant=minbase --verbose \
	--aptopt='APT::Install-Recommends "false"' \
	"${dpkg_opts[@]}" \
	--include="$include" \
	--setup-hook='mkdir -p "$1"/etc/initramfs-tools/conf.d "$1"/usr/share/initramfs-tools/modules.d' \
	--setup-hook="cp '$work/initramfs/conf.d/kvm-guest.conf' \"\$1\"/etc/initramfs-tools/conf.d/" \
	--setup-hook="cp '$work/initramfs/modules.d/kvm-guest' \"\$1\"/usr/share/initramfs-tools/modules.d/" \
	--customize-hook='rm -f "$1"/etc/ssh/ssh_host_*' \
	--customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/*' \
	"$suite" "$work/root" >&2

r="$work/root"
# Drivers no virtual machine here needs are most of the kernel's size.
kver="$(cd "$r/lib/modules" && ls | sort -V | tail -n 1)"
mods="$r/lib/modules/$kver/kernel"
rm -rf "$mods"/drivers/{gpu,media,infiniband,staging,bluetooth,isdn,iio,net/wireless,net/can} \
	"$mods"/{sound,net/wireless,net/mac80211,net/bluetooth}
find "$mods/drivers/net/ethernet" -mindepth 1 -maxdepth 1 ! -name intel -exec rm -rf {} +
chroot "$r" depmod "$kver"
# No fsck pass: ext4's journal makes the root consistent at mount, and a
# boot-time fsck (in the initramfs, then systemd-fsck-root) is on the critical
# path to the guest's address.
cat >"$r/etc/fstab" <<EOF
UUID=$root_uuid / ext4 errors=remount-ro 0 0
EOF
echo localhost >"$r/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$r/etc/hosts"
# Only the NoCloud seed is ever offered; probing other data sources costs boot
# time. Each module costs Python time under TCG, so the stages run what a seed
# from kvm-hostd or a user of this image uses: users and SSH keys, write_files,
# hostname, growing the root, bootcmd/runcmd/scripts, passwords, packages and
# power_state. The network config is applied by init-local regardless of
# modules. Growing the root moves to the config stage, which runs after the
# guest agent has started: off the path to the guest's address. Left out:
# locale/keyboard (no locales in the image; locale failed the config stage),
# apt sources, NTP, mounts, CA certs and the other clouds' agents.
# Ed25519 and ECDSA host keys only: an RSA key takes seconds to generate here.
cat >"$r/etc/cloud/cloud.cfg.d/90-kvm-hostd.cfg" <<'EOF'
datasource_list: [NoCloud, None]
ssh_genkeytypes: [ed25519, ecdsa]
cloud_init_modules:
  - bootcmd
  - write_files
  - set_hostname
  - update_hostname
  - update_etc_hosts
  - users_groups
  - ssh
cloud_config_modules:
  - growpart
  - resizefs
  - set_passwords
  - timezone
  - runcmd
cloud_final_modules:
  - package_update_upgrade_install
  - write_files_deferred
  - scripts_per_once
  - scripts_per_boot
  - scripts_per_instance
  - scripts_user
  - final_message
  - power_state_change
EOF
# Periodic maintenance a short-lived server guest never needs, and kernel
# interfaces nothing here mounts; each unit is work at boot on an emulated CPU.
# fstrim.timer stays (discard passes through to the host's image).
for unit in e2scrub_reap.service e2scrub_all.timer apt-daily.timer apt-daily-upgrade.timer \
	dpkg-db-backup.timer systemd-binfmt.service proc-sys-fs-binfmt_misc.automount \
	sys-kernel-debug.mount sys-kernel-tracing.mount sys-fs-fuse-connections.mount \
	modprobe@drm.service modprobe@dm_mod.service modprobe@loop.service \
	modprobe@efi_pstore.service modprobe@fuse.service modprobe@configfs.service \
	sys-kernel-config.mount; do
	ln -sf /dev/null "$r/etc/systemd/system/$unit"
done
# MODULES=list gives a few MiB; Debian's default is about 30.
initrd_mib=$(($(stat -c %s "$r/boot/initrd.img-$kver") >> 20))
if ((initrd_mib > 12)); then
	echo "guest-image: the initramfs has $initrd_mib MiB: MODULES=list was not applied" >&2
	exit 1
fi
# The kernel and initrd symlinks the GRUB configs name.
kernel="$(cd "$r/boot" && ls vmlinuz-* | sort -V | tail -n 1)"
initrd="initrd.img-${kernel#vmlinuz-}"
[[ -f "$r/boot/$initrd" ]] || {
	echo "guest-image: no $initrd in the root file system" >&2
	exit 1
}
grub_cfg="set timeout=0
search --no-floppy --fs-uuid --set=root $root_uuid
linux /boot/$kernel $cmdline
initrd /boot/$initrd
boot
"
mkdir -p "$r/boot/grub/i386-pc"
printf '%s' "$grub_cfg" >"$r/boot/grub/grub.cfg"
cp /usr/lib/grub/i386-pc/*.mod /usr/lib/grub/i386-pc/*.lst "$r/boot/grub/i386-pc/"

# --- boot loaders -------------------------------------------------------------
echo "guest-image: boot loaders" >&2
mkdir -p "$work/debs" "$work/boot"
(cd "$work/debs" && apt-get download -qq -o APT::Sandbox::User=root "${boot_packages[@]}" >&2)
for deb in "$work"/debs/*.deb; do dpkg-deb -x "$deb" "$work/boot"; done
shim="$work/boot/usr/lib/shim/shimx64.efi.signed"
grub_efi="$work/boot/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed"

# BIOS: core.img reads (hd0,msdos2)/boot/grub/grub.cfg; it has to fit in the
# sectors between the MBR and p1 (1 MiB).
grub-mkimage -O i386-pc -o "$work/core.img" -p '(hd0,msdos2)/boot/grub' \
	biosdisk part_msdos ext2 search search_fs_uuid normal configfile linux echo test
core_sectors=$((($(stat -c %s "$work/core.img") + 511) / 512))
if ((core_sectors > 2047)); then
	echo "guest-image: core.img is $core_sectors sectors, more than the 2047 before p1" >&2
	exit 1
fi

# ESP: shim as the removable-media path; shim loads grubx64.efi from its own
# directory, and the signed GRUB reads $prefix/grub.cfg = /EFI/debian/grub.cfg.
esp="$work/esp.img"
mkfs.vfat -C -F 32 -n EFI -i "$esp_serial" "$esp" $((esp_mib * 1024)) >/dev/null
printf '%s' "$grub_cfg" >"$work/grub.cfg"
export MTOOLS_SKIP_CHECK=1
mmd -i "$esp" ::/EFI ::/EFI/BOOT ::/EFI/debian
mcopy -i "$esp" "$shim" ::/EFI/BOOT/BOOTX64.EFI
mcopy -i "$esp" "$grub_efi" ::/EFI/BOOT/grubx64.efi
mcopy -i "$esp" "$shim" ::/EFI/debian/shimx64.efi
mcopy -i "$esp" "$grub_efi" ::/EFI/debian/grubx64.efi
mcopy -i "$esp" "$work/grub.cfg" ::/EFI/debian/grub.cfg

# --- disk ---------------------------------------------------------------------
echo "guest-image: assembling the disk" >&2
root_start=$(((1 + esp_mib) * 2048))
root_sectors=$((disk_mib * 2048 - root_start - 2048))
mkfs.ext4 -q -F -d "$r" -U "$root_uuid" -L root -E root_owner=0:0 \
	"$work/root.img" $((root_sectors / 2))k
disk="$work/disk.raw"
truncate -s "${disk_mib}M" "$disk"
sfdisk --quiet "$disk" <<EOF
label: dos
start=2048, size=$((esp_mib * 2048)), type=ef
start=$root_start, size=$root_sectors, type=83, bootable
EOF
dd if=/usr/lib/grub/i386-pc/boot.img of="$disk" bs=440 count=1 conv=notrunc status=none
dd if="$work/core.img" of="$disk" bs=512 seek=1 conv=notrunc status=none
dd if="$esp" of="$disk" bs=4M oflag=seek_bytes seek=$((2048 * 512)) conv=notrunc,sparse status=none
dd if="$work/root.img" of="$disk" bs=4M oflag=seek_bytes seek=$((root_start * 512)) conv=notrunc,sparse status=none
qemu-img convert -c -f raw -O qcow2 "$disk" "$work/image.qcow2"
chmod 0644 "$work/image.qcow2"
mv "$work/image.qcow2" "$image"
echo "guest-image: built in $((SECONDS - start)) s, $(du -m "$image" | cut -f1) MiB" >&2
echo "$image"
