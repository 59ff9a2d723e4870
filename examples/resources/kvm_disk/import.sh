# A disk is imported by "<host>/<pool>/<name>".
terraform import kvm_disk.data host-a/default/data-1
