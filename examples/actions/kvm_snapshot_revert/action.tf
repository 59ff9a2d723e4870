# Roll web-1 back to the snapshot taken before the upgrade:
#   terraform apply -invoke=action.kvm_snapshot_revert.before_upgrade
action "kvm_snapshot_revert" "before_upgrade" {
  config {
    snapshot_id = kvm_snapshot.before_upgrade.id # "<host>/<vm name>/<snapshot name>"
  }
}
