// Command terraform-provider-kvm is the Terraform provider for fleets of KVM
// hosts running kvm-hostd.
package main

import (
	"context"
	"flag"
	"log"

	"github.com/hashicorp/terraform-plugin-framework/providerserver"

	"github.com/kvmfleet/terraform-provider-kvm/provider/kvm"
)

// version is set by goreleaser with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	var debug bool
	flag.BoolVar(&debug, "debug", false, "run the provider with support for debuggers like delve")
	flag.Parse()
	err := providerserver.Serve(context.Background(), kvm.New(version), providerserver.ServeOpts{
		Address: "registry.terraform.io/kvmfleet/kvm",
		Debug:   debug,
	})
	if err != nil {
		log.Fatal(err.Error())
	}
}
