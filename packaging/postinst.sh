#!/bin/sh
# kvm-hostd package: after install or upgrade (deb "configure", rpm 1 or 2).
# Creates what the unit's ExecStart and the README expect and never replaces
# what exists: /etc/kvm-hostd (0700) with the API token (0600) and a
# self-signed TLS certificate (key 0600), the pool directory QEMU must be able
# to traverse (0755, as StateDirectoryMode in the unit), the log directory.
# The service is not enabled or started: its settings are the operator's.
set -e

case "$1" in
configure | 1 | 2) ;;
*) exit 0 ;;
esac

install -d -m 0700 -o root -g root /etc/kvm-hostd
install -d -m 0755 -o root -g root /var/lib/kvm-hostd /var/lib/kvm-hostd/pool /var/log/kvm-hostd

# The bearer token every client presents (kvm-hostd refuses one that others
# can read or that is shorter than 16 bytes).
if [ ! -e /etc/kvm-hostd/token ]; then
	(
		umask 077
		head -c 32 /dev/urandom | base64 >/etc/kvm-hostd/token.new
		mv /etc/kvm-hostd/token.new /etc/kvm-hostd/token
	)
	echo "kvm-hostd: created the API token /etc/kvm-hostd/token (give it to the provider as token or KVM_TOKEN)"
fi

# A self-signed certificate for this host's names and addresses, so the
# unit's --tls-cert/--tls-key work from the start; replace both files with a
# certificate from your CA (or point the provider's ca_file at this one).
if [ ! -e /etc/kvm-hostd/tls.crt ] && [ ! -e /etc/kvm-hostd/tls.key ]; then
	host="$(hostname)"
	san="DNS:$host,DNS:localhost,IP:127.0.0.1,IP:::1"
	fqdn="$(hostname -f 2>/dev/null || true)"
	if [ -n "$fqdn" ] && [ "$fqdn" != "$host" ]; then
		san="$san,DNS:$fqdn"
	fi
	for ip in $(hostname -I 2>/dev/null || true); do
		case "$ip" in
		127.* | ::1 | fe80:*) ;;
		*) san="$san,IP:$ip" ;;
		esac
	done
	(
		umask 077
		openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
			-days 3650 -subj "/CN=$host" -addext "subjectAltName=$san" \
			-keyout /etc/kvm-hostd/tls.key.new -out /etc/kvm-hostd/tls.crt.new 2>/dev/null
		chmod 0644 /etc/kvm-hostd/tls.crt.new
		mv /etc/kvm-hostd/tls.key.new /etc/kvm-hostd/tls.key
		mv /etc/kvm-hostd/tls.crt.new /etc/kvm-hostd/tls.crt
	)
	echo "kvm-hostd: created a self-signed certificate /etc/kvm-hostd/tls.crt for $san"
fi

if [ -d /run/systemd/system ]; then
	systemctl daemon-reload || true
	# An upgrade restarts a running agent on the new binary.
	if systemctl is-active --quiet kvm-hostd; then
		systemctl try-restart kvm-hostd || true
	fi
fi
exit 0
