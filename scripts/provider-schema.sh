#!/usr/bin/env bash
# Prints `terraform providers schema -json` for the provider built in bin/,
# which tfplugindocs renders into docs/.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
# The modern Terraform: older ones leave resource identity, list resources and
# actions out of the schema they print, and tfplugindocs would render none of
# them.
tf="$("$root/scripts/terraform-path.sh" --modern)"
export TF_CLI_CONFIG_FILE="$("$root/scripts/dev-terraformrc.sh")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cat >"$work/main.tf" <<'TF'
terraform {
  required_providers {
    kvm = { source = "kvmfleet/kvm" }
  }
}
TF
cd "$work"
# tfplugindocs looks a provider up by its short name (or under hashicorp/).
"$tf" providers schema -json 2>/dev/null | sed 's#"registry.terraform.io/kvmfleet/kvm":#"kvm":#'
