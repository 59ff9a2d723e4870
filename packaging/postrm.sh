#!/bin/sh
# kvm-hostd package: after removal. Purge (deb) deletes what postinst
# generated (token, certificate) and the directories if they are empty; VM
# disks in the pool directory and logs are never deleted.
set -e

if [ -d /run/systemd/system ]; then
	systemctl daemon-reload || true
fi

case "$1" in
purge) ;;
*) exit 0 ;;
esac

rm -f /etc/kvm-hostd/token /etc/kvm-hostd/tls.crt /etc/kvm-hostd/tls.key
for d in /etc/kvm-hostd /var/lib/kvm-hostd/pool /var/lib/kvm-hostd /var/log/kvm-hostd; do
	rmdir "$d" 2>/dev/null || true
done
exit 0
