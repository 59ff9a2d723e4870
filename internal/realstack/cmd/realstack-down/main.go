// Command realstack-down stops what internal/realstack started and a test run left
// running: the system libvirtd/virtlogd it started (KVM_REALSTACK_KEEP=1 runs, or a
// crash) any multi-host namespaces and the tests' one-node Ceph, after removing what the tests left on that
// libvirt (see realstack-sweep). It acts only on processes named in realstack's own
// PID files, never on daemons someone else started.
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/kvmfleet/terraform-provider-kvm/internal/realstack"
)

func main() {
	failed := false
	if realstack.LibvirtAnswers() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		removed, inUse, err := realstack.SweepUnusedTestLeftovers(ctx, realstack.SystemURI)
		cancel()
		for _, l := range removed {
			fmt.Printf("realstack-down: removed a test leftover: %s\n", l)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "realstack-down:", err)
			failed = true
		} else if inUse {
			fmt.Fprintln(os.Stderr, "realstack-down: a running test uses", realstack.TestPoolRoot, "- left alone")
		}
	}
	if err := realstack.CleanupHostNamespaces(realstack.DefaultHostStateRoot, realstack.DefaultHostBridge); err != nil {
		fmt.Fprintln(os.Stderr, "realstack-down:", err)
		failed = true
	}
	// The tests' Ceph listens on the hosts' bridge: gone with it.
	if err := realstack.CleanupCeph(realstack.DefaultCephRoot); err != nil {
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
