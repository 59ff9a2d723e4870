// Command realstack-up makes sure the real stack the tests need is up before
// `go test ./...` runs: the system libvirt (started if nothing answers, and
// left running for scripts/realstack-down.sh to stop by PID) and, with
// --ovs-dir, a private Open vSwitch whose endpoint it prints as
// KVM_TEST_OVSDB=... (stopped by PID from the PID files in that directory).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/kvmfleet/terraform-provider-kvm/internal/realstack"
)

func main() {
	ovsDir := flag.String("ovs-dir", "", "start a private Open vSwitch in this directory")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	d, err := realstack.EnsureLibvirt(ctx, realstack.LibvirtOptions{KeepRunning: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, "realstack-up:", err)
		os.Exit(1)
	}
	_ = d.Stop() // drops our reference only: KeepRunning
	fmt.Printf("KVM_TEST_LIBVIRT_URI=%s\n", d.URI)
	if *ovsDir != "" {
		o, err := realstack.EnsureOVS(ctx, *ovsDir)
		if err != nil {
			fmt.Fprintln(os.Stderr, "realstack-up:", err)
			os.Exit(1)
		}
		fmt.Printf("KVM_TEST_OVSDB=%s\n", o.Endpoint)
	}
}
