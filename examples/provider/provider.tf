provider "kvm" {
  hosts = {
    host-a = { endpoint = "https://10.0.0.11:7443", labels = { zone = "a" } }
    host-b = { endpoint = "https://10.0.0.12:7443", labels = { zone = "b" } }
  }
  token   = var.kvm_token # or KVM_TOKEN; a host may override with its own token
  ca_file = "ca.pem"      # optional; cert_file/key_file for mTLS
}

variable "kvm_token" {
  type      = string
  sensitive = true
}
