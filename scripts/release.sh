#!/usr/bin/env bash
# Build a release of both pieces into dist/, in the layout the Terraform Registry
# expects (the same one .goreleaser.yml describes):
#
#   terraform-provider-kvm_<V>_<os>_<arch>.zip   the provider, bare binary inside
#   terraform-provider-kvm_<V>_manifest.json     terraform-registry-manifest.json
#   terraform-provider-kvm_<V>_SHA256SUMS        every artifact below
#   terraform-provider-kvm_<V>_SHA256SUMS.sig    detached binary GPG signature
#   kvm-hostd_<V>_linux_amd64.tar.gz             binary, README, systemd unit, env file
#   kvm-hostd_<V>_amd64.deb, kvm-hostd-<V>-1.x86_64.rpm   packages (nfpm v2.48.0)
#
# Usage: scripts/release.sh [--snapshot] [--platforms "linux/amd64 darwin/arm64 ..."]
#   (default: the provider for linux, darwin, windows x amd64, arm64)
#   A release needs HEAD tagged vX.Y.Z (or RELEASE_VERSION=X.Y.Z) and a signing key:
#     GPG_PRIVATE_KEY (ASCII-armoured secret key, imported into a throwaway
#     keyring; GPG_PASSPHRASE if it has one), or GPG_FINGERPRINT naming a key
#     already in the caller's keyring/agent.
#   --snapshot: version <next patch>-SNAPSHOT-<commit>, no signature.
# Publishing (a draft GitHub release with every file of dist/) is not done here.
#
# goreleaser itself is not used to build: the copy the Go module proxy serves here
# is not an approved release, so only `goreleaser check` runs with it
# (scripts/release-check.sh); the packages come from nfpm v2.48.0, which is.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

NFPM_VERSION=v2.48.0
snapshot=0
platforms="linux/amd64 linux/arm64 darwin/amd64 darwin/arm64 windows/amd64 windows/arm64"
while (($#)); do
	case "$1" in
	--snapshot) snapshot=1 ;;
	--platforms)
		platforms="$2"
		shift
		;;
	*)
		echo "release: unknown argument $1" >&2
		exit 2
		;;
	esac
	shift
done

log() { printf 'release: %s\n' "$*" >&2; }

commit="$(git rev-parse --short HEAD)"
commit_ts="$(git log -1 --format=%ct HEAD)"
if [[ -n "${RELEASE_VERSION:-}" ]]; then
	version="${RELEASE_VERSION#v}"
elif [[ "$snapshot" == 1 ]]; then
	# goreleaser's snapshot scheme: the patch after the last tag.
	last="$(git describe --tags --abbrev=0 --match 'v[0-9]*' 2>/dev/null || echo v0.0.0)"
	IFS=. read -r major minor patch <<<"${last#v}"
	version="$major.$minor.$((${patch%%-*} + 1))-SNAPSHOT-$commit"
else
	tag="$(git describe --tags --exact-match --match 'v[0-9]*' HEAD 2>/dev/null)" || {
		log "HEAD has no vX.Y.Z tag: tag it, set RELEASE_VERSION, or use --snapshot (make release-check)"
		exit 1
	}
	version="${tag#v}"
