#!/usr/bin/env bash
# make release-check: prove a release installs and runs, on this machine.
#
#  1. `goreleaser check` validates .goreleaser.yml (a pinned goreleaser v2 that
#     builds with the machine's Go; that copy is not an approved release, so it
#     only checks);
#  2. a snapshot release (scripts/release.sh --snapshot) of the linux/amd64
#     provider archive and the kvm-hostd .deb/.rpm, and checks of its layout
#     (registry names, SHA256SUMS, manifest, package contents and scripts),
#     and `terraform init` / `tofu init` take the archive from a filesystem
#     mirror, as the README tells users without registry access;
#  3. `dpkg -i` of the .deb, the modes its postinst gave the directories,
#     token and key, `kvm-hostd --version`, then the unit's ExecStart line as
#     installed (with /etc/default/kvm-hostd sourced, %H as systemd expands
#     it) started as a process: it must answer /healthz over TLS with the
#     generated certificate, and stop cleanly on SIGTERM (by PID);
#  4. `dpkg --purge`, and anything the agent defined on the system libvirt is
#     removed, so the machine is left as it was found.
#
# ExecStart talks to qemu:///system and the Open vSwitch database on the
# default socket. When they are not up (make release-check on its own) they are
# started here with internal/realstack and stopped afterwards by PID; under
# scripts/test.sh they are already up. It uses the system libvirt: run it with
# the real-stack lock held (flock /tmp/kvm-real.lock make release-check).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

GORELEASER_VERSION=v2.17.1 # v2.18+ needs Go 1.27
unit=/usr/lib/systemd/system/kvm-hostd.service
uri=qemu:///system
start=$SECONDS

step() { printf '== release-check: %s (%ds)\n' "$*" "$((SECONDS - start))"; }
fail() {
	printf 'release-check: FAIL: %s\n' "$*" >&2
	exit 1
}

step "goreleaser $GORELEASER_VERSION check"
GOWORK=off GOFLAGS= go run "github.com/goreleaser/goreleaser/v2@$GORELEASER_VERSION" check --quiet ||
	fail ".goreleaser.yml is not valid for goreleaser v2"

step "snapshot release (linux/amd64)"
scripts/release.sh --snapshot --platforms linux/amd64
version="$(cat dist/VERSION)"
name=terraform-provider-kvm

step "layout of dist/ for $version"
zipf="dist/${name}_${version}_linux_amd64.zip"
[[ -f "$zipf" ]] || fail "missing $zipf"
[[ "$(unzip -Z1 "$zipf")" == "${name}_v${version}" ]] || fail "$zipf must hold just ${name}_v${version}: $(unzip -Z1 "$zipf" | tr '\n' ' ')"
cmp -s terraform-registry-manifest.json "dist/${name}_${version}_manifest.json" || fail "registry manifest missing or changed"
sums="dist/${name}_${version}_SHA256SUMS"
(cd dist && sha256sum --quiet -c "$(basename "$sums")") || fail "SHA256SUMS does not match"
for f in "$(basename "$zipf")" "${name}_${version}_manifest.json"; do
	grep -q "  $f\$" "$sums" || fail "$f is not in SHA256SUMS"
done
[[ ! -e "$sums.sig" ]] || fail "a snapshot must not be signed"
deb="$(ls dist/kvm-hostd_*_amd64.deb)"
rpm="$(ls dist/kvm-hostd-*.x86_64.rpm)"
[[ -s "$rpm" ]] || fail "no .rpm"
contents="$(dpkg-deb -c "$deb")"
for f in ./usr/bin/kvm-hostd ./usr/lib/systemd/system/kvm-hostd.service ./etc/default/kvm-hostd; do
	grep -q " $f\$" <<<"$contents" || fail "$deb lacks $f"
done
dpkg-deb -I "$deb" conffiles | grep -qx /etc/default/kvm-hostd || fail "/etc/default/kvm-hostd is not a conffile"
dpkg-deb -I "$deb" postinst >/dev/null || fail "$deb has no postinst"

