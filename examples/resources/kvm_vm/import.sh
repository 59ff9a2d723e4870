# A VM is imported by "<host>/<name>".
terraform import kvm_vm.web host-a/web-1