fi
[[ "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$ ]] || {
	log "version $version is not semantic (X.Y.Z[-pre])"
	exit 1
}
if [[ "$snapshot" == 0 && -n "$(git status --porcelain --untracked-files=no)" ]]; then
	log "the work tree has uncommitted changes; a release is built from a clean checkout"
	exit 1
fi

# Signing is settled before the long builds, so a missing key fails at once.
sign=()
if [[ "$snapshot" == 0 ]]; then
	command -v gpg >/dev/null || {
		log "gpg not found (apt-get install gpg)"
		exit 1
	}
	if [[ -n "${GPG_PRIVATE_KEY:-}" ]]; then
		export GNUPGHOME="$(mktemp -d)"
		trap 'gpgconf --kill all >/dev/null 2>&1 || true; rm -rf "$GNUPGHOME"' EXIT
		gpg --batch --quiet --import <<<"$GPG_PRIVATE_KEY"
		fpr="$(gpg --batch --with-colons --list-secret-keys | awk -F: '$1 == "fpr" { print $10; exit }')"
	elif [[ -n "${GPG_FINGERPRINT:-}" ]]; then
		fpr="$GPG_FINGERPRINT"
	else
		log "a release is signed: set GPG_PRIVATE_KEY (armoured secret key) or GPG_FINGERPRINT, or use --snapshot"
		exit 1
	fi
	sign=(gpg --batch --yes --local-user "$fpr" --detach-sign)
	if [[ -n "${GPG_PASSPHRASE:-}" ]]; then
		sign+=(--pinentry-mode loopback --passphrase-fd 0)
	fi
fi

dist="$root/dist"
rm -rf "$dist"
mkdir -p "$dist/build"
log "version $version (commit $commit), provider for: $platforms"

export GOWORK=off GOFLAGS=-buildvcs=false
name=terraform-provider-kvm
ldflags="-s -w -X main.version=$version"

# The provider is pure Go: CGO off, so one Linux machine cross-builds every platform.
for p in $platforms; do
	os="${p%/*}" arch="${p#*/}"
	ext=""
	[[ "$os" == windows ]] && ext=.exe
	dir="$dist/build/${name}_${os}_${arch}"
	mkdir -p "$dir"
	bin="$dir/${name}_v${version}${ext}"
	log "building the provider for $os/$arch"
	CGO_ENABLED=0 GOOS="$os" GOARCH="$arch" go build -trimpath -ldflags "$ldflags" -o "$bin" ./provider
	touch -d "@$commit_ts" "$bin"
	# -X: no extra file attributes, -j: the bare binary at the root, as the registry wants.
	(cd "$dir" && zip -q -X -j "$dist/${name}_${version}_${os}_${arch}.zip" "$(basename "$bin")")
done
cp terraform-registry-manifest.json "$dist/${name}_${version}_manifest.json"

# kvm-hostd links libvirt through cgo: built for the build machine's linux/amd64 only.
[[ "$(go env GOOS)/$(go env GOARCH)" == linux/amd64 ]] || {
	log "kvm-hostd is built on linux/amd64 only (cgo, libvirt-dev)"
	exit 1
}
hdir="$dist/build/kvm-hostd_linux_amd64"
mkdir -p "$hdir/systemd"
log "building kvm-hostd for linux/amd64"
CGO_ENABLED=1 go build -trimpath -ldflags "$ldflags" -o "$hdir/kvm-hostd" ./backend/cmd/kvm-hostd
touch -d "@$commit_ts" "$hdir/kvm-hostd"
# The packaged unit runs the packaged binary; contrib/ keeps /usr/local/bin for
# installs by hand.
sed 's|/usr/local/bin/kvm-hostd|/usr/bin/kvm-hostd|g' contrib/systemd/kvm-hostd.service >"$hdir/kvm-hostd.service"
grep -q '^ExecStart=/usr/bin/kvm-hostd' "$hdir/kvm-hostd.service" || {
	log "contrib/systemd/kvm-hostd.service: ExecStart no longer runs /usr/local/bin/kvm-hostd; update this script"
	exit 1
}
cp contrib/systemd/kvm-hostd.service contrib/systemd/kvm-hostd.env.example "$hdir/systemd/"
tar -C "$hdir" --owner=0 --group=0 --mtime="@$commit_ts" --sort=name \
	-czf "$dist/kvm-hostd_${version}_linux_amd64.tar.gz" kvm-hostd systemd -C "$root" README.md

for pkg in deb rpm; do
	log "packaging kvm-hostd as .$pkg (nfpm $NFPM_VERSION)"
	VERSION="$version" HOSTD_BIN="$hdir/kvm-hostd" HOSTD_UNIT="$hdir/kvm-hostd.service" SOURCE_DATE_EPOCH="$commit_ts" \
		GOFLAGS= go run "github.com/goreleaser/nfpm/v2/cmd/nfpm@$NFPM_VERSION" package \
		--config packaging/nfpm.yaml --packager "$pkg" --target "$dist/" >&2
done

(cd "$dist" && sha256sum -- *.zip *.json *.tar.gz *.deb *.rpm >"${name}_${version}_SHA256SUMS")
if ((${#sign[@]})); then
	log "signing ${name}_${version}_SHA256SUMS with $fpr"
	sums="$dist/${name}_${version}_SHA256SUMS"
	if [[ -n "${GPG_PASSPHRASE:-}" ]]; then
		"${sign[@]}" --output "$sums.sig" "$sums" <<<"$GPG_PASSPHRASE"
	else
		"${sign[@]}" --output "$sums.sig" "$sums"
	fi
else
	log "snapshot: SHA256SUMS not signed"
fi
rm -rf "$dist/build"
echo "$version" >"$dist/VERSION"
log "done:"
(cd "$dist" && ls -l | sed 's/^/  /' >&2)