# The archive installs the way the README tells users without registry
# access: copied as is into a filesystem mirror, `init` takes it (its name is
# the registry's) and the binary inside serves its schema. Under OpenTofu the
# mirror's host directory is registry.opentofu.org.
mirror_install() {
	local cli="$1" host="$2" work
	work="$(mktemp -d)"
	mkdir -p "$work/mirror/$host/kvmfleet/kvm" "$work/cfg"
	cp "$zipf" "$work/mirror/$host/kvmfleet/kvm/"
	printf 'provider_installation {\n  filesystem_mirror {\n    path = "%s"\n  }\n}\n' "$work/mirror" >"$work/cli.tfrc"
	# Lower case: both CLIs lower-case the version they read from the file
	# name and then compare it exactly with the constraint's
	# (0.0.1-SNAPSHOT-abc is found as 0.0.1-snapshot-abc).
	printf 'terraform {\n  required_providers {\n    kvm = { source = "kvmfleet/kvm", version = "= %s" }\n  }\n}\n' "${version,,}" >"$work/cfg/main.tf"
	if ! (cd "$work/cfg" && TF_CLI_CONFIG_FILE="$work/cli.tfrc" CHECKPOINT_DISABLE=1 "$cli" init -input=false -no-color >"$work/init.log" 2>&1); then
		cat "$work/init.log" >&2
		rm -rf "$work"
		fail "$(basename "$cli") init from a filesystem mirror holding $(basename "$zipf") failed"
	fi
	if ! (cd "$work/cfg" && TF_CLI_CONFIG_FILE="$work/cli.tfrc" CHECKPOINT_DISABLE=1 "$cli" providers schema -json 2>&1) |
		grep -q '"kvm_vm"'; then
		rm -rf "$work"
		fail "the provider from $(basename "$zipf") did not serve its schema to $(basename "$cli")"
	fi
	rm -rf "$work"
}
step "provider archive from a filesystem mirror (terraform, OpenTofu)"
mirror_install "$(scripts/terraform-path.sh)" registry.terraform.io
mirror_install "${TF_ACC_TOFU_PATH:-$(scripts/tofu-path.sh)}" registry.opentofu.org

if dpkg-query -W -f='${db:Status-Status}' kvm-hostd 2>/dev/null | grep -q installed; then
	fail "a kvm-hostd package is already installed here; release-check installs and purges its own"
fi

# The stack ExecStart needs, started only if missing, stopped by PID after.
started_libvirt=0 started_ovs=0 remove_ovs_dir=0 pool_existed=1 pid=""
ovs_dir=/run/openvswitch
# kvm-hostd defines (and autostarts) its "default" pool on the system
# libvirt; one it defined here goes again.
undefine_pool() {
	if [[ "$pool_existed" == 0 ]] && virsh -q -c "$uri" pool-info default >/dev/null 2>&1; then
		virsh -q -c "$uri" pool-destroy default >/dev/null 2>&1 || true
		virsh -q -c "$uri" pool-undefine default >/dev/null 2>&1 || true
	fi
}
cleanup() {
	local rc=$?
	if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
		kill -KILL "$pid" 2>/dev/null || true
	fi
	undefine_pool
	if dpkg-query -W -f='${db:Status-Status}' kvm-hostd 2>/dev/null | grep -q installed; then
		dpkg --purge kvm-hostd >/dev/null || rc=1
	fi
	if [[ "$started_ovs" == 1 ]]; then
		for f in "$ovs_dir"/ovs-vswitchd.pid "$ovs_dir"/ovsdb-server.pid; do
			[[ -f "$f" ]] || continue
			p="$(cat "$f")"
			kill -TERM "$p" 2>/dev/null || true
			for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
		done
		if [[ "$remove_ovs_dir" == 1 ]]; then
			rm -rf "$ovs_dir"
		else
			rm -f "$ovs_dir"/{conf.db,.conf.db.~lock~,db.sock,ovsdb-server.ctl,ovs-vswitchd.ctl,ovsdb-server.pid,ovs-vswitchd.pid,ovsdb-server.log,ovs-vswitchd.log}
		fi
	fi
	if [[ "$started_libvirt" == 1 ]]; then
		scripts/realstack-down.sh >/dev/null 2>&1 || true
	fi
	exit "$rc"
}
trap cleanup EXIT

if ! virsh -q -c "$uri" version >/dev/null 2>&1; then
	started_libvirt=1
fi
if [[ ! -S "$ovs_dir/db.sock" ]]; then
	started_ovs=1
	[[ -d "$ovs_dir" ]] || remove_ovs_dir=1
	mkdir -p "$ovs_dir"
fi
if [[ "$started_libvirt" == 1 || "$started_ovs" == 1 ]]; then
	step "starting what ExecStart needs (libvirtd: $started_libvirt, Open vSwitch: $started_ovs)"
	up=(go run ./internal/realstack/cmd/realstack-up)
	[[ "$started_ovs" == 1 ]] && up+=(--ovs-dir "$ovs_dir")
	"${up[@]}" >/dev/null || fail "the real stack did not start"
