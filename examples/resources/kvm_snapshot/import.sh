# A snapshot is imported by "<host>/<vm name>/<snapshot name>"; vm_id is then
# "<host>/<vm name>".
terraform import kvm_snapshot.before_upgrade host-a/web-1/before-upgrade
