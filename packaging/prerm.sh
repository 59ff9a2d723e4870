#!/bin/sh
# kvm-hostd package: before removal (deb "remove", rpm 0); an upgrade keeps
# the agent running until postinst restarts it on the new binary.
set -e

case "$1" in
remove | 0) ;;
*) exit 0 ;;
esac

if [ -d /run/systemd/system ]; then
	systemctl disable --now kvm-hostd >/dev/null 2>&1 || true
fi
exit 0