fi
virsh -q -c "$uri" pool-info default >/dev/null 2>&1 || pool_existed=0

step "dpkg -i $(basename "$deb")"
dpkg -i "$deb"

mode() { stat -c %a "$1"; }
[[ "$(mode /etc/kvm-hostd)" == 700 ]] || fail "/etc/kvm-hostd has mode $(mode /etc/kvm-hostd), want 700"
[[ "$(mode /etc/kvm-hostd/token)" == 600 ]] || fail "token has mode $(mode /etc/kvm-hostd/token), want 600"
[[ "$(mode /etc/kvm-hostd/tls.key)" == 600 ]] || fail "tls.key has mode $(mode /etc/kvm-hostd/tls.key), want 600"
[[ "$(mode /var/lib/kvm-hostd/pool)" == 755 ]] || fail "pool directory has mode $(mode /var/lib/kvm-hostd/pool), want 755"
[[ -f "$unit" ]] || fail "$unit not installed"

step "kvm-hostd --version"
out="$(kvm-hostd --version)"
echo "   $out"
[[ "$out" == "kvm-hostd $version" ]] || fail "kvm-hostd --version said \"$out\", want \"kvm-hostd $version\""

# ExecStart as systemd reads it: continuation lines joined, %H the hostname.
exec_start="$(sed -n '/^ExecStart=/,/[^\\]$/p' "$unit" | sed 's/\\$//' | tr '\n' ' ' | sed 's/^ExecStart=//')"
host="$(hostname)"
exec_start="${exec_start//%H/$host}"
[[ "$exec_start" == /usr/bin/kvm-hostd* ]] || fail "ExecStart does not run /usr/bin/kvm-hostd: $exec_start"
port="$(grep -o -- '--listen [^ ]*' <<<"$exec_start" | sed 's/.*://')"
[[ -n "$port" ]] || fail "no --listen in ExecStart"
if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
	fail "port $port is in use here; the unit's kvm-hostd cannot listen on it"
fi

step "ExecStart: $exec_start"
log="$(mktemp)"
# shellcheck disable=SC2086 # the ExecStart line is split into words as systemd does (no quotes in it)
(
	set -a
	. /etc/default/kvm-hostd
	set +a
	exec $exec_start
) >"$log" 2>&1 &
pid=$!
token="$(cat /etc/kvm-hostd/token)"
ok=0
for _ in $(seq 180); do
	if ! kill -0 "$pid" 2>/dev/null; then
		cat "$log" >&2
		fail "kvm-hostd exited before answering /healthz"
	fi
	# Through the hostname, so the generated certificate is verified as a
	# provider with ca_file = tls.crt would.
	if body="$(curl -fsS --max-time 5 --cacert /etc/kvm-hostd/tls.crt --resolve "$host:$port:127.0.0.1" \
		"https://$host:$port/healthz" 2>/dev/null)"; then
		ok=1
		break
	fi
	sleep 0.5
done
[[ "$ok" == 1 ]] || {
	cat "$log" >&2
	fail "no answer from /healthz in 90 s"
}
echo "   /healthz: $body"
grep -q '"status":"ok"' <<<"$body" || fail "/healthz is not ok: $body"
# The token works (and is required) on the API.
curl -fsS --max-time 5 --cacert /etc/kvm-hostd/tls.crt --resolve "$host:$port:127.0.0.1" \
	-H "Authorization: Bearer $token" "https://$host:$port/v1/host" >/dev/null || fail "GET /v1/host with the generated token failed"
code="$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 --cacert /etc/kvm-hostd/tls.crt \
	--resolve "$host:$port:127.0.0.1" "https://$host:$port/v1/host")"
[[ "$code" == 401 ]] || fail "GET /v1/host without the token: HTTP $code, want 401"

step "stopping kvm-hostd (PID $pid) with SIGTERM"
kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
pid=""
[[ "$rc" == 0 ]] || {
	cat "$log" >&2
	fail "kvm-hostd exited $rc after SIGTERM"
}
rm -f "$log"

step "dpkg --purge kvm-hostd"
undefine_pool
dpkg --purge kvm-hostd >/dev/null
for f in /usr/bin/kvm-hostd "$unit" /etc/default/kvm-hostd /etc/kvm-hostd /var/lib/kvm-hostd; do
	[[ ! -e "$f" ]] || fail "$f is left after purge"
done
step "passed"
