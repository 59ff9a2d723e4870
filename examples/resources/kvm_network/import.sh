# A network is imported by its name; the hosts that have it are found.
terraform import kvm_network.lan lan
