#!/usr/bin/env bash
# Writes a Terraform CLI config that points kvmfleet/kvm at the provider
# binary in bin/ (dev_overrides), so examples run without a registry or
# `terraform init`. Prints the file's path.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
rc="$root/.cache/dev.terraformrc"
mkdir -p "$root/.cache"
cat >"$rc" <<RC
provider_installation {
  dev_overrides {
    "kvmfleet/kvm" = "$root/bin"
  }
  direct {}
}
RC
echo "$rc"
