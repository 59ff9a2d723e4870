// Command realstack-down stops what internal/realstack started and a test run left
// running: the system libvirtd/virtlogd it started (KVM_REALSTACK_KEEP=1 runs, or a
// crash) and any multi-host namespaces. It acts only on processes named in
// realstack's own PID files, never on daemons someone else started.
package main

import (
	"fmt"
	"os"

	"github.com/kvmfleet/terraform-provider-kvm/internal/realstack"
)

func main() {
	failed := false
	if err := realstack.CleanupHostNamespaces(realstack.DefaultHostStateRoot, realstack.DefaultHostBridge); err != nil {
		fmt.Fprintln(os.Stderr, "realstack-down:", err)
		failed = true
	}
	if err := realstack.StopStartedLibvirt(realstack.DefaultStopTimeout); err != nil {
		fmt.Fprintln(os.Stderr, "realstack-down:", err)
		failed = true
	}
	if failed {
		os.Exit(1)
	}
}
