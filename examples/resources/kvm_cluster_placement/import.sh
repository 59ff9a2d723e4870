# A placement is imported with its current assignments, so every key keeps
# its host; the request sizes come from the configuration on the next plan.
terraform import kvm_cluster_placement.web 'web-1=host-a,web-2=host-b,web-3=host-c'
